"""Reduced precision and the engine's contact with the device: non-finite logits, host
transfers, the forward shim, and the lossless check that tells tie flips from errors."""

import contextlib
import functools
import random

import pytest
import torch

from skipsearch.engine import decoding, forward, lossless
from skipsearch.engine.decoding import DecodeSettings, decode
from skipsearch.engine.drafting import PolicySettings
from skipsearch.engine.lossless import Divergence, LosslessCounts, classify, tie_tolerance
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError

from conftest import generate_greedy, make_tiny_llama


@contextlib.contextmanager
def _drafts_give_nan(monkeypatch):
    """Every pass of the skipped model returns NaN logits; the full model's passes stay as they are."""
    drafting = {"on": False}
    real_skipping, real_run = decoding.skipping, forward.run

    @contextlib.contextmanager
    def flagged(model, skip_set):
        drafting["on"] = True
        try:
            with real_skipping(model, skip_set):
                yield
        finally:
            drafting["on"] = False

    def run(*args, **kwargs):
        out = real_run(*args, **kwargs)
        if drafting["on"]:
            out.logits = torch.full_like(out.logits, float("nan"))
        return out

    monkeypatch.setattr(decoding, "skipping", flagged)
    monkeypatch.setattr(forward, "run", run)
    yield


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_non_finite_draft_logits_stop_drafting_greedy(tiny_model, monkeypatch, threshold):
    prompt = [5, 17, 33, 9]
    expected = generate_greedy(tiny_model, prompt, 10)
    with _drafts_give_nan(monkeypatch):
        result = decode(tiny_model, prompt, SkipSet(mlp=(1,)),
                        DecodeSettings(max_new_tokens=10, confidence_threshold=threshold, fallback=False,
                                       ngram=None, costs=None))
    assert result.token_ids == expected
    assert result.stats.drafted_tokens == 0 and result.stats.draft_steps > 0


def test_non_finite_draft_logits_stop_drafting_when_sampling(tiny_model, monkeypatch):
    with _drafts_give_nan(monkeypatch):
        result = decode(tiny_model, [5, 17, 33, 9], SkipSet(mlp=(1,)),
                        DecodeSettings(max_new_tokens=10, temperature=1.0, confidence_threshold=0.0, seed=0,
                                       fallback=False))
    assert len(result.token_ids) == 10 and result.stats.drafted_tokens == 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_non_finite_full_model_is_one_line_naming_the_dtype(monkeypatch, temperature):
    model = make_tiny_llama().to(torch.float16)
    real_run = forward.run

    def run(*args, **kwargs):
        out = real_run(*args, **kwargs)
        out.logits = torch.full_like(out.logits, float("inf"))
        return out

    monkeypatch.setattr(forward, "run", run)
    with pytest.raises(SkipsearchError, match=r"not finite .* in float16.*float32 or bfloat16 \(--dtype\)") as caught:
        decode(model, [5, 17, 33], SkipSet(mlp=(1,)),
               DecodeSettings(max_new_tokens=5, temperature=temperature, seed=0, fallback=False))
    assert "\n" not in str(caught.value)


_TRANSFERS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "cpu", "numpy")


@pytest.mark.parametrize("temperature, threshold", [(0.0, 0.0), (0.0, 0.005), (1.0, 0.0), (1.0, 0.005)])
def test_at_most_one_host_transfer_per_draft_step_and_per_verify_pass(tiny_model, monkeypatch,
                                                                       temperature, threshold):
    counted = {"transfers": 0}
    for name in _TRANSFERS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            counted["transfers"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    settings = DecodeSettings(max_new_tokens=24, max_draft_tokens=4, confidence_threshold=threshold,
                              temperature=temperature, seed=1, fallback=False,
                              policy=PolicySettings(layer_skip_prior=0.9))  # so that the skip set drafts
    result = decode(tiny_model, [5, 17, 33, 9, 41], SkipSet(attention=(2,), mlp=(3,)), settings)
    stats = result.stats
    passes = 1 + stats.draft_steps + stats.rounds + stats.plain_steps  # the prefill's choice counts as one
    assert stats.draft_steps > 0 and stats.rounds > 0
    assert counted["transfers"] <= passes


def test_forward_reads_the_cache_argument_name_from_the_signature():
    def old(input_ids=None, past_key_values=None):
        return None

    def new(input_ids=None, cache=None):
        return None

    assert forward.cache_keyword(old) == "past_key_values"
    assert forward.cache_keyword(new) == "cache"
    model = make_tiny_llama()
    assert forward.cache_keyword(model) == forward.cache_keyword(type(model))


def test_positions_are_passed_only_when_the_cache_cannot_imply_them(tiny_model, monkeypatch):
    seen = []
    real_forward = type(tiny_model).forward

    @functools.wraps(real_forward)
    def spy(self, *args, **kwargs):
        seen.append("position_ids" in kwargs)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "forward", spy)
    cache = forward.new_cache()
    ids = torch.tensor([[5, 6, 7]])
    forward.run(tiny_model, cache, ids, 0)
    forward.run(tiny_model, cache, ids[:, :1], 3)  # the cache holds 3 positions: implied
    forward.run(tiny_model, cache, ids[:, :1], 2)  # re-running position 2 after a crop elsewhere: explicit
    assert seen == [False, False, True]


def test_flash_attention_gets_the_sequence_lengths_of_multi_token_passes(tiny_model, monkeypatch):
    seen = []
    monkeypatch.setattr(tiny_model, "forward", lambda **kwargs: seen.append(kwargs))
    monkeypatch.setattr(tiny_model.config, "_attn_implementation", "flash_attention_2")
    cache = forward.new_cache()
    forward.run(tiny_model, cache, torch.tensor([[5, 6, 7]]), 0)
    forward.run(tiny_model, cache, torch.tensor([[5]]), 0)
    multi, single = seen
    assert multi["cu_seq_lens_q"].tolist() == [0, 3] and multi["max_length_k"] == 3
    assert "cu_seq_lens_q" not in single


# ---------------------------------------------------------------------------- lossless check


def test_tolerance_is_exact_in_float32_on_a_cpu_and_scales_with_the_logit_otherwise():
    assert tie_tolerance(torch.float32, 30.0) == 0.0
    assert tie_tolerance(torch.float32, 30.0, "cpu") == 0.0
    assert tie_tolerance(torch.bfloat16, 20.0) == pytest.approx(8 * 2 ** -7 * 20)
    assert tie_tolerance(torch.float16, 0.1) == pytest.approx(8 * 2 ** -10)
    assert tie_tolerance(torch.bfloat16, 40.0) > tie_tolerance(torch.float16, 40.0)


@pytest.fixture
def float32_precision():
    """Restores torch's float32 matmul precision after a test that changes it."""
    saved = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(saved)


def test_float32_on_a_gpu_has_a_tolerance_that_tf32_widens(float32_precision):
    float32_precision("highest")
    full = tie_tolerance(torch.float32, 20.0, "cuda:0")
    assert full == pytest.approx(64 * 2 ** -23 * 20)
    float32_precision("high")  # TF32: a 10-bit mantissa inside the matmuls
    assert tie_tolerance(torch.float32, 20.0, "cuda:0") == pytest.approx(8 * 2 ** -10 * 20)
    float32_precision("medium")
    assert tie_tolerance(torch.float32, 20.0, "cuda:0") == pytest.approx(8 * 2 ** -7 * 20)
    assert tie_tolerance(torch.float32, 20.0, "cpu") == 0.0  # the CPU's float32 stays exact
    float32_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = True  # the older switch, same effect
    try:
        assert tie_tolerance(torch.float32, 20.0, "cuda") == pytest.approx(8 * 2 ** -10 * 20)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("gap, device, precision, kind", [
    (1e-5, "cuda", "highest", "tie_flip"),  # within 64 float32 epsilons of the best logit (1.5e-4)
    (1e-5, "cpu", "highest", "error"),  # the CPU is exact: any flip is a defect
    (1e-2, "cuda", "highest", "error"),
    (1e-2, "cuda", "high", "tie_flip"),  # within TF32's 8 epsilons (0.16)
    (1.0, "cuda", "high", "error"),
])
def test_a_non_exact_float32_verifier_flips_ties_only_within_the_tolerance(
        tiny_model, monkeypatch, float32_precision, gap, device, precision, kind):
    """A GPU's one-token step and multi-token pass, faked: each ranks the other of two near-tied tokens first."""
    float32_precision(precision)
    expected, got = 7, 9

    def fake_logits(model, context, new_tokens):
        logits = torch.zeros(128)
        logits[expected], logits[got] = (20.0, 20.0 - gap) if new_tokens == 1 else (20.0 - gap, 20.0)
        return logits

    monkeypatch.setattr(lossless, "_next_token_logits", fake_logits)
    monkeypatch.setattr(forward, "input_device", lambda model: torch.device(device))
    result = classify(tiny_model, [1, 2, 3], [4, expected, 5], [4, got, 6])
    assert (result.kind, result.position, result.expected, result.got) == (kind, 1, expected, got)
    assert result.gap == pytest.approx(gap, rel=0.1)  # 20 - gap in float32


def test_identical_outputs_need_no_model_pass(tiny_model):
    assert classify(tiny_model, [1, 2], [3, 4, 5], [3, 4, 5]) == Divergence("identical")


def test_a_corrupted_token_is_an_error_in_every_precision(tiny_model):
    prompt = [5, 17, 33, 9]
    reference = generate_greedy(tiny_model, prompt, 8)
    broken = list(reference)
    broken[4] = (broken[4] + 1) % 128
    result = classify(tiny_model, prompt, reference, broken)
    assert (result.kind, result.position, result.expected, result.got) == ("error", 4, reference[4], broken[4])
    bf16 = make_tiny_llama().to(torch.bfloat16)
    reference = generate_greedy(bf16, prompt, 8)
    broken = reference[:3] + [(reference[3] + 7) % 128] + reference[4:]
    assert classify(bf16, prompt, reference, broken).kind == "error"


def test_a_near_tie_in_bfloat16_is_a_tie_flip(monkeypatch):
    """A model whose two best next tokens are tied to within bfloat16's rounding: either is the
    full model's greedy choice up to the numerics, so a swap is a tie flip, not an error."""
    model = make_tiny_llama().to(torch.bfloat16)
    prompt = [5, 17, 33, 9]
    with torch.inference_mode():
        logits = model(torch.tensor([prompt])).logits[0, -1].float()
    first, second = logits.topk(2).indices.tolist()
    # make the runner-up's row of the LM head equal the winner's, plus a hair: a tie
    head = model.lm_head.weight
    with torch.no_grad():
        head[second] = head[first]
    swapped = classify(model, prompt, [first], [second])
    assert swapped.kind == "tie_flip" and swapped.gap <= swapped.tolerance
    # far from the top is still an error
    last = int(logits.argmin())
    assert classify(model, prompt, [first], [last]).kind == "error"


def test_counts_add_up_by_kind():
    counts = LosslessCounts()
    for kind in ("identical", "identical", "tie_flip", "error"):
        counts.add(Divergence(kind))
    assert counts.to_dict() == {"identical": 2, "tie_flip": 1, "error": 1}
    assert counts.describe() == "2 identical, 1 tie flips, 1 errors"


def test_a_broken_verifier_is_caught_as_an_error(tiny_model, monkeypatch):
    """A test double of the verifier that corrupts the full model's token once: the lossless
    check must call the result an error, whatever the precision."""
    real_verify = decoding.verify_drafts
    calls = {"n": 0}

    def corrupting(*args, **kwargs):
        accepted, token = real_verify(*args, **kwargs)
        calls["n"] += 1
        return accepted, (token + 1) % 128 if calls["n"] == 2 else token

    monkeypatch.setattr(decoding, "verify_drafts", corrupting)
    prompt = [random.Random(0).randrange(3, 128) for _ in range(6)]
    reference = generate_greedy(tiny_model, prompt, 12)
    produced = decode(tiny_model, prompt, SkipSet(mlp=(2,)),
                      DecodeSettings(max_new_tokens=12, confidence_threshold=0.0, fallback=False)).token_ids
    assert produced != reference
    assert classify(tiny_model, prompt, reference, produced).kind == "error"
    assert lossless.KINDS == ("identical", "tie_flip", "error")
