"""What "lossless" means per precision, and the check that tells a tie flip from an error.

In float32 self-speculative output must equal plain greedy output token for token. In
bfloat16 and float16 a verify pass over k + 1 tokens runs other kernels than a one-token
step, so where the full model's two best tokens are nearly tied the two can swap: the
output is then the full model's greedy choice "up to the numerics of batched
verification", the standard contract. `classify` finds where two outputs first differ and
re-scores that position with the full model twice — as a one-token step and inside a
multi-token pass — and calls it a *tie flip* when, in either pass, both tokens lie within
the dtype's tolerance of the best logit, else an *error* (a defect).

The tolerance is `TIE_EPS` epsilons of the precision the matmuls run in, times the size of
the best logit (rounding errors scale with the activations). On the embedded SmolLM2 in
bfloat16 the largest logit difference between a one-token and a 9-token pass over 49
positions was 7.2 epsilons of the best logit; 8 covers it. float32 on a CPU has no tolerance:
its one-token and multi-token passes agree bit for bit, so any difference is an error. On a
GPU they do not: float32 matmuls run in TF32 (10-bit mantissa) or bfloat16 where
`torch.backends.cuda.matmul.allow_tf32` or `torch.set_float32_matmul_precision` allow it,
and those get the bfloat16 rule with that epsilon; full float32 there still differs through
the kernels' summation order, which `FLOAT32_GPU_EPS` float32 epsilons are meant to cover.
That number is not measured yet (no GPU run so far): it is set generously, as a tolerance too
wide only calls an error with a gap of a few millionths of the best logit a tie.

This module knows nothing about tasks or search; it imports torch and transformers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skipsearch.engine import forward

TIE_EPS = 8.0
FLOAT32_GPU_EPS = 64.0
# the epsilon float32 matmuls round their inputs to under torch's float32 matmul precision
_MATMUL_PRECISION_EPS = {"high": 2.0**-10, "medium": 2.0**-7}  # TF32, bfloat16
KINDS = ("identical", "tie_flip", "error")


@dataclass(frozen=True)
class Divergence:
    """How a candidate output compares with the reference (the full model's plain greedy output)."""

    kind: str  # one of KINDS
    position: int | None = None  # index of the first differing generated token
    expected: int | None = None  # the reference's token there (None past its end)
    got: int | None = None  # the candidate's token there
    gap: float | None = None  # how far the two tokens' logits lie from the best one, in the closer pass
    tolerance: float | None = None  # the gap below which it counts as a tie

    def describe(self) -> str:
        if self.kind == "identical":
            return "identical"
        return (f"{self.kind.replace('_', ' ')} at generated token {self.position}: expected {self.expected}, "
                f"got {self.got} (logit gap {self.gap:.4g}, tolerance {self.tolerance:.4g})")


@dataclass
class LosslessCounts:
    """Outputs by kind, over prompts (and methods or profiles, as the caller adds them up)."""

    identical: int = 0
    tie_flip: int = 0
    error: int = 0

    def add(self, divergence: Divergence) -> None:
        setattr(self, divergence.kind, getattr(self, divergence.kind) + 1)

    def describe(self) -> str:
        return f"{self.identical} identical, {self.tie_flip} tie flips, {self.error} errors"

    def to_dict(self) -> dict[str, int]:
        return {kind: getattr(self, kind) for kind in KINDS}


def tie_tolerance(dtype: torch.dtype, best_logit: float, device: torch.device | str = "cpu") -> float:
    """The logit gap under which two tokens count as tied in `dtype` on `device` (under torch's
    matmul precision settings now); 0 for float32 on a CPU (exact)."""
    device_type = torch.device(device).type
    if dtype not in (torch.float32, torch.float64):
        return TIE_EPS * torch.finfo(dtype).eps * max(1.0, abs(best_logit))
    if device_type == "cpu":
        return 0.0
    precision = torch.get_float32_matmul_precision()
    if device_type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        precision = "high" if precision == "highest" else precision
    if dtype == torch.float32 and precision in _MATMUL_PRECISION_EPS:
        return TIE_EPS * _MATMUL_PRECISION_EPS[precision] * max(1.0, abs(best_logit))
    return FLOAT32_GPU_EPS * torch.finfo(dtype).eps * max(1.0, abs(best_logit))


def _next_token_logits(model, context: list[int], new_tokens: int) -> torch.Tensor:
    """The full model's logits after `context`, its last `new_tokens` tokens in one pass after a prefill."""
    device = forward.input_device(model)
    ids = torch.tensor([context], device=device)
    cache = forward.new_cache()
    split = len(context) - new_tokens
    if split:
        forward.run(model, cache, ids[:, :split], 0, logits_to_keep=1)
    return forward.run(model, cache, ids[:, split:], split, logits_to_keep=1).logits[0, -1].float()


def classify(model, prompt_ids: list[int], reference: list[int], candidate: list[int],
             verify_tokens: int = 9) -> Divergence:
    """Compare a candidate output with the reference; re-score their first difference if any.

    The two passes: a one-token step (what plain decoding runs) and a pass over the last
    `verify_tokens` tokens of the context (what verification runs)."""
    position = next((i for i, (a, b) in enumerate(zip(reference, candidate)) if a != b), None)
    if position is None:
        if len(reference) == len(candidate):
            return Divergence("identical")
        position = min(len(reference), len(candidate))
    expected = reference[position] if position < len(reference) else None
    got = candidate[position] if position < len(candidate) else None
    dtype = model.get_input_embeddings().weight.dtype
    device = forward.input_device(model)
    if expected is None or got is None:  # one output stopped where the other did not: no tie to weigh
        return Divergence("error", position, expected, got, float("inf"), tie_tolerance(dtype, 0.0, device))
    context = list(prompt_ids) + list(reference[:position])
    gaps, tolerances = [], []
    with torch.inference_mode():
        for new_tokens in sorted({1, min(verify_tokens, len(context))}):
            logits = _next_token_logits(model, context, new_tokens)
            best = logits.max()
            gaps.append(float(torch.maximum(best - logits[expected], best - logits[got])))
            tolerances.append(tie_tolerance(dtype, float(best), device))
    closer = min(range(len(gaps)), key=lambda i: gaps[i] - tolerances[i])
    kind = "tie_flip" if gaps[closer] <= tolerances[closer] and tolerances[closer] > 0 else "error"
    return Divergence(kind, position, expected, got, gaps[closer], tolerances[closer])
