"""The speculative round, written once: choose, draft, verify, commit, count, learn, guard.

`run_rounds` drives a `RoundBackend` — what runs the models (or, in the search's replay, what
reads the proxy's outcomes and the reference tokens) — with a `drafting.DraftPolicy` and a
`drafting.ThroughputGuard`. Skipsearch's decoder, `hf.self_speculative` and the replay differ only
in their backends: how a plain step, a draft and a verification are done, how tokens are
committed and when generation is over, and their clock (the device's, or the cost model's). So
the rounds the replay predicts and the rounds the decoders run can differ only through timing.

Rounds are timed without waiting for the device: the per-phase times in the stats are read from
marks after the loop; the guard alone, which decides inside it, takes one waiting clock read a round.

This module knows nothing about models or tensors; it imports the drafting policy only.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from skipsearch.engine.drafting import NGRAM, PLAIN, Choice, DraftPolicy, ThroughputGuard, count_round


class Clock(Protocol):
    """What rounds are timed by, in seconds (or, in replay, predicted seconds): `timing.Timeline`."""

    def mark(self) -> Any:
        """A point in time, taken without waiting for the device."""

    def now(self) -> float:
        """The time once the device has finished its queued work."""

    def seconds(self, start: Any, end: Any) -> float:
        """The time from mark `start` to mark `end` (may wait for the device: read after the loop)."""


class RoundBackend(Protocol):
    done: bool  # generation is over (set by the commits)
    new_tokens: int  # tokens committed so far
    clock: Clock

    def budget(self) -> int:
        """The most tokens this round may draft."""

    def proposal(self) -> tuple[Sequence[int], int]:
        """The n-gram drafter's proposal after the committed tokens and its matched length; ([], 0) if none."""

    def plain(self) -> None:
        """One full-model step over the pending token, committing the token it chooses."""

    def point_masses(self, tokens: Sequence[int]) -> list[Any]:
        """What a sampled verification takes as the draft distribution of tokens proposed for certain."""

    def draft(self, after: Sequence[int], budget: int) -> tuple[list[int], list[Any], int]:
        """The skipped model's draft of up to `budget` tokens after the pending token and `after`:
        (tokens, their draft distributions when sampling, forward passes taken)."""

    def verify(self, drafts: Sequence[int], draft_probs: Sequence[Any]) -> int:
        """The full model's pass over the pending token and `drafts`; commits the accepted
        drafts and the full model's own next token; returns how many drafts were accepted."""


def run_rounds(backend: RoundBackend, policy: DraftPolicy, guard: ThroughputGuard | None, stats,
               drafts: bool) -> None:
    """Run rounds until `backend.done`, counting them in `stats` (a `decoding.DecodeStats`).
    `drafts`: whether there is anything to draft with; `guard` None keeps drafting whatever the
    clock says."""
    clock = backend.clock
    spans: list[tuple[str, Any, Any]] = []  # (stats field, start mark, end mark): read after the loop
    last = clock.mark()
    # the guard decides inside the loop, so it cannot wait for events to be read at the end: one
    # clock read a round, waiting only for the model's devices (none at all without a guard)
    guard_last = clock.now() if guard is not None else 0.0
    while not backend.done:
        choice = Choice(PLAIN)
        if drafts and (guard is None or guard.allows_drafting(backend.new_tokens)):
            proposal, match = backend.proposal()
            choice = policy.choose(backend.budget(), proposal, match)
        if choice.kind == PLAIN:
            backend.plain()
            end = clock.mark()
            spans.append(("plain_time_s", last, end))
            count_round(stats, choice, 0, 0, 0)
            policy.record(choice, 0, 0)
            if guard is not None:
                now = clock.now()
                guard.plain_step(now - guard_last)
                guard_last = now
            last = end
            continue

        drafted = list(choice.tokens)  # an n-gram draft, alone or to be continued
        draft_probs = backend.point_masses(drafted)
        steps = 0
        if choice.kind != NGRAM:
            more, more_probs, steps = backend.draft(drafted, choice.draft_tokens)
            drafted, draft_probs = drafted + more, draft_probs + more_probs
        verify_start = clock.mark()
        accepted = backend.verify(drafted, draft_probs)
        end = clock.mark()

        spans += [("draft_time_s", last, verify_start), ("verify_time_s", verify_start, end)]
        count_round(stats, choice, len(drafted), accepted, steps)
        policy.record(choice, len(drafted), accepted, steps)
        if guard is not None:
            now = clock.now()
            guard.drafting_round(now - guard_last, accepted + 1, backend.new_tokens)
            guard_last = now
            if guard.suspensions and guard.suspensions[-1] == backend.new_tokens and stats.fallback_at_token is None:
                stats.fell_back, stats.fallback_at_token = True, backend.new_tokens
        last = end
    for name, start, end in spans:
        setattr(stats, name, getattr(stats, name) + clock.seconds(start, end))
