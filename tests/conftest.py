"""Shared fixtures: tiny random models of each supported family for fast tests, the embedded SmolLM2
once per session."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# Tiny models are dominated by per-operation overhead, and intra-op threads only contend
# with each other (and with parallel test workers) on these 2-core machines.
torch.set_num_threads(1)

# shorter than the prompts + continuations the family tests use, so that windows bite
SLIDING_WINDOW = 6

# per family: config class, model class, what makes its tiny model differ from a Llama
_FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    # Mistral applies its window in every layer whenever sliding_window is set
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": SLIDING_WINDOW}),
    # Qwen2 and Qwen3 slide in layers >= max_window_layers only (config.layer_types)
    "qwen2": (Qwen2Config, Qwen2ForCausalLM,
              {"use_sliding_window": True, "sliding_window": SLIDING_WINDOW, "max_window_layers": 2}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
}

# Qwen3 checkpoints ship without sliding layers, but its config supports them
QWEN3_SLIDING = {"use_sliding_window": True, "sliding_window": SLIDING_WINDOW, "max_window_layers": 2}


def make_tiny(family: str, seed: int = 0, num_layers: int = 4, vocab_size: int = 128, **overrides):
    """A tiny randomly initialised causal LM of `family`; `overrides` are further config fields."""
    config_class, model_class, specific = _FAMILIES[family]
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,  # hidden / heads, which Qwen3 does not derive (its default is 128)
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **{**specific, **overrides},
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.requires_grad_(False)
    return model


def make_tiny_llama(seed: int = 0, num_layers: int = 4, vocab_size: int = 128) -> LlamaForCausalLM:
    return make_tiny("llama", seed=seed, num_layers=num_layers, vocab_size=vocab_size)


def make_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "user", "assistant", "hello", "world"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def generate_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The full model's own greedy continuation through transformers `generate`: the reference
    every lossless check compares with."""
    from skipsearch.engine.forward import input_device

    ids = torch.tensor([prompt], device=input_device(model))
    return model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens)[0, len(prompt):].tolist()


def random_skip_sets(num_layers: int, count: int, seed: int) -> list:
    """Random non-empty, non-full skip sets over every sublayer (the first and last layers included)."""
    import random

    from skipsearch.engine.skipping import SkipSet, eligible_sublayers

    rng = random.Random(seed)
    eligible = eligible_sublayers(num_layers, keep_first=0, keep_last=0)
    return [SkipSet.from_sublayers(rng.sample(eligible, rng.randint(1, len(eligible) - 1))) for _ in range(count)]


def sharp_tiny_model():
    """Two layers, six tokens, sharpened next-token distributions: for the sampling distribution tests."""
    model = make_tiny_llama(seed=3, num_layers=2, vocab_size=6)
    # random init gives near-uniform next-token distributions; sharpen them so that the
    # skipped model's q differs clearly from the full model's p
    model.lm_head.weight.mul_(40.0)
    return model


def exact_two_token_distribution(model, prompt, settings):
    """P(t1, t2) of the full model under the warped distribution."""
    from skipsearch.engine.decoding import warp

    with torch.inference_mode():
        p1 = warp(model(torch.tensor([prompt])).logits[0, -1], settings)
        vocab = p1.shape[0]
        batch = torch.tensor([prompt + [t] for t in range(vocab)])
        p2 = warp(model(batch).logits[:, -1], settings)
    return p1[:, None] * p2  # (vocab, vocab)


def empirical_two_token_distribution(model, prompt, skip_set, settings, samples):
    """P(t1, t2) over `samples` seeded decodes."""
    from skipsearch.engine.decoding import DecodeSettings, decode

    counts = torch.zeros(6, 6)
    for seed in range(samples):
        tokens = decode(model, prompt, skip_set, DecodeSettings(**{**settings.__dict__, "seed": seed})).token_ids
        counts[tokens[0], tokens[1]] += 1
    return counts / samples


@pytest.fixture
def tiny_model() -> LlamaForCausalLM:
    return make_tiny_llama()


@pytest.fixture
def one_thread():
    """Two intra-op threads on two cores shared with other jobs run ~10x slower than one; restores
    whatever count a test (or the CLI it runs) set. No timing is checked."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The tiny random Llama and its tokenizer as a model folder: for the command line and worker processes."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


# every module `skipping` may bypass, per decoder layer: each block's norm and the block itself
BLOCK_ATTRIBUTES = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


def hook_blocks(model) -> dict[str, int]:
    """Put a counting wrapper in every block module's instance `forward`, as accelerate's hooks do
    (device maps, offloading); returns the calls per "layer.attribute", counted from now on."""
    calls = {}
    for index, layer in enumerate(model.model.layers):
        for attribute in BLOCK_ATTRIBUTES:
            module, name = getattr(layer, attribute), f"{index}.{attribute}"
            calls[name] = 0

            def hooked(*args, _inner=module.forward, _name=name, **kwargs):
                calls[_name] += 1
                return _inner(*args, **kwargs)

            module.forward = hooked
    return calls


def assert_blocks_run_through_hooks(model, calls: dict[str, int]) -> None:
    """One forward pass runs every block, each through the hook `hook_blocks` put there: no block is
    left switched off, and no hook was replaced or deleted."""
    for name in calls:
        calls[name] = 0
    with torch.inference_mode():
        model(torch.tensor([[1, 5, 9, 17]]))
    assert {name for name, count in calls.items() if count != 1} == set()


@pytest.fixture(scope="session")
def smollm():
    from skipsearch.engine.models import load_model

    return load_model("smollm2-135m", dtype="float32", device="cpu")


# ---------------------------------------------------------------------------- toy studies

WORDS = ["hello", "world"]


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))


def toy_task_file(tmp_path, n=6):
    rng = random.Random(0)
    path = tmp_path / "task.jsonl"
    with open(path, "w") as out:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(3 + i))
            out.write(json.dumps({"question_id": i, "category": "toy", "turns": [text]}) + "\n")
    return path


def study_config(tmp_path, **search):
    """A three-trial speedup study of a six-prompt toy task, for runs on `tiny_loaded()`."""
    from skipsearch.config.studies import parse_study

    return parse_study({
        "name": "toy",
        "task": {"source": "specbench", "data": str(toy_task_file(tmp_path)), "search_prompts": 3,
                 "heldout_prompts": 2, "reference_tokens": 10, "chat_template": False},
        "search": {"objective": "speedup", "trials": 3, "skip_budget": 2, **search},
        "draft": {"max_draft_tokens": 3},
        "output": {"profile": str(tmp_path / "toy.profile.yaml")},
    }, "test")


def tiny_loaded():
    from skipsearch.engine.models import LoadedModel

    return LoadedModel(model=make_tiny_llama(), tokenizer=make_tokenizer(), name="tiny", source="memory")


def tiny_references(model, count: int, seed: int, new_tokens: int, first_length: int = 4) -> list:
    """References of random prompts (lengths first_length, +2, +4, …) with the model's greedy continuations."""
    from skipsearch.engine.decoding import DecodeSettings, decode
    from skipsearch.search.references import Reference

    rng = random.Random(seed)
    references = []
    for i in range(count):
        prompt = [rng.randrange(3, 128) for _ in range(first_length + 2 * i)]
        settings = DecodeSettings(max_new_tokens=new_tokens, fallback=False)
        references.append(Reference(str(i), tuple(prompt), tuple(decode(model, prompt, None, settings).token_ids)))
    return references
