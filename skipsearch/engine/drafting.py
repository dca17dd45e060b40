"""The runtime's drafting policy: which draft each round verifies, decided from evidence and costs.

Two drafters propose tokens after the current context:
- the **n-gram drafter** (`NgramIndex`) looks up the context's last `max_n` down to `min_n`
  tokens among everything committed so far (prompt and output) and proposes the continuation
  seen most often after them (the most recent one among equals), token by token, as a
  frequency-scored suffix lookup does (SuffixDecoding, arXiv 2411.04975). It needs no model call,
  and its tables grow by a constant amount of work per committed token;
- the **layer-skip drafter**: the model with a skip set left out, token by token, stopping when
  its confidence falls below the threshold (the decoder runs it; see `decoding`);
- both in one round: the n-gram draft, **continued by the skipped model**.

What the policy knows is evidence with counts (`AcceptanceCounts`): for each drafter, how
often a draft's i-th token was accepted and how often it was the first one rejected — for the
n-gram drafter per matched suffix length, since longer matches predict better. Its belief in
each position's acceptance is a Beta posterior: a weak default prior (`PolicySettings`) and
the evidence, discounted by `discount` per round so that old evidence fades (acceptance drifts
within a generation and between prompts). The evidence opens with the profile's priors (what
the search measured, their weight capped so that this device's evidence can overrule them) in a
process's first call, and with what the calls before left in the `PolicyMemory` after it: the
priors come from other prompts on another machine, and re-added whole to every call they had a
skip set the profile overrated re-tried at the start of each call.

Each round `DraftPolicy.choose` draws one acceptance per position from those posteriors
(Thompson sampling) and, with this device's costs relative to a plain step, takes the option
with the most tokens per unit of time: a plain step, the n-gram draft cut to its best length,
a layer-skip draft of its best length, or that n-gram draft continued by the skipped model.
Thompson sampling tries an option about as often as it could be the best one, so the regret of
exploring grows only logarithmically with the rounds on a stationary stream (Agrawal and Goyal,
2012), and with discounting it keeps re-checking options whose evidence has faded, at a bounded
rate (Raj and Kalyani, 2017). `ThroughputGuard` watches the realized seconds per committed
token against plain steps and suspends drafting for a while when drafting is slower in fact,
whatever the costs predicted; it lets drafting back after a back-off that doubles each time.

`decoding.decode`, `hf.self_speculative` and the search's replay all run their rounds through
`rounds.run_rounds` with this policy, so a prediction can differ from a measurement only through
timing. This module knows nothing about models, caches or tasks; it imports nothing beyond the
standard library and the package's own errors.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from statistics import fmean, median, stdev
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
    min_n: int = 1  # shortest context suffix that may match (1: any repeated token; the policy weighs it)
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
    # the default prior: per-token acceptance believed before any evidence (for n-gram drafts, at
    # every matched length: evidence tells them apart), and how many drafts' worth it counts for
    ngram_prior: float = 0.6
    layer_skip_prior: float = 0.3
    prior_weight: float = 2.0
    # draft only when the best option's tokens per unit of time beat a plain step's by this factor
    margin: float = 1.0
    # per-round fading of evidence, the profile's priors included (1: never); those priors are
    # capped at this many drafts per position, so that a few rounds on this device can overrule them
    discount: float = 0.95
    prior_cap: float = 5.0
    seed: int = 0  # Thompson sampling's random stream: the same seed, the same choices
    # False: decide by the posterior means instead of Thompson samples (no exploration)
    explore: bool = True
    # what exploring may cost: a Thompson choice other than the best by the posterior means is
    # taken while the time exploring lost, summed over rounds, stays within explore_cost of the
    # time decoded plus one plain step (a memory's first call; later calls go on with what is
    # left); else the best choice by the means. A round's loss is the time it took beyond what the
    # best choice by the means would take for the tokens it committed: judged by the means when
    # choosing, charged by what the round realized once it is recorded. 2%, not 3%: the same
    # speed on good profiles (reports/explore-ab), a third less lost to a skip set that never pays
    explore_cost: float = 0.02

    def __post_init__(self) -> None:
        for name in ("ngram_prior", "layer_skip_prior"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SkipsearchError(f"policy: {name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("prior_weight", "margin", "prior_cap"):
            if not getattr(self, name) > 0:
                raise SkipsearchError(f"policy: {name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.explore_cost < 1.0:
            raise SkipsearchError(f"policy: explore_cost must be in [0, 1), got {self.explore_cost}")
        if not 0.0 < self.discount <= 1.0:
            raise SkipsearchError(f"policy: discount must be in (0, 1], got {self.discount}")


# ---------------------------------------------------------------------------------------------
# the n-gram drafter


class _Followers:
    """The tokens seen after one n-gram, counted; `best` is the most frequent, the latest among equals."""

    __slots__ = ("counts", "best", "best_count")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.best, self.best_count = -1, 0

    def add(self, token: int) -> None:
        count = self.counts.get(token, 0) + 1
        self.counts[token] = count
        if count >= self.best_count:
            self.best, self.best_count = token, count


class NgramIndex:
    """Every n-gram of `min_n`..`max_n` tokens of the committed context with the tokens that followed it."""

    def __init__(self, settings: NgramSettings, tokens: Sequence[int] = ()):
        self.settings = settings
        self.tokens: list[int] = []
        self._followers: dict[int, dict[tuple[int, ...], _Followers]] = {
            n: {} for n in range(settings.min_n, settings.max_n + 1)}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Commit tokens: each new token is counted as the follower of the n-grams before it
        (work per token ∝ max_n - min_n + 1, whatever the context's length)."""
        for token in tokens:
            end = len(self.tokens)
            for n, table in self._followers.items():
                if end >= n:
                    key = tuple(self.tokens[end - n:end])
                    followers = table.get(key)
                    if followers is None:
                        followers = table[key] = _Followers()
                    followers.add(token)
            self.tokens.append(token)

    def _lookup(self, tail: Sequence[int], shortest: int) -> tuple[int, int]:
        """(the likeliest follower of the longest n-gram ending `tail` seen before, its length),
        trying lengths down to `shortest`; (-1, 0) when none occurred."""
        for n in range(self.settings.max_n, shortest - 1, -1):
            if len(tail) >= n:
                followers = self._followers[n].get(tuple(tail[len(tail) - n:]))
                if followers is not None:
                    return followers.best, n
        return -1, 0

    def propose(self) -> tuple[list[int], int]:
        """(a draft of up to `max_tokens` tokens, the length of the suffix its first token matched);
        ([], 0) when no suffix of `min_n` or more tokens occurred before. Each next token extends
        the draft by the likeliest follower of the draft's own tail, backing off to shorter
        suffixes but never below two tokens (or the first match's length, if shorter)."""
        tail = self.tokens[-self.settings.max_n:]
        token, match = self._lookup(tail, self.settings.min_n)
        if match == 0:
            return [], 0
        draft = [token]
        shortest = max(self.settings.min_n, min(match, 2))
        while len(draft) < self.settings.max_tokens:
            tail = (tail + [token])[-self.settings.max_n:]
            token, n = self._lookup(tail, shortest)
            if n == 0:
                break
            draft.append(token)
        return draft, match


# ---------------------------------------------------------------------------------------------
# evidence and belief


@dataclass(frozen=True)
class AcceptanceCounts:
    """Acceptance by position in a draft: index i counts drafts whose (i+1)-th token was accepted,
    and drafts whose (i+1)-th token was the first rejected (the tokens after it are not judged).
    Counts may be fractional: discounted or scaled evidence."""

    accepted: tuple[float, ...] = ()
    rejected: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.accepted) != len(self.rejected):
            raise SkipsearchError(f"acceptance counts: accepted and rejected need one entry per draft position, got "
                                  f"{len(self.accepted)} and {len(self.rejected)}")
        if any(not math.isfinite(c) or c < 0 for c in (*self.accepted, *self.rejected)):
            raise SkipsearchError("acceptance counts: every count must be a finite number >= 0")

    @classmethod
    def of_drafts(cls, outcomes: Sequence[tuple[int, int]], positions: int) -> "AcceptanceCounts":
        """The counts of drafts given as (drafted, accepted) pairs, over `positions` positions."""
        evidence = Evidence(positions)
        for drafted, accepted in outcomes:
            evidence.record(drafted, accepted)
        return evidence.counts()

    @property
    def drafts(self) -> float:
        """How many drafts the counts hold (every draft is counted at its first position)."""
        return (self.accepted[0] + self.rejected[0]) if self.accepted else 0.0

    def rates(self) -> list[float | None]:
        """Per position, the share accepted among the drafts that reached it; None where none did."""
        return [a / (a + r) if a + r else None for a, r in zip(self.accepted, self.rejected)]


class Evidence:
    """Mutable acceptance counts of one drafter, with discounting."""

    def __init__(self, positions: int, counts: AcceptanceCounts | None = None) -> None:
        self.accepted = [0.0] * positions
        self.rejected = [0.0] * positions
        if counts is not None:
            for i in range(min(positions, len(counts.accepted))):
                self.accepted[i], self.rejected[i] = counts.accepted[i], counts.rejected[i]

    def record(self, drafted: int, accepted: int) -> None:
        for i in range(min(accepted, len(self.accepted))):
            self.accepted[i] += 1.0
        if accepted < drafted and accepted < len(self.rejected):
            self.rejected[accepted] += 1.0

    def fade(self, factor: float) -> None:
        self.accepted = [a * factor for a in self.accepted]
        self.rejected = [r * factor for r in self.rejected]

    def counts(self) -> AcceptanceCounts:
        return AcceptanceCounts(tuple(self.accepted), tuple(self.rejected))


@dataclass(frozen=True)
class Priors:
    """What the search measured, as evidence with counts: the layer-skip drafter's acceptance by
    position, and the n-gram drafter's by matched suffix length and position ((length, counts)
    pairs, shortest first)."""

    layer_skip: AcceptanceCounts | None = None
    ngram: tuple[tuple[int, AcceptanceCounts], ...] = ()

    def ngram_at(self, match: int) -> AcceptanceCounts | None:
        return dict(self.ngram).get(match)


class _Belief:
    """Beta posteriors of one drafter's per-position acceptance: the default prior's fixed
    pseudo-counts plus the evidence (which fades)."""

    def __init__(self, positions: int, mean: float, weight: float, evidence: Evidence) -> None:
        self.alpha = [mean * weight] * positions
        self.beta = [(1.0 - mean) * weight] * positions
        self.evidence = evidence

    def _counts(self, i: int) -> tuple[float, float]:
        """Position i's Beta parameters."""
        return self.alpha[i] + self.evidence.accepted[i], self.beta[i] + self.evidence.rejected[i]

    def sample(self, rng: random.Random | None, positions: int) -> list[float]:
        """One draw of every position's acceptance (Thompson sampling); the means without `rng`."""
        if rng is None:
            return self.mean(positions)
        return [rng.betavariate(*self._counts(i)) for i in range(min(positions, len(self.alpha)))]

    def mean(self, positions: int) -> list[float]:
        means = []
        for i in range(min(positions, len(self.alpha))):
            a, b = self._counts(i)
            means.append(a / (a + b))
        return means


class PolicyMemory:
    """The evidence a runtime carries from call to call of one process (and, through
    `verdicts`, from process to process): per drafter, the discounted acceptance counts, and what
    is left of the exploring allowance. A new call fades the counts by `call_discount`, so the
    calls before count less than the call itself. Use one memory per skip set and draft settings."""

    def __init__(self, call_discount: float = 0.5) -> None:
        if not 0.0 <= call_discount <= 1.0:
            raise SkipsearchError(f"call_discount must be in [0, 1], got {call_discount}")
        self.call_discount = call_discount
        self.layer_skip: AcceptanceCounts | None = None
        self.ngram: dict[int, AcceptanceCounts] = {}
        self.explore_allowance: float | None = None  # None: a call opens with one plain step's worth

    def forget(self) -> None:
        self.layer_skip, self.ngram, self.explore_allowance = None, {}, None

    def is_empty(self) -> bool:
        """Whether no call has left its evidence here yet."""
        return self.layer_skip is None and not self.ngram

    def to_dict(self) -> dict:
        def pair(counts: AcceptanceCounts) -> dict:
            return {"accepted": list(counts.accepted), "rejected": list(counts.rejected)}

        return {"layer_skip": None if self.layer_skip is None else pair(self.layer_skip),
                "ngram": {str(n): pair(c) for n, c in self.ngram.items()},
                "explore_allowance": self.explore_allowance}

    @classmethod
    def from_dict(cls, data: dict, call_discount: float = 0.5) -> "PolicyMemory":
        memory = cls(call_discount)
        if data.get("layer_skip") is not None:
            memory.layer_skip = AcceptanceCounts(tuple(data["layer_skip"]["accepted"]),
                                                 tuple(data["layer_skip"]["rejected"]))
        memory.ngram = {int(n): AcceptanceCounts(tuple(c["accepted"]), tuple(c["rejected"]))
                        for n, c in data.get("ngram", {}).items()}
        memory.explore_allowance = data.get("explore_allowance")
        return memory


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

    def same_round(self, other: "Choice") -> bool:
        """Whether `other` drafts the same way (whatever rate either was predicted at)."""
        return (self.kind, self.tokens, self.draft_tokens) == (other.kind, other.tokens, other.draft_tokens)


def _best_length(acceptance: Sequence[float], verify: Sequence[float], step_cost: float) -> tuple[int, float]:
    """The draft length in 1..len(acceptance) with the most expected tokens per plain step, and
    that rate; acceptance[i] is the chance the (i+1)-th token is accepted given the ones before."""
    best = (0, 0.0)
    tokens, reach = 1.0, 1.0
    for k, a in enumerate(acceptance, start=1):
        reach *= a
        tokens += reach
        rate = tokens / (k * step_cost + verify[k])
        if rate > best[1]:
            best = (k, rate)
    return best


class DraftPolicy:
    """Chooses each round's draft by Thompson sampling and learns from how many tokens were accepted."""

    def __init__(self, costs: RelativeCosts | None, settings: PolicySettings = PolicySettings(),
                 ngram: NgramSettings | None = None, layer_skip: bool = False,
                 max_draft_tokens: int = DEFAULT_MAX_DRAFT_TOKENS, priors: Priors | None = None,
                 memory: PolicyMemory | None = None):
        self.costs, self.settings, self.ngram = costs, settings, ngram
        self.layer_skip = layer_skip
        self.max_draft_tokens = max_draft_tokens
        self.rng = random.Random(settings.seed) if settings.explore else None
        # plain steps of time exploring may still lose; a call goes on with what the calls before
        # it left, never with more than one step's worth
        self.explore_allowance = 1.0
        if memory is not None and memory.explore_allowance is not None:
            self.explore_allowance = min(1.0, memory.explore_allowance)
        self.exploring: tuple[float, float] | None = None  # the round's (rate by the means, loss charged)
        self.memory = memory
        fade = memory.call_discount if memory is not None else 0.0
        remembered = memory or PolicyMemory()
        # the profile's priors open the evidence of a memory's first call (of every call without
        # one); after it, what the memory carries holds what is left of them
        priors = (priors or Priors()) if remembered.is_empty() else Priors()
        self.layer_skip_evidence = _opening(max_draft_tokens, remembered.layer_skip, fade, priors.layer_skip,
                                            settings.prior_cap)
        self.layer_skip_belief = _Belief(max_draft_tokens, settings.layer_skip_prior, settings.prior_weight,
                                         self.layer_skip_evidence)
        self.ngram_beliefs: dict[int, _Belief] = {}
        if ngram is not None:
            for n in range(ngram.min_n, ngram.max_n + 1):
                evidence = _opening(ngram.max_tokens, remembered.ngram.get(n), fade, priors.ngram_at(n),
                                    settings.prior_cap)
                self.ngram_beliefs[n] = _Belief(ngram.max_tokens, settings.ngram_prior, settings.prior_weight,
                                                evidence)

    def _all_evidence(self) -> list[Evidence]:
        return [self.layer_skip_evidence] + [belief.evidence for belief in self.ngram_beliefs.values()]

    def choose(self, budget: int, proposal: Sequence[int] = (), match: int = 0) -> Choice:
        """The round's choice with at most `budget` drafted tokens, given the n-gram drafter's
        `proposal` (from a suffix match of `match` tokens; empty when there is none).

        Without costs the choice is fixed: the layer-skip draft at its longest every round, else
        the whole n-gram draft where there is one."""
        if self.costs is None:
            if budget < 1:
                return Choice(PLAIN)
            if self.layer_skip:
                return Choice(LAYER_SKIP, draft_tokens=min(self.max_draft_tokens, budget))
            if proposal:
                return Choice(NGRAM, tokens=tuple(proposal[:budget]), match=match)
            return Choice(PLAIN)
        limit = min(budget, self.costs.max_verified - 1)
        if limit < 1:
            return Choice(PLAIN)
        ngram_belief = self.ngram_beliefs.get(match) if proposal else None
        ngram_length = min(len(proposal), limit)
        skip_length = min(self.max_draft_tokens, limit) if self.layer_skip else 0
        means = (ngram_belief.mean(ngram_length) if ngram_belief else [],
                 self.layer_skip_belief.mean(skip_length) if skip_length else [])
        by_means = self._best_option(proposal, match, limit, *means)
        if self.rng is None:
            return by_means
        draws = (ngram_belief.sample(self.rng, ngram_length) if ngram_belief else [],
                 self.layer_skip_belief.sample(self.rng, skip_length) if skip_length else [])
        sampled = self._best_option(proposal, match, limit, *draws)
        if sampled.same_round(by_means):
            return by_means
        tokens, cost = self._expected(sampled, *means)
        loss = max(0.0, cost - tokens / by_means.rate)
        if loss <= self.explore_allowance:
            self.explore_allowance -= loss
            self.exploring = (by_means.rate, loss)
            return sampled
        return by_means

    def _best_option(self, proposal: Sequence[int], match: int, limit: int, ngram_acceptance: list[float],
                     skip_acceptance: list[float]) -> Choice:
        """The option with the most tokens per plain step under these per-position acceptances."""
        verify, step = self.costs.verify, self.costs.draft_step
        options = []
        if ngram_acceptance:
            length, rate = _best_length(ngram_acceptance, verify, 0.0)
            options.append(Choice(NGRAM, tokens=tuple(proposal[:length]), match=match, rate=rate))
        if skip_acceptance:
            length, rate = _best_length(skip_acceptance, verify, step)
            options.append(Choice(LAYER_SKIP, draft_tokens=length, rate=rate))
        if ngram_acceptance and skip_acceptance and len(options[0].tokens) < limit:
            options.append(self._continued(options[0], ngram_acceptance, skip_acceptance, limit))
        best = Choice(PLAIN)
        for option in options:
            if option.rate > best.rate * (self.settings.margin if best.kind == PLAIN else 1.0):
                best = option
        return best

    def _expected(self, choice: Choice, ngram_acceptance: list[float],
                  skip_acceptance: list[float]) -> tuple[float, float]:
        """`choice`'s expected tokens and cost in plain steps under these per-position acceptances."""
        if choice.kind == PLAIN:
            return 1.0, 1.0
        k, m = len(choice.tokens), choice.draft_tokens
        reach, tokens = 1.0, 1.0
        for a in ngram_acceptance[:k]:
            reach *= a
            tokens += reach
        for a in skip_acceptance[:m]:
            reach *= a
            tokens += reach
        verify, step = self.costs.verify, self.costs.draft_step
        if choice.kind == NGRAM:
            cost = verify[k]
        elif choice.kind == LAYER_SKIP:
            cost = m * step + verify[m]
        else:
            cost = self.costs.draft_pass_cost(k + 1) + (m - 1) * step + verify[k + m]
        return tokens, cost

    def _continued(self, ngram: Choice, ngram_draw: list[float], skip_draw: list[float], limit: int) -> Choice:
        """The n-gram draft `ngram` continued by the skipped model for its best number of tokens
        (within `limit` drafted in all): each continued token counts only if every token before
        it, the n-gram ones included, is accepted."""
        k = len(ngram.tokens)
        reach, ngram_expected = 1.0, 0.0
        for a in ngram_draw[:k]:
            reach *= a
            ngram_expected += reach
        verify, step = self.costs.verify, self.costs.draft_step
        pass_cost = self.costs.draft_pass_cost(k + 1)
        best_m, best_rate = 0, 0.0
        continued, skip_reach = 0.0, 1.0
        for m, a in enumerate(skip_draw[:limit - k], start=1):
            skip_reach *= a
            continued += skip_reach
            rate = (1.0 + ngram_expected + reach * continued) / (pass_cost + (m - 1) * step + verify[k + m])
            if rate > best_rate:
                best_m, best_rate = m, rate
        return Choice(NGRAM_LAYER_SKIP, tokens=ngram.tokens, draft_tokens=best_m, match=ngram.match, rate=best_rate)

    def record(self, choice: Choice, drafted: int, accepted: int, draft_steps: int = 0) -> None:
        """Learn from a round that drafted `drafted` tokens in `draft_steps` passes of the skipped
        model: fade all evidence by a round, the profile's priors included (plain steps included,
        so that what a drafter showed long ago weighs less when the policy has stopped trying it),
        then count this round's drafts. An exploring round is charged what it realized: the means
        that judged it can be far off (a draft stopped before its first token costs a pass that no
        mean foresees)."""
        if self.rng is not None and self.costs is not None:
            cost = round_cost(self.costs, choice, drafted, draft_steps)
            self.explore_allowance += self.settings.explore_cost * cost
            if self.exploring is not None:
                rate_by_means, charged = self.exploring
                self.explore_allowance -= max(0.0, cost - (accepted + 1) / rate_by_means) - charged
                self.exploring = None
        if self.settings.discount < 1.0:
            for evidence in self._all_evidence():
                evidence.fade(self.settings.discount)
        # a layer-skip draft that the confidence threshold stopped before its first token cost a
        # pass and gave nothing: it counts as rejected at the first position, or a skip set too
        # unsure to draft would never be shown to lose
        if choice.kind == NGRAM:
            self.ngram_beliefs[choice.match].evidence.record(drafted, accepted)
        elif choice.kind == LAYER_SKIP:
            self.layer_skip_evidence.record(max(drafted, 1), accepted)
        elif choice.kind == NGRAM_LAYER_SKIP:
            k = len(choice.tokens)
            self.ngram_beliefs[choice.match].evidence.record(k, min(accepted, k))
            if accepted >= k:  # the continuation is judged only where the n-grams held
                self.layer_skip_evidence.record(max(drafted - k, 1), accepted - k)

    def remember(self) -> None:
        """Leave this call's evidence in the memory, for the calls after it."""
        if self.memory is None:
            return
        self.memory.layer_skip = self.layer_skip_evidence.counts()
        self.memory.ngram = {n: belief.evidence.counts() for n, belief in self.ngram_beliefs.items()}
        if self.rng is not None:
            self.memory.explore_allowance = self.explore_allowance

    def acceptance(self, drafter: str, match: int = 0) -> list[float]:
        """The posterior mean acceptance by position of a drafter (for reports and tests)."""
        if drafter == LAYER_SKIP:
            return self.layer_skip_belief.mean(self.max_draft_tokens)
        return self.ngram_beliefs[match].mean(self.ngram.max_tokens)


def _opening(positions: int, remembered: AcceptanceCounts | None, fade: float, prior: AcceptanceCounts | None,
             cap: float) -> Evidence:
    """A call's opening evidence: what the memory carries, faded by `fade`, plus the profile's
    prior capped at `cap` drafts per position, so that a few rounds here can overrule it."""
    evidence = Evidence(positions, remembered)
    evidence.fade(fade)
    if prior is not None:
        for i in range(min(positions, len(prior.accepted))):
            a, r = prior.accepted[i], prior.rejected[i]
            scale = min(1.0, cap / (a + r)) if a + r else 0.0
            evidence.accepted[i] += a * scale
            evidence.rejected[i] += r * scale
    return evidence


class ThroughputGuard:
    """A check of the policy against plain decoding by the clock. Each drafting round's loss is its
    seconds minus what plain steps would have taken for the tokens it committed (at the median of
    the recent plain steps). Once `min_rounds` drafting rounds have been timed, drafting is
    suspended when the mean loss of the last `window` rounds exceeds `z` standard errors of it:
    for `backoff` tokens (16 at first, doubling each time up to 512), then allowed again with a
    fresh window, since acceptance drifts within a generation and so does what pays.

    A one-sided test, not a plain comparison of rates: drafting that loses steadily loses about
    the same every round and is caught after `min_rounds`, while drafting whose rounds vary (a
    long accepted draft now and then) must lose by more than that variation. Comparing the rates
    alone suspended drafting that paid about 1.1x on most 64-token calls, on the noise of a few
    rounds; suspending drafting that merely breaks even costs nothing.

    The plain steps it compares with are those the policy takes anyway (nothing to draft), and
    where fewer than `probe_steps` were timed when the guard first has rounds to judge, it asks
    for plain steps then. Probing at the start of every call instead would cost short calls with
    good drafts a tenth of their time (two passes of ~15), and those need no guard."""

    def __init__(self, probe_steps: int = 2, min_rounds: int = 8, window: int = 16, z: float = 1.5,
                 first_backoff: int = 16, max_backoff: int = 512) -> None:
        if not 2 <= min_rounds <= window:
            raise SkipsearchError(f"guard: need 2 <= min_rounds <= window, got {min_rounds} and {window}")
        self.probe_steps, self.min_rounds, self.z = probe_steps, min_rounds, z
        self.backoff, self.max_backoff = first_backoff, max_backoff
        self.plain_times: list[float] = []
        self.rounds: deque[tuple[float, int]] = deque(maxlen=window)  # (seconds, committed tokens)
        self.resume_at = 0  # the token count from which drafting is allowed again
        self.suspensions: list[int] = []  # the token counts at which drafting was suspended

    def allows_drafting(self, new_tokens: int) -> bool:
        if len(self.rounds) >= self.min_rounds and len(self.plain_times) < self.probe_steps:
            return False  # rounds to judge, too few plain steps to judge them by: probe now
        return new_tokens >= self.resume_at

    def plain_step(self, seconds: float) -> None:
        self.plain_times = (self.plain_times + [seconds])[-8:]

    def drafting_round(self, seconds: float, committed: int, new_tokens: int) -> None:
        self.rounds.append((seconds, committed))
        if len(self.rounds) >= self.min_rounds and self.plain_times and self.losing():
            self.suspensions.append(new_tokens)
            self.resume_at = new_tokens + self.backoff
            self.backoff = min(2 * self.backoff, self.max_backoff)
            self.rounds.clear()

    def losing(self) -> bool:
        """Whether the rounds in the window lost time against plain steps, with confidence."""
        plain = median(self.plain_times)
        losses = [seconds - plain * committed for seconds, committed in self.rounds]
        return fmean(losses) > self.z * stdev(losses) / math.sqrt(len(losses))


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
