"""Every supported family (llama, mistral, qwen2, qwen3) decodes losslessly and is scored exactly.

The Mistral, Qwen2 and sliding Qwen3 models have a window (conftest.SLIDING_WINDOW) shorter
than the prompts and continuations here, so a mask that ignored it would show."""

import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PhiConfig, PhiForCausalLM

from skipsearch.engine import forward
from skipsearch.engine.decoding import DecodeSettings, decode
from skipsearch.engine.forward import crop_cache
from skipsearch.engine.skipping import SkipSet, eligible_sublayers, skipping
from skipsearch.errors import SkipsearchError
from skipsearch.search.references import Reference
from skipsearch.search.scoring import ProxyScorer, mask_kinds, score_from_scratch

from conftest import QWEN3_SLIDING, SLIDING_WINDOW, generate_greedy, make_tiny

# (family, config overrides, the same weights without a window)
VARIANTS = {
    "llama": ("llama", {}, None),
    "mistral": ("mistral", {}, {"sliding_window": None}),
    "qwen2": ("qwen2", {}, {"use_sliding_window": False}),
    "qwen3": ("qwen3", {}, None),
    "qwen3-sliding": ("qwen3", QWEN3_SLIDING, {"use_sliding_window": False}),
}
SLIDING = [name for name, (_, _, windowless) in VARIANTS.items() if windowless is not None]
NEW_TOKENS = 12


def _model(name, windowless=False, **kwargs):
    family, overrides, without_window = VARIANTS[name]
    return make_tiny(family, **{**overrides, **(without_window if windowless else {}), **kwargs})


def _prompts(count, seed):
    rng = random.Random(seed)
    return [[rng.randrange(3, 128) for _ in range(rng.randint(SLIDING_WINDOW + 2, 2 * SLIDING_WINDOW + 2))]
            for _ in range(count)]


def _references(model, seed):
    return [Reference(str(i), tuple(prompt), tuple(generate_greedy(model, prompt, NEW_TOKENS)))
            for i, prompt in enumerate(_prompts(3, seed))]


def _greedy(max_draft_tokens):
    return DecodeSettings(max_new_tokens=NEW_TOKENS, max_draft_tokens=max_draft_tokens,
                          confidence_threshold=0.0, fallback=False, ngram=None, costs=None)


# the fast tier keeps two families; `make test` runs them all
@pytest.mark.parametrize("name", [pytest.param(name, marks=[] if name in ("llama", "qwen3") else pytest.mark.slow)
                                  for name in VARIANTS])
def test_greedy_is_identical_to_generate(name):
    model = _model(name)
    rng = random.Random(1)
    eligible = eligible_sublayers(4, keep_first=0, keep_last=0)
    # masks are sized from layer 0's cache, which a skipped attention 0 leaves behind while drafting;
    # layer 2 is the first sliding layer of the Qwen variants
    skip_sets = [SkipSet(attention=(0,)), SkipSet(attention=(2,), mlp=(1,))]
    skip_sets += [SkipSet.from_sublayers(rng.sample(eligible, rng.randint(1, len(eligible) - 1))) for _ in range(3)]
    for prompt in _prompts(2, seed=2):
        expected = generate_greedy(model, prompt, NEW_TOKENS)
        for skip_set in skip_sets:
            for max_draft_tokens in (1, 3, 6):
                got = decode(model, prompt, skip_set, _greedy(max_draft_tokens)).token_ids
                assert got == expected, (skip_set, max_draft_tokens)


@pytest.mark.parametrize("skipped", [{"mlp": (3,)}, {"attention": (0,)}, {"attention": (3,), "mlp": (3,)}],
                         ids=["mlp3", "attention0", "layer3"])
@pytest.mark.parametrize("name", VARIANTS)
def test_a_draft_equal_to_the_full_model_is_always_accepted(name, skipped):
    """Drafts that cross the window are all accepted only if drafting masks exactly as the full model does."""
    model = _model(name)
    skip_set = SkipSet(**skipped)
    for layer in skip_set.attention:  # blocks that add nothing: leaving them out changes no output
        model.model.layers[layer].self_attn.o_proj.weight.zero_()
    for layer in skip_set.mlp:
        model.model.layers[layer].mlp.down_proj.weight.zero_()
    model.config.eos_token_id = model.generation_config.eos_token_id = None  # every call runs its three rounds
    prompt = _prompts(1, seed=3)[0]
    settings = DecodeSettings(max_new_tokens=3 * SLIDING_WINDOW + 1, max_draft_tokens=SLIDING_WINDOW,
                              confidence_threshold=0.0, fallback=False, ngram=None, costs=None)
    result = decode(model, prompt, skip_set, settings)
    assert result.token_ids == generate_greedy(model, prompt, settings.max_new_tokens)
    assert result.stats.acceptance_rate == 1.0 and result.stats.rounds == 3


@pytest.mark.parametrize("reject_at", [0, 3, SLIDING_WINDOW])
@pytest.mark.parametrize("name", VARIANTS)
def test_cache_rollback_leaves_the_full_models_cache(name, reject_at):
    """Drafting past the window and rejecting at draft j leaves every layer as plain decoding would."""
    model = _model(name)
    prompt = _prompts(1, seed=4)[0]
    gamma = SLIDING_WINDOW + 2
    truth = generate_greedy(model, prompt, gamma + 2)
    length = len(prompt)
    cache = forward.new_cache()
    with torch.inference_mode():
        forward.run(model, cache, torch.tensor([prompt]), 0)
        token = truth[0]
        with skipping(model, SkipSet(attention=(1,), mlp=(2,))):  # layer 1's cache falls behind
            for step in range(gamma):
                logits = forward.run(model, cache, torch.tensor([[token]]), length + step).logits[0, -1]
                token = int(logits.argmax())
        assert len({layer.get_seq_length() for layer in cache.layers}) == 2
        crop_cache(cache, length)
        drafts = truth[1: gamma + 1]
        drafts[reject_at] = (drafts[reject_at] + 1) % 128
        targets = forward.run(model, cache, torch.tensor([truth[:1] + drafts]), length).logits[0].argmax(-1).tolist()
        assert targets[: reject_at + 1] == truth[1: reject_at + 2]
        crop_cache(cache, length + 1 + reject_at)

        reference = forward.new_cache()
        forward.run(model, reference, torch.tensor([prompt + truth[: reject_at + 1]]), 0)
    assert len(cache.layers) == len(reference.layers)
    for ours, theirs in zip(cache.layers, reference.layers):
        assert ours.keys.shape == theirs.keys.shape
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_proxy_equals_a_from_scratch_computation(name):
    model = _model(name)
    references = _references(model, seed=5)
    scorer = ProxyScorer(model, references)
    rng = random.Random(6)
    eligible = eligible_sublayers(4, keep_first=0, keep_last=0)
    for _ in range(10):
        skip_set = SkipSet.from_sublayers(rng.sample(eligible, rng.randint(1, 6)))
        fast, slow = scorer.score(skip_set), score_from_scratch(model, references, skip_set)
        assert fast.matchness == slow.matchness, skip_set
        assert fast.expected_acceptance == pytest.approx(slow.expected_acceptance, abs=1e-5), skip_set


def _draft_confidences(model, references, skip_set):
    """Per reference and continuation position, the skipped model's top-1 probability, from scratch."""
    out = []
    with torch.inference_mode():
        for reference in references:
            cache = forward.new_cache()
            forward.run(model, cache, torch.tensor([reference.prompt_ids]), 0)
            with skipping(model, skip_set):
                logits = forward.run(model, cache, torch.tensor([reference.continuation[:-1]]),
                                     len(reference.prompt_ids)).logits[0]
            out.append(logits.float().softmax(-1).max(-1).values)
    return torch.cat(out)


@pytest.mark.parametrize("name", SLIDING)
def test_the_proxy_honours_the_sliding_window(name):
    # a larger init than the default sharpens attention, so that the window moves the outputs clearly
    model, windowless = _model(name, initializer_range=0.1), _model(name, windowless=True, initializer_range=0.1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), windowless.parameters()))
    references = _references(model, seed=7)
    assert all(len(r.continuation) > SLIDING_WINDOW for r in references)
    scorer = ProxyScorer(model, references)
    for skip_set in (SkipSet(mlp=(1,)), SkipSet(attention=(1,), mlp=(3,)), SkipSet(attention=(3,))):
        proxy = torch.tensor([confidence for prompt in scorer.score(skip_set).trace for confidence, _ in prompt])
        windowed = _draft_confidences(model, references, skip_set)
        # the window changes these numbers, so a proxy that ignored it could not match them
        assert not torch.allclose(_draft_confidences(windowless, references, skip_set), windowed, atol=1e-4)
        torch.testing.assert_close(proxy, windowed, atol=1e-5, rtol=1e-5)


def test_mask_kinds_follow_each_familys_forward():
    assert mask_kinds(_model("llama").config, 4) == ["full_attention"] * 4
    assert mask_kinds(_model("qwen3").config, 4) == ["full_attention"] * 4
    # Mistral windows every layer; Qwen slides from max_window_layers (2 here) upwards
    assert mask_kinds(_model("mistral").config, 4) == ["sliding_attention"] * 4
    assert mask_kinds(_model("mistral", windowless=True).config, 4) == ["full_attention"] * 4
    for name in ("qwen2", "qwen3-sliding"):
        assert mask_kinds(_model(name).config, 4) == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert mask_kinds(_model("qwen2", windowless=True).config, 4) == ["full_attention"] * 4


def _tiny_unsupported(kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    return PhiForCausalLM(PhiConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, max_position_embeddings=64)).eval()


@pytest.mark.parametrize("kind", ["gpt2", "phi"])
def test_an_unsupported_family_gets_one_clear_line(kind):
    model = _tiny_unsupported(kind)
    expected = rf"^unsupported architecture '{kind}': skipsearch supports llama, mistral, qwen2, qwen3$"
    with pytest.raises(SkipsearchError, match=expected):
        with skipping(model, SkipSet(attention=(1,))):
            pass
    with pytest.raises(SkipsearchError, match=expected):
        ProxyScorer(model, [Reference("0", (5, 6, 7), (8, 9, 10))])
