"""The search's prediction: drafting replayed over the full model's reference continuations.

Replay runs the decoder's rounds (`rounds.run_rounds`, with the same `drafting.DraftPolicy` and
guard) on a backend that needs no model: the n-gram drafter proposes from the same context the
decoder would see, the layer-skip drafter's tokens are judged by the proxy's trace (per
continuation position, the skipped model's top-1 probability and whether its argmax is the
reference token), the verification compares drafts with the reference, and the clock is the
cost model's. Replay commits the reference whatever the rounds drafted, so greedy decoding would
commit the same tokens; a prediction differs from a measurement only through timing.

This module knows nothing about models, tasks or files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from skipsearch.engine.costs import CostModel, relative_costs
from skipsearch.engine.decoding import DecodeSettings, DecodeStats, new_guard
from skipsearch.engine.drafting import (
    AcceptanceCounts,
    DraftPolicy,
    NgramIndex,
    NgramSettings,
    PolicyMemory,
    Priors,
    RelativeCosts,
)
from skipsearch.engine.rounds import run_rounds
from skipsearch.engine.skipping import SkipSet


@dataclass(frozen=True)
class ReplayPrompt:
    """One prompt as the replay sees it: the ids, the full model's greedy continuation, and per
    continuation position the skipped model's (top-1 probability, argmax is right) from the
    proxy (empty when the policy drafts with n-grams only)."""

    prompt_ids: tuple[int, ...]
    continuation: tuple[int, ...]
    trace: tuple[tuple[float, bool], ...] = ()


def ngram_proposals(prompt: ReplayPrompt, ngram: NgramSettings) -> list[tuple[list[int], int]]:
    """The n-gram drafter's proposal after each committed prefix of the continuation (index i:
    after its first i + 1 tokens). Replay commits the continuation whatever the rounds drafted,
    so these are the same for every policy, and replaying many policies computes them once."""
    index = NgramIndex(ngram, prompt.prompt_ids + prompt.continuation[:1])
    proposals = [index.propose()]
    for token in prompt.continuation[1:]:
        index.extend((token,))
        proposals.append(index.propose())
    return proposals


def prompt_costs(costs: CostModel, skip_set: SkipSet,
                 prompts: Sequence[ReplayPrompt]) -> tuple[list[RelativeCosts], list[float]]:
    """Per prompt, the relative costs and the plain step's seconds at the context its rounds see
    on average (the prompt and half its continuation): what `replay_drafting` weighs them by."""
    relative, steps = [], []
    for prompt in prompts:
        here = costs.at_context(len(prompt.prompt_ids) + len(prompt.continuation) // 2)
        relative.append(relative_costs(here, skip_set))
        steps.append(here.plain_step)
    return relative, steps


def measure_priors(prompts: Sequence[ReplayPrompt], layer_skip: bool, ngram: NgramSettings, max_draft_tokens: int,
                   confidence_threshold: float) -> Priors:
    """Acceptance evidence with counts over reference continuations, as if each drafter drafted
    after every committed prefix: the layer-skip draft judged by the proxy's trace (stopping
    where its confidence falls below the threshold), the n-gram draft against the reference,
    counted by its matched length. It says how each drafter does on the task, whatever the
    device; the runtime weighs it against its own costs and what it sees."""
    skip_outcomes: list[tuple[int, int]] = []
    ngram_outcomes: dict[int, list[tuple[int, int]]] = {}
    for prompt in prompts:
        continuation = prompt.continuation
        for position, (proposal, match) in enumerate(ngram_proposals(prompt, ngram)[:len(continuation) - 1]):
            if proposal:
                truth = continuation[position + 1:position + 1 + len(proposal)]
                ngram_outcomes.setdefault(match, []).append((min(len(proposal), len(truth)),
                                                             _leading_matches(proposal, truth)))
            if layer_skip:
                drafted = accepted = 0
                right_so_far = True
                for confidence, right in prompt.trace[position:position + max_draft_tokens]:
                    if confidence < confidence_threshold:
                        break
                    drafted += 1
                    right_so_far = right_so_far and right
                    accepted += right_so_far
                if drafted:
                    skip_outcomes.append((drafted, accepted))
    return Priors(
        layer_skip=AcceptanceCounts.of_drafts(skip_outcomes, max_draft_tokens) if layer_skip else None,
        ngram=tuple((n, AcceptanceCounts.of_drafts(outcomes, ngram.max_tokens))
                    for n, outcomes in sorted(ngram_outcomes.items())))


def _leading_matches(draft: Sequence[int], truth: Sequence[int]) -> int:
    accepted = 0
    while accepted < min(len(draft), len(truth)) and draft[accepted] == truth[accepted]:
        accepted += 1
    return accepted


_WRONG = -1  # a drafted token the proxy says is not the reference's: no reference token equals it


class _PredictedClock:
    """The replay's clock (`rounds.Clock`): the seconds the cost model predicts so far."""

    def __init__(self, replay: "_Replay"):
        self.replay = replay

    def mark(self) -> float:
        return self.replay.elapsed

    now = mark

    def seconds(self, start: float, end: float) -> float:
        return end - start


class _Replay:
    """One prompt's side of the rounds (`rounds.RoundBackend`), its clock the cost model's."""

    def __init__(self, prompt: ReplayPrompt, settings: DecodeSettings, costs: RelativeCosts, weight: float,
                 proposals: Sequence[tuple[list[int], int]] | None):
        self.prompt, self.settings, self.costs, self.weight = prompt, settings, costs, weight
        self.proposals = proposals
        self.committed = 1  # the prefill's token
        self.elapsed = 0.0
        self.done = len(prompt.continuation) <= 1
        self.clock = _PredictedClock(self)

    @property
    def new_tokens(self) -> int:
        return self.committed

    def budget(self) -> int:
        return min(self.settings.longest_draft, len(self.prompt.continuation) - self.committed - 1)

    def proposal(self):
        return self.proposals[self.committed - 1] if self.proposals is not None else ([], 0)

    def _commit(self, tokens: int) -> None:
        self.committed += tokens
        self.done = self.committed >= len(self.prompt.continuation)

    def plain(self) -> None:
        self.elapsed += self.weight * self.costs.verify_cost(1)
        self._commit(1)

    def point_masses(self, tokens):
        return []

    def draft(self, after, budget: int):
        # trace[i] is the draft after continuation[i]: the pending token is committed - 1, and
        # the skipped model drafts on after the n-gram tokens
        first = self.committed - 1 + len(after)
        tokens, steps = [], 0
        for offset, (confidence, right) in enumerate(self.prompt.trace[first:first + budget]):
            steps += 1
            if confidence < self.settings.confidence_threshold:
                break
            tokens.append(self.prompt.continuation[first + 1 + offset] if right else _WRONG)
        self.elapsed += self.weight * steps * self.costs.draft_step
        if len(after) and steps:  # its first pass read the pending token and the n-gram tokens
            self.elapsed += self.weight * (self.costs.draft_pass_cost(len(after) + 1) - self.costs.draft_step)
        return tokens, [], steps

    def verify(self, drafts, draft_probs) -> int:
        accepted = _leading_matches(drafts, self.prompt.continuation[self.committed:self.committed + len(drafts)])
        self.elapsed += self.weight * self.costs.verify_cost(len(drafts) + 1)
        self._commit(min(accepted + 1, len(self.prompt.continuation) - self.committed))
        return accepted


def replay_drafting(prompts: Sequence[ReplayPrompt], settings: DecodeSettings, layer_skip: bool,
                    costs: RelativeCosts | Sequence[RelativeCosts], proposals: Sequence[list] | None = None,
                    plain_steps: Sequence[float] | None = None,
                    memory: PolicyMemory | None = None) -> tuple[DecodeStats, float]:
    """Replay the decoder's rounds over reference continuations: (the counts decoding would
    make, the predicted speedup over plain decoding by `costs`, prefill left out).

    `costs` is one for every prompt, or one per prompt (`prompt_costs`) with `plain_steps`, each
    prompt's plain step in seconds, so that long prompts weigh as they take. The policy decides
    with `settings.costs`, or with these costs where the settings say "here". `proposals` (per
    prompt, from `ngram_proposals` with the settings' n-grams) saves recomputing them; `memory`
    carries the policy's evidence from prompt to prompt as a runtime carries it from call to call.
    """
    stats, cost, plain = DecodeStats(), 0.0, 0.0
    for number, prompt in enumerate(prompts):
        relative = costs if isinstance(costs, RelativeCosts) else costs[number]
        weight = plain_steps[number] if plain_steps is not None else 1.0
        proposed = None
        if settings.ngram is not None:
            proposed = proposals[number] if proposals is not None else ngram_proposals(prompt, settings.ngram)
        deciding = relative if settings.costs == "here" else settings.costs
        policy = DraftPolicy(deciding, settings.policy, settings.ngram, layer_skip, settings.max_draft_tokens,
                             priors=settings.priors, memory=memory)
        backend = _Replay(prompt, settings, relative, weight, proposed)
        run_rounds(backend, policy, new_guard(settings), stats, drafts=layer_skip or settings.ngram is not None)
        policy.remember()
        cost += backend.elapsed
        plain += weight * max(len(prompt.continuation) - 1, 0)
    return stats, (plain / cost if cost else 1.0)



def replay_fixed_drafts(prompts: Sequence[ReplayPrompt], max_draft_tokens: int,
                        confidence_threshold: float) -> DecodeStats:
    """The counts of an engine's draft model over reference continuations: every round drafts up
    to `max_draft_tokens`, stopping below `confidence_threshold` (llama.cpp's `--spec-draft-n-max`
    and `--spec-draft-p-min`), with no choice between drafters and no guard. With traces from an own draft
    cache (`ProxyScorer(..., draft_cache="own")`) it predicts the acceptance the engine reports."""
    settings = DecodeSettings(max_new_tokens=max(len(p.continuation) for p in prompts),
                              max_draft_tokens=max_draft_tokens, confidence_threshold=confidence_threshold,
                              fallback=False, ngram=None, costs=None)
    unit = RelativeCosts(verify=tuple(1.0 for _ in range(max_draft_tokens + 1)), draft_step=1.0)
    stats, _ = replay_drafting(prompts, settings, layer_skip=True, costs=unit)
    return stats
