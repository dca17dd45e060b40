"""Local search around the best skip set, run through Optuna's trial queue.

A sampler over one value per sublayer (56 for SmolLM2) proposes the same top-k sets again
and again once it has settled, which costs trials and finds nothing. Skip sets have a
natural neighbourhood instead: swap one skipped sublayer for one that runs, or (with a free
count) add or drop one. The single-skip importance ranking says which moves are promising:
dropping the member that hurts most when skipped alone, taking in the outsider that hurts
least. `LocalSearch` enqueues the most promising untried neighbours of the study's best set
whenever the sampler has just had its turn, so sampled and local trials alternate and
every worker sharing the study takes part.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, zip_longest
from typing import Sequence

import optuna

from skipsearch.engine.skipping import SkipSet
from skipsearch.search.study import best_trials, enqueue_warm_starts

Sublayer = tuple[str, int]
LOCAL_ATTR = "local_search"


def neighbours(skip_set: SkipSet, ranking: dict[Sublayer, float], eligible: Sequence[Sublayer],
               fixed_count: bool) -> list[SkipSet]:
    """Skip sets one move away, the most promising first.

    `ranking` maps each eligible sublayer to the proxy score with it skipped alone (higher:
    less important). Swaps are ordered by the score gained in that ranking; with a free count,
    dropping the most important member and adding the least important outsider come in turn
    with the swaps.
    """
    members = set(skip_set.sublayers)
    inside = sorted((s for s in eligible if s in members), key=lambda s: ranking.get(s, 0.0))
    outside = sorted((s for s in eligible if s not in members), key=lambda s: -ranking.get(s, 0.0))
    swaps = sorted(((m, n) for m in inside for n in outside),
                   key=lambda pair: ranking.get(pair[0], 0.0) - ranking.get(pair[1], 0.0))
    moves: list[tuple[Sublayer | None, Sublayer | None]] = list(swaps)
    if not fixed_count:
        drops = [(m, None) for m in inside] if len(inside) > 1 else []
        adds = [(None, n) for n in outside]
        moves = [m for m in chain.from_iterable(zip_longest(drops, adds, swaps)) if m is not None]
    result = []
    for out, into in moves:
        chosen = (members - {out}) | ({into} if into is not None else set())
        result.append(SkipSet.from_sublayers(sorted(chosen)))
    return result


@dataclass
class LocalSearch:
    """An Optuna callback: after each sampled trial, enqueue `batch` untried neighbours of the best set."""

    eligible: Sequence[Sublayer]
    ranking: dict[Sublayer, float]
    objective: str
    fixed_count: bool
    batch: int = 2
    target: int | None = None  # the study's total of complete trials: nothing is left queued beyond it

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get(LOCAL_ATTR):
            return  # the sampler takes the next turn
        trials = study.get_trials(deepcopy=False)
        if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            return
        room = self.batch
        if self.target is not None:
            busy = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING) for t in trials)
            room = min(room, self.target - busy)
        best = best_trials(study, self.objective, 1)
        if not best or room <= 0:
            return
        tried = {SkipSet.from_attrs(t.user_attrs) for t in trials}
        fresh = [s for s in neighbours(SkipSet.from_attrs(best[0].user_attrs), self.ranking, self.eligible,
                                       self.fixed_count) if s not in tried]
        enqueue_warm_starts(study, fresh[:room], self.eligible, user_attrs={LOCAL_ATTR: True})
