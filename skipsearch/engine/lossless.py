"""What "lossless" means per precision, and the check that tells a tie flip from an error.

In float32 self-speculative output must equal plain greedy output token for token. In
bfloat16 and float16 a verify pass over k + 1 tokens runs other kernels than a one-token
step, so where the full model's two best tokens are nearly tied the two can swap: the
output is then the full model's greedy choice "up to the numerics of batched
verification", the standard contract. `classify` finds where two outputs first differ and
re-scores that position with the full model twice — as a one-token step and inside a
multi-token pass — and calls it a *tie flip* when, in either pass, both tokens lie within
the dtype's tolerance of the best logit, else an *error* (a defect).

The tolerance is `TIE_EPS` machine epsilons of the dtype, times the size of the best logit
(rounding errors scale with the activations). On the embedded SmolLM2 in bfloat16 the
largest logit difference between a one-token and a 9-token pass over 49 positions was
7.2 epsilons of the best logit; 8 covers it. float32 has no tolerance: any difference is an
error.

This module knows nothing about tasks or search; it imports torch and transformers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skipsearch.engine import forward

TIE_EPS = 8.0
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


def tie_tolerance(dtype: torch.dtype, best_logit: float) -> float:
    """The logit gap under which two tokens count as tied in `dtype`; 0 in float32 (exact)."""
    if dtype == torch.float32 or dtype == torch.float64:
        return 0.0
    return TIE_EPS * torch.finfo(dtype).eps * max(1.0, abs(best_logit))


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
    if expected is None or got is None:  # one output stopped where the other did not: no tie to weigh
        return Divergence("error", position, expected, got, float("inf"), tie_tolerance(dtype, 0.0))
    context = list(prompt_ids) + list(reference[:position])
    gaps, tolerances = [], []
    with torch.inference_mode():
        for new_tokens in sorted({1, min(verify_tokens, len(context))}):
            logits = _next_token_logits(model, context, new_tokens)
            best = logits.max()
            gaps.append(float(torch.maximum(best - logits[expected], best - logits[got])))
            tolerances.append(tie_tolerance(dtype, float(best)))
    closer = min(range(len(gaps)), key=lambda i: gaps[i] - tolerances[i])
    kind = "tie_flip" if gaps[closer] <= tolerances[closer] and tolerances[closer] > 0 else "error"
    return Divergence(kind, position, expected, got, gaps[closer], tolerances[closer])
