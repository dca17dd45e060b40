"""Closed-form predictions of self-speculative decoding's speed from a cost model.

`predicted_speedup` assumes one acceptance rate for every drafted token and a fixed draft
length; `predicted_speedup_from_stats` applies the costs to a real run's counts, to set a
prediction beside a measurement. The replay of a drafting policy over reference continuations
(`replay`) is the prediction the search ranks by; these are for the closed-form tools (the
GPU check, the dynamic programs' shortlist, the bench's counts).

This module knows nothing about models, tasks or files.
"""

from __future__ import annotations

from skipsearch.engine.costs import CostModel, draft_step_cost, verify_cost
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError


def _check_acceptance(acceptance: float) -> None:
    if not 0.0 <= acceptance <= 1.0:
        raise SkipsearchError(f"acceptance must be in [0, 1], got {acceptance}")


def expected_tokens_per_round(acceptance: float, gamma: float) -> float:
    """Tokens committed per draft–verify round with `gamma` drafts, each accepted with
    probability `acceptance` independently of the others: (1 − a^(γ+1)) / (1 − a); γ + 1 at a = 1."""
    _check_acceptance(acceptance)
    if gamma < 0:
        raise SkipsearchError(f"gamma (draft tokens per round) must be >= 0, got {gamma}")
    if acceptance == 1.0:
        return gamma + 1.0
    return (1.0 - acceptance ** (gamma + 1)) / (1.0 - acceptance)


def predicted_speedup(costs: CostModel, skip_set: SkipSet, acceptance: float, gamma: float) -> float:
    """Predicted speedup of self-speculative decoding over plain decoding, for greedy decoding.

    Assumes each drafted token is accepted with the same probability `acceptance`,
    independently of its position and of the other drafts (for greedy decoding, the proxy's
    matchness estimates it), and that every round drafts exactly `gamma` tokens:
        tokens per round × plain step / (γ × draft step + verify pass of γ + 1 tokens).
    """
    round_cost = gamma * draft_step_cost(costs, skip_set) + verify_cost(costs, gamma + 1)
    return expected_tokens_per_round(acceptance, gamma) * costs.plain_step / round_cost


def best_draft_length(costs: CostModel, skip_set: SkipSet, acceptance: float, max_gamma: int) -> tuple[int, float]:
    """The number of draft tokens per round in 1..max_gamma with the highest predicted speedup, and that speedup."""
    if max_gamma < 1:
        raise SkipsearchError(f"max_gamma must be >= 1, got {max_gamma}")
    speedups = {gamma: predicted_speedup(costs, skip_set, acceptance, gamma) for gamma in range(1, max_gamma + 1)}
    best = max(speedups, key=speedups.__getitem__)  # the shortest of equals: first maximum
    return best, speedups[best]


def predicted_speedup_from_stats(costs: CostModel, skip_set: SkipSet, stats) -> float:
    """The speedup the cost model predicts for a real run with these counts (a
    `decoding.DecodeStats`), to set beside the measured one.

    Uses what the run measured rather than the independence assumption: every draft pass
    (including those whose token was not confident enough to propose), its rounds with
    their mean draft length (drafted_tokens / rounds) and the tokens they committed
    (accepted drafts + one per round), plus its plain full-model steps (probe, fallback,
    rounds with no confident draft), each costing a plain step. The prefill, which plain
    decoding pays too, is left out.
    """
    round_tokens = stats.accepted_tokens + stats.rounds
    plain_tokens = stats.plain_steps
    if round_tokens + plain_tokens == 0:
        return 1.0
    rounds_cost = 0.0
    if stats.rounds:
        mean_drafted = stats.drafted_tokens / stats.rounds
        rounds_cost = stats.rounds * verify_cost(costs, mean_drafted + 1)
    drafting_cost = stats.draft_steps * draft_step_cost(costs, skip_set)
    speculative = rounds_cost + drafting_cost + plain_tokens * costs.plain_step
    plain = (round_tokens + plain_tokens) * costs.plain_step
    return plain / speculative
