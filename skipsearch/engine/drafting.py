"""Drafting policy: which draft each round verifies, decided the same way in decoding and in replay.

Two drafters propose tokens after the current context:
- the **n-gram drafter** (prompt lookup) finds the longest suffix of the context, `max_n` down
  to `min_n` tokens, that occurred earlier in it, and proposes what followed its most recent
  earlier occurrence (up to `max_tokens`). It needs no model call, and its index grows with
  each committed token, so a round's work grows with the new tokens, not with the context;
- the **layer-skip drafter**: the model with a skip set left out, token by token, stopping
  when its confidence falls below the threshold (the decoder runs it; see `decoding`);
- both in one round: the n-gram draft, **continued by the skipped model**, which reads the
  pending token and the n-gram tokens in one pass and drafts on from there.

Each round the `DraftPolicy` predicts, for every option — a plain step, the n-gram draft cut
to its best length, a layer-skip draft of its best length, that n-gram draft continued by
the skipped model for its best number of tokens — how many tokens per second it
commits: expected tokens (each drafted token accepted independently with the drafter's
running acceptance estimate) over the cost of the round (draft steps plus verifying the
drafted tokens, from measured costs relative to a plain step). It takes the best option if
it beats a plain step by `margin`. The n-gram drafter's acceptance is estimated per matched
length, since a longer match predicts better.

`decoding.decode` and `costs.replay_drafting` (the search's prediction over reference
continuations) both call `DraftPolicy.choose` and `DraftPolicy.record` and count rounds with
`count_round`, so a prediction can differ from a measurement only through timing, never
through the rules. Without measured costs the policy is fixed (the layer-skip draft at its
longest every round), which is how the decoder drafted before policies.

This module knows nothing about models, caches or tasks; it imports nothing beyond the
standard library and the package's own errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from skipsearch.errors import SkipsearchError

PLAIN, NGRAM, LAYER_SKIP, NGRAM_LAYER_SKIP = "plain", "ngram", "layer_skip", "ngram_layer_skip"
DRAFTERS = (NGRAM, LAYER_SKIP, NGRAM_LAYER_SKIP)

# The draft settings everything starts from (the decoder, studies, the bench, the command line):
# SWIFT's draft length, and its confidence to stop a draft early.
DEFAULT_MAX_DRAFT_TOKENS = 8
DEFAULT_CONFIDENCE_THRESHOLD = 0.8


@dataclass(frozen=True)
class NgramSettings:
    min_n: int = 2  # shortest context suffix that may match (1 matches any repeated token)
    max_n: int = 4  # longest suffix tried first
    max_tokens: int = 10  # most tokens one n-gram draft proposes

    def __post_init__(self) -> None:
        if not 1 <= self.min_n <= self.max_n:
            raise SkipsearchError(f"ngram: need 1 <= min_n <= max_n, got min_n={self.min_n}, max_n={self.max_n}")
        if self.max_tokens < 1:
            raise SkipsearchError(f"ngram: max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class RelativeCosts:
    """Costs relative to one plain step (a full-model pass over one new token)."""

    verify: tuple[float, ...]  # index n-1: a full-model pass over n new tokens; verify[0] == 1
    draft_step: float  # one step of the skipped model

    def __post_init__(self) -> None:
        values = (*self.verify, self.draft_step)
        if not self.verify or any(not math.isfinite(v) or v <= 0 for v in values):
            raise SkipsearchError("policy costs: verify needs at least one cost, and costs must be finite and > 0")

    @property
    def max_verified(self) -> int:
        return len(self.verify)

    def verify_cost(self, tokens: int) -> float:
        return self.verify[min(tokens, len(self.verify)) - 1]

    def draft_pass_cost(self, tokens: int) -> float:
        """One pass of the skipped model over `tokens` new tokens: a draft step, scaled with the
        number of tokens as the full model's pass is."""
        return self.draft_step * self.verify_cost(tokens)


@dataclass(frozen=True)
class PolicySettings:
    # per-token acceptance assumed before a drafter's first verified token, and how many drafted
    # tokens' worth of evidence that guess counts for
    ngram_prior: float = 0.6
    layer_skip_prior: float = 0.6
    prior_weight: float = 4.0
    # draft only when the best option's predicted tokens/s beat a plain step's by this factor
    margin: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ngram_prior", "layer_skip_prior"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SkipsearchError(f"policy: {name} must be in [0, 1), got {getattr(self, name)}")
        if self.prior_weight <= 0:
            raise SkipsearchError(f"policy: prior_weight must be > 0, got {self.prior_weight}")
        if self.margin <= 0:
            raise SkipsearchError(f"policy: margin must be > 0, got {self.margin}")


class NgramIndex:
    """The context's n-grams of `min_n`..`max_n` tokens, each with the end of its latest occurrence."""

    def __init__(self, settings: NgramSettings, tokens: Sequence[int] = ()):
        self.settings = settings
        self.tokens: list[int] = []
        # n -> n-gram -> end (exclusive) of its most recent occurrence that is not the context's suffix
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(settings.min_n, settings.max_n + 1)}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Commit tokens: registers the n-grams that stopped being the suffix (work ∝ new tokens)."""
        old = len(self.tokens)
        self.tokens.extend(tokens)
        # grams ending at old .. len-1 become earlier occurrences; the one ending at len is the suffix
        for end in range(max(old, 1), len(self.tokens)):
            for n, ends in self._ends.items():
                if end >= n:
                    ends[tuple(self.tokens[end - n:end])] = end

    def propose(self) -> tuple[list[int], int]:
        """(the tokens after the latest earlier occurrence of the longest matching suffix, its length);
        ([], 0) when no suffix of min_n or more tokens occurred before."""
        length = len(self.tokens)
        for n in range(self.settings.max_n, self.settings.min_n - 1, -1):
            if length < n:
                continue
            end = self._ends[n].get(tuple(self.tokens[length - n:]))
            if end is not None:
                return self.tokens[end:end + self.settings.max_tokens], n
        return [], 0


@dataclass
class Estimate:
    """A per-token acceptance estimate: accepted drafts over accepted drafts plus rejections,
    with a prior worth `weight` drafted tokens (each round rejects at most once)."""

    prior: float
    weight: float
    accepted: int = 0
    rejected: int = 0

    @property
    def value(self) -> float:
        return (self.prior * self.weight + self.accepted) / (self.weight + self.accepted + self.rejected)

    def record(self, drafted: int, accepted: int) -> None:
        self.accepted += accepted
        self.rejected += accepted < drafted


def expected_tokens(acceptance: float, drafted: int) -> float:
    """Tokens a round commits when each of `drafted` tokens is accepted with `acceptance`
    independently, plus the full model's own: (1 - a^(k+1)) / (1 - a)."""
    if acceptance >= 1.0:
        return drafted + 1.0
    return (1.0 - acceptance ** (drafted + 1)) / (1.0 - acceptance)


@dataclass(frozen=True)
class Choice:
    """What one round does: a plain step, or verify `tokens` from the n-gram drafter, or draft up
    to `draft_tokens` with the skipped model, or both: `tokens`, then up to `draft_tokens` more
    from the skipped model. `rate` is the predicted tokens per plain step."""

    kind: str
    tokens: tuple[int, ...] = ()  # the n-gram draft, cut to its best length
    draft_tokens: int = 0  # the most tokens the skipped model drafts (after `tokens`)
    match: int = 0  # the matched suffix length of an n-gram draft
    rate: float = 1.0


class DraftPolicy:
    """Chooses each round's draft and learns from how many of its tokens were accepted."""

    def __init__(self, costs: RelativeCosts | None, settings: PolicySettings = PolicySettings(),
                 ngram: NgramSettings | None = None, layer_skip: bool = False,
                 max_draft_tokens: int = DEFAULT_MAX_DRAFT_TOKENS):
        self.costs, self.settings, self.ngram = costs, settings, ngram
        self.layer_skip = layer_skip
        self.max_draft_tokens = max_draft_tokens
        self.layer_skip_estimate = Estimate(settings.layer_skip_prior, settings.prior_weight)
        self.ngram_estimates = {n: Estimate(settings.ngram_prior, settings.prior_weight)
                                for n in range(ngram.min_n, ngram.max_n + 1)} if ngram else {}

    def _best_length(self, acceptance: float, longest: int, step_cost: float) -> tuple[int, float]:
        """The draft length in 1..longest with the most tokens per plain step, and that rate."""
        best = (0, 0.0)
        verify = self.costs.verify  # longest < len(verify): the caller keeps drafts within the measured passes
        tokens, power = 1.0, 1.0  # expected_tokens(acceptance, k), summed term by term
        for k in range(1, longest + 1):
            power *= acceptance
            tokens += power
            rate = tokens / (k * step_cost + verify[k])
            if rate > best[1]:
                best = (k, rate)
        return best

    def choose(self, budget: int, proposal: Sequence[int] = (), match: int = 0) -> Choice:
        """The round's choice with at most `budget` drafted tokens, given the n-gram drafter's
        `proposal` (from a suffix match of `match` tokens; empty when there is none).

        Without costs the choice is fixed, as before policies existed: the layer-skip draft at
        its longest every round, else the whole n-gram draft where there is one."""
        if self.costs is None:
            if budget < 1:
                return Choice(PLAIN)
            if self.layer_skip:
                return Choice(LAYER_SKIP, draft_tokens=min(self.max_draft_tokens, budget))
            if proposal:
                return Choice(NGRAM, tokens=tuple(proposal[:budget]), match=match)
            return Choice(PLAIN)
        limit = min(budget, self.costs.max_verified - 1)
        best = Choice(PLAIN)
        if limit < 1:
            return best
        options = []
        if proposal:
            length, rate = self._best_length(self.ngram_estimates[match].value, min(len(proposal), limit), 0.0)
            options.append(Choice(NGRAM, tokens=tuple(proposal[:length]), match=match, rate=rate))
        if self.layer_skip:
            length, rate = self._best_length(self.layer_skip_estimate.value, min(self.max_draft_tokens, limit),
                                             self.costs.draft_step)
            options.append(Choice(LAYER_SKIP, draft_tokens=length, rate=rate))
        if proposal and self.layer_skip and len(options[0].tokens) < limit:
            options.append(self._continued(options[0], limit))
        for option in options:
            if option.rate > best.rate * (self.settings.margin if best.kind == PLAIN else 1.0):
                best = option
        return best

    def _continued(self, ngram: Choice, limit: int) -> Choice:
        """The n-gram draft `ngram` continued by the skipped model for its best number of tokens
        (within `limit` drafted in all): each continued token counts only if every token before
        it, the n-gram ones included, is accepted."""
        ngram_acceptance = self.ngram_estimates[ngram.match].value
        skip_acceptance = self.layer_skip_estimate.value
        k = len(ngram.tokens)
        all_ngram = ngram_acceptance ** k  # every n-gram token accepted
        ngram_expected = expected_tokens(ngram_acceptance, k) - 1.0
        verify, step = self.costs.verify, self.costs.draft_step
        pass_cost = self.costs.draft_pass_cost(k + 1)
        best_m, best_rate = 0, 0.0
        continued, power = 0.0, 1.0  # expected_tokens(skip_acceptance, m) - 1, summed term by term
        for m in range(1, min(self.max_draft_tokens, limit - k) + 1):
            power *= skip_acceptance
            continued += power
            rate = (1.0 + ngram_expected + all_ngram * continued) / (pass_cost + (m - 1) * step + verify[k + m])
            if rate > best_rate:
                best_m, best_rate = m, rate
        return Choice(NGRAM_LAYER_SKIP, tokens=ngram.tokens, draft_tokens=best_m, match=ngram.match, rate=best_rate)

    def record(self, choice: Choice, drafted: int, accepted: int) -> None:
        if choice.kind == NGRAM:
            self.ngram_estimates[choice.match].record(drafted, accepted)
        elif choice.kind == LAYER_SKIP and drafted:
            self.layer_skip_estimate.record(drafted, accepted)
        elif choice.kind == NGRAM_LAYER_SKIP:
            k = len(choice.tokens)
            self.ngram_estimates[choice.match].record(k, min(accepted, k))
            if accepted >= k and drafted > k:  # the continuation is judged only where the n-grams held
                self.layer_skip_estimate.record(drafted - k, accepted - k)


def count_round(stats, choice: Choice, drafted: int, accepted: int, draft_steps: int) -> None:
    """Add one round to `stats` (a `decoding.DecodeStats`): a round that verified nothing
    drafted is a plain step; rounds, drafted and accepted tokens are totals over drafters,
    the n-gram drafter's share is kept beside them."""
    stats.draft_steps += draft_steps
    if choice.kind == PLAIN or not drafted:
        stats.plain_steps += 1
        return
    stats.rounds += 1
    stats.drafted_tokens += drafted
    stats.accepted_tokens += accepted
    if choice.kind == NGRAM:
        stats.ngram_rounds += 1
        stats.ngram_drafted_tokens += drafted
        stats.ngram_accepted_tokens += accepted
    elif choice.kind == NGRAM_LAYER_SKIP:
        stats.ngram_layer_skip_rounds += 1


def round_cost(costs: RelativeCosts, choice: Choice, drafted: int, draft_steps: int) -> float:
    """A round's cost in plain steps: the skipped model's passes (the first over the pending token
    and the n-gram tokens where it continues an n-gram draft), then the full model over the
    pending token and the drafts (a plain step when nothing was drafted)."""
    drafting = draft_steps * costs.draft_step
    if choice.kind == NGRAM_LAYER_SKIP and draft_steps:
        drafting += costs.draft_pass_cost(len(choice.tokens) + 1) - costs.draft_step
    return drafting + costs.verify_cost(drafted + 1)
