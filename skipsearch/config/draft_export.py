"""A profile's skipped model as a standalone draft checkpoint in the DeciLM / Nemotron-NAS layout that
vLLM and SGLang load (`DeciLMForCausalLM`, `model_type: nemotron-nas`).

What the layout is, read on 2026-12-04 in vllm-project/vllm
`vllm/model_executor/models/nemotron_nas.py` and `ModelConfig.get_total_num_kv_heads`, sgl-project/sglang
`python/sglang/srt/models/nemotron_nas.py`, llama.cpp's HF-to-GGUF converter (`DeciModel`), and NVIDIA's
`configuration_decilm.py` / `block_config.py` shipped with Llama-3_1-Nemotron-51B:

- `config.json` is a Llama config plus `block_configs`, one per decoder layer:
  `{"attention": {"no_op", "replace_with_linear", "n_heads_in_group"},
  "ffn": {"no_op", "replace_with_linear", "ffn_mult"}}` (llama.cpp's converter reads `replace_with_linear`
  too). A no_op attention block builds neither `self_attn` nor `input_layernorm`; a no_op FFN neither `mlp` nor
  `post_attention_layernorm`: the residual stream passes unchanged, which is what skipping a block
  does here (`skipsearch.engine.skipping`). Layer numbers stay those of the full model.
- The engines read the config through the model folder's own config class (`auto_map`, so
  `--trust-remote-code`), with attribute access (`block.attention.no_op`); transformers has no
  `nemotron-nas` config. The folder therefore carries `configuration_decilm.py`, written here.
- An FFN's width is not stated: both engines derive it as `2 * ffn_mult * hidden / 3` rounded up to a
  multiple of 256 (`_ffn_mult_to_intermediate_size`). SGLang reads only `ffn_mult`; vLLM reads
  `ffn_mult` whenever the block has the attribute. So a width that is not a multiple of 256 cannot
  be stated to both, and the export refuses it rather than write a draft of another shape.
- Weights keep the Llama names (`model.layers.N.self_attn.q_proj.weight`, ...); the loaders look up
  every checkpoint name among the model's parameters, so the no_op blocks' weights must be absent.

`draft_tensors`, `draft_config`, `render_*` are pure; `write_draft` writes the folder atomically.
Llama only: other families carry what the Llama blocks of these loaders do not build.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from skipsearch.config.profiles import Profile
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError
from skipsearch.files import write_folder_atomic

CONFIG_CLASS_FILE = "configuration_decilm.py"
WEIGHTS_FILE = "model.safetensors"
README_FILE = "README.md"
FFN_MULTIPLE = 256  # what the engines round an FFN's width up to

# why each supported family other than Llama has no DeciLM block for it
UNSUPPORTED = {
    "qwen3": "its per-head q/k norms (q_norm, k_norm) have no place in DeciLM's Llama attention block",
    "qwen2": "its q/k/v biases without an o_proj bias, and its sliding-window layers, have no DeciLM field",
    "mistral": "its sliding window has no field that vLLM's and SGLang's DeciLM blocks read",
}
# Llama config keys a DeciLM config does not carry over
DROPPED_KEYS = ("architectures", "model_type", "transformers_version", "_name_or_path", "auto_map",
                "id2label", "label2id")


def check_family(model_type: str | None) -> None:
    if model_type != "llama":
        reason = UNSUPPORTED.get(model_type, "DeciLM blocks are Llama blocks")
        raise SkipsearchError(f"export-draft writes Llama-family models only; this model is {model_type!r}: {reason}")


def check_skips(skip: SkipSet) -> None:
    if not len(skip):
        raise SkipsearchError("the profile skips nothing (it drafts with n-grams only), so its draft would be the "
                              "full model itself; export a profile with a skip set")


def ffn_mult(intermediate_size: int, hidden_size: int) -> float:
    """The ffn_mult from which the engines derive exactly `intermediate_size`, or a one-line refusal."""
    mult = round(1.5 * intermediate_size / hidden_size, 6)  # NVIDIA's FFNConfig keeps 6 decimals
    derived = int(2 * mult * hidden_size / 3)
    derived += -derived % FFN_MULTIPLE
    if derived != intermediate_size:
        raise SkipsearchError(
            f"intermediate_size {intermediate_size} is not a multiple of {FFN_MULTIPLE}: DeciLM states an FFN's width "
            f"as ffn_mult, which vLLM and SGLang round up to a multiple of {FFN_MULTIPLE} (this one would load as "
            f"{derived}); the draft cannot be written exactly"
        )
    return mult


def block_configs(config, skip: SkipSet) -> list[dict]:
    """One DeciLM block config per decoder layer: no_op where the skip set skips the block."""
    heads_in_group = config.num_attention_heads // getattr(config, "num_key_value_heads", config.num_attention_heads)
    mult = ffn_mult(config.intermediate_size, config.hidden_size)
    blocks = []
    for layer in range(config.num_hidden_layers):
        no_attention, no_ffn = layer in skip.attention, layer in skip.mlp
        blocks.append({
            "attention": {"no_op": no_attention, "replace_with_linear": False,
                          "n_heads_in_group": None if no_attention else heads_in_group},
            "ffn": {"no_op": no_ffn, "replace_with_linear": False, "ffn_mult": None if no_ffn else mult},
        })
    return blocks


def draft_config(model: torch.nn.Module, skip: SkipSet) -> dict:
    """config.json of the draft: the model's Llama config, renamed, with its block_configs."""
    check_family(model.config.model_type)
    kept_attention = [i for i in range(model.config.num_hidden_layers) if i not in skip.attention]
    if not kept_attention:
        # vLLM sizes the KV cache from the first block with attention
        raise SkipsearchError("the skip set skips every attention block; vLLM needs at least one to size its KV cache")
    # The engines' layers start the residual stream in the first kept attention block's fused norm; an
    # FFN kept before it would get residual None, and its norm returns one tensor where two are unpacked.
    early = [i for i in range(kept_attention[0]) if i not in skip.mlp]
    if early:
        raise SkipsearchError(
            f"the skip set keeps the MLP of layer {early[0]} but no attention block before it, which vLLM's and "
            f"SGLang's DeciLM layers cannot run; skip that MLP too, or keep the attention of layer {early[0]}"
        )
    config = {k: v for k, v in model.config.to_dict().items() if k not in DROPPED_KEYS}
    return {"architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas",
            "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig"},
            **config, "block_configs": block_configs(model.config, skip)}


def _skipped_names(skip: SkipSet) -> list[str]:
    return ([f"model.layers.{i}.self_attn." for i in skip.attention]
            + [f"model.layers.{i}.input_layernorm." for i in skip.attention]
            + [f"model.layers.{i}.mlp." for i in skip.mlp]
            + [f"model.layers.{i}.post_attention_layernorm." for i in skip.mlp])


def draft_tensors(model: torch.nn.Module, skip: SkipSet) -> dict[str, torch.Tensor]:
    """The kept weights under their Llama names, on the CPU; a tied LM head is stored once (as the embeddings)."""
    check_family(model.config.model_type)
    dropped = tuple(_skipped_names(skip))
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(dropped) or (name == "lm_head.weight" and model.config.tie_word_embeddings):
            continue
        if tensor.device.type == "meta":
            raise SkipsearchError(f"{name} is offloaded (not in memory); load the model without --device-map "
                                  "offloading to export it")
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors


@dataclass(frozen=True)
class DraftMemory:
    """Bytes the draft adds to a server that already holds the target: a draft shares nothing with it."""

    weights: int  # kept blocks + embeddings + LM head + final norm
    full_weights: int  # the same count for the whole model
    kv_per_token: int  # the draft's own KV cache, per token of context
    tied: bool  # the LM head is the embedding matrix

    @classmethod
    def of(cls, model: torch.nn.Module, tensors: dict[str, torch.Tensor], skip: SkipSet) -> "DraftMemory":
        config = model.config
        kept_attention = config.num_hidden_layers - len(skip.attention)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
        element = next(iter(tensors.values())).element_size()
        full = {id(p): p.numel() * p.element_size() for p in model.parameters()}  # tied weights counted once
        return cls(weights=sum(t.numel() * t.element_size() for t in tensors.values()),
                   full_weights=sum(full.values()),
                   kv_per_token=kept_attention * 2 * kv_heads * head_dim * element,
                   tied=bool(config.tie_word_embeddings))


@dataclass(frozen=True)
class DraftAcceptance:
    """The exported skip set re-scored on held-out prompts (`skipsearch.experiments.draft_acceptance`),
    for the README: an engine's draft reads its own KV cache, skipsearch's runtime the full model's."""

    prompts: str  # where the prompts came from, e.g. "3 held-out prompts of study NAME"
    positions: int  # scored continuation positions
    draft_tokens: int  # the fixed draft length an engine uses (the profile's max_draft_tokens)
    p_min: float  # the confidence stop (the profile's confidence_threshold)
    own_matchness: float  # share of positions whose draft token is the target's: own cache
    shared_matchness: float  # the same on the full model's cache
    own_acceptance: float  # accepted / drafted tokens, drafts of draft_tokens stopping below p_min: own cache
    shared_acceptance: float
    own_tokens_per_round: float  # tokens committed per verification (accepted + the target's)
    # the engine's speed over plain decoding that the replay predicts with the exporting machine's
    # costs, where the draft settings were chosen by it; None where they are the profile's
    predicted_speedup: float | None = None

    def readme_section(self) -> str:
        tokens = f"{self.draft_tokens} token{'s' if self.draft_tokens != 1 else ''}"
        if self.predicted_speedup is None:
            chosen = "the profile's draft settings"
        else:
            verdict = ("" if self.predicted_speedup >= 1 else
                       " The draft is not predicted to pay: on such a device the engine's own n-gram drafting, or "
                       "plain decoding, is the better choice.")
            chosen = (f"the draft length and stop that the replay of an engine's rounds over this draft's own-cache "
                      f"acceptance predicts fastest with the costs skipsearch timed on the exporting machine "
                      f"(predicted {self.predicted_speedup:.2f}x plain decoding there; a GPU's costs differ, so "
                      f"re-check on the serving device).{verdict}")
        return f"""## Acceptance, re-scored for this draft

Measured by `skipsearch export-draft --study` on {self.prompts} ({self.positions} positions of the full
model's greedy continuations), with drafts of up to {tokens} stopping below a top
probability of {self.p_min}, as the commands above draft: {chosen}

| the draft reads | first-token match | accepted / drafted tokens |
|---|---|---|
| its own KV cache: this exported draft in an engine | {self.own_matchness:.3f} | {self.own_acceptance:.3f} |
| the full model's KV cache: skipsearch's own runtime | {self.shared_matchness:.3f} | {self.shared_acceptance:.3f} |

In an engine each verification would commit {self.own_tokens_per_round:.2f} tokens on these prompts.
"""


def size_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    power = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024 ** power:.2f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][power]}"


def render_config_class() -> str:
    """configuration_decilm.py: the config class the engines load through auto_map. Written for this export;
    it reads block_configs into objects with the attributes vLLM and SGLang read."""
    return '''"""The DeciLM (Nemotron-NAS) config of a draft written by `skipsearch export-draft`.

Llama's config plus `block_configs`, one per decoder layer, read into objects with attribute access
(`block.attention.no_op`, `block.attention.n_heads_in_group`, `block.ffn.no_op`, `block.ffn.ffn_mult`),
as vLLM's and SGLang's `DeciLMForCausalLM` read them.
"""

from types import SimpleNamespace

from transformers import LlamaConfig


def _block(data):
    if not isinstance(data, dict):  # already read
        return data
    return SimpleNamespace(attention=SimpleNamespace(**data["attention"]), ffn=SimpleNamespace(**data["ffn"]))


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        super().__init__(**kwargs)
        self.block_configs = None if block_configs is None else [_block(b) for b in block_configs]

    def to_dict(self):
        data = super().to_dict()
        if self.block_configs is not None:
            data["block_configs"] = [{"attention": vars(b.attention), "ffn": vars(b.ffn)} for b in self.block_configs]
        return data
'''


def render_readme(profile: Profile, folder: str, memory: DraftMemory, acceptance: DraftAcceptance | None = None) -> str:
    model, skip = profile.model, profile.skip
    tuned = acceptance is not None and acceptance.predicted_speedup is not None
    k = acceptance.draft_tokens if acceptance else profile.draft.max_draft_tokens
    settings = "the draft length chosen for an engine below" if tuned else "the profile's `max_draft_tokens`"
    head = "LM head tied to the embeddings (one matrix)" if memory.tied else "LM head"
    spec = json.dumps({"method": "draft_model", "model": folder, "num_speculative_tokens": k})
    return f"""# Layer-skip draft of {model.name} ({profile.task})

Written by `skipsearch export-draft`: the model with the profile's skip set left out,
{skip.describe()}, as a standalone DeciLM / Nemotron-NAS checkpoint (`DeciLMForCausalLM`,
`block_configs` with `no_op` blocks). Its logits equal the full model's with those blocks skipped;
the serving engine verifies every draft with the target, so output stays the target's.

## vLLM

```
vllm serve {model.name} --trust-remote-code \\
  --speculative-config '{spec}'
```

`--trust-remote-code` loads `{CONFIG_CLASS_FILE}` from this folder (transformers has no `nemotron-nas`
config). `num_speculative_tokens` is {settings} ({k}); vLLM drafts that many every step (no confidence stop).

## SGLang

```
python -m sglang.launch_server --model-path {model.name} --trust-remote-code \\
  --speculative-algorithm STANDALONE --speculative-draft-model-path {folder} \\
  --speculative-num-steps {k} --speculative-eagle-topk 1 --speculative-num-draft-tokens {k + 1}
```

## llama.cpp

llama.cpp takes a draft as GGUF (`-md`): export it with `skipsearch export-draft PROFILE DIR --format gguf
--model MODEL.gguf` from the target's GGUF (its tensors keep their quantization). Converting this folder
with llama.cpp's `convert_hf_to_gguf.py` (`DeciModel`) is not advised: its deci graph drops the attention of a
layer whose FFN is skipped, which `--format gguf` works around.

## Memory the draft adds

The engine loads the draft beside the target and shares nothing with it:

| | bytes |
|---|---|
| weights: kept blocks, embeddings, {head}, final norm | {memory.weights} ({size_text(memory.weights)}) |
| the full model, for comparison | {memory.full_weights} ({size_text(memory.full_weights)}) |
| the draft's own KV cache, per token of context | {memory.kv_per_token} ({size_text(memory.kv_per_token)}) |

{acceptance.readme_section() if acceptance else NOT_RESCORED}
vLLM 0.32 (its CPU build) ran drafts exported this way losslessly, and served alone they gave the skipped
model's greedy tokens (skipsearch's `make engines-check ENGINE=vllm`); SGLang was not run.
"""


NOT_RESCORED = """## Acceptance

Not measured for this export: the draft keeps its own KV cache, where skipsearch's runtime drafts from the
full model's, so the profile's figures do not carry over.
`skipsearch export-draft PROFILE DIR --study STUDY.yaml` re-scores the draft on the study's held-out prompts,
chooses the draft length (and llama.cpp's confidence stop) for an engine, and writes the figures here.
"""


def check_target(folder: str, force: bool, source: str | None) -> Path:
    """The folder to export into, or a one-line refusal: not a folder, the model's own folder (`source`, which
    --force must never replace), or not empty without `force`."""
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise SkipsearchError(f"{folder} exists and is not a folder; give a folder path to export into")
    if source is not None and target.exists() and target.resolve() == Path(source).resolve():
        raise SkipsearchError(f"{folder} is the model's own folder; export the draft into another one")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise SkipsearchError(f"{folder} is not empty; choose a new folder, or pass --force to replace it "
                              "(everything in it is removed)")
    return target


def write_draft(model: torch.nn.Module, tokenizer, profile: Profile, folder: str, force: bool = False,
                source: str | None = None, acceptance: DraftAcceptance | None = None) -> DraftMemory:
    """Write the draft folder (config.json, configuration_decilm.py, model.safetensors, the tokenizer,
    README.md) in one rename; every input is checked before anything is written. `source` is the model's
    own folder, which --force must never replace."""
    from safetensors.torch import save_file

    target = check_target(folder, force, source)
    config = draft_config(model, profile.skip)
    tensors = draft_tensors(model, profile.skip)
    memory = DraftMemory.of(model, tensors, profile.skip)
    readme = render_readme(profile, folder, memory, acceptance)

    def fill(temporary: Path) -> None:
        save_file(tensors, temporary / WEIGHTS_FILE, metadata={"format": "pt"})
        (temporary / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (temporary / CONFIG_CLASS_FILE).write_text(render_config_class(), encoding="utf-8")
        tokenizer.save_pretrained(temporary)
        (temporary / README_FILE).write_text(readme, encoding="utf-8")

    write_folder_atomic(target, fill, what="draft folder")
    return memory
