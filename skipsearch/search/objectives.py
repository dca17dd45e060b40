"""What each search objective means, in one table: the Optuna directions, the values a trial
reports, how finished trials rank, what re-scoring keeps, and what a report calls the value.

- matchness: proxy matchness at exactly k skipped sublayers (SWIFT's setting);
- speedup: the cost model's predicted speedup, replaying drafting over the proxy's per-position
  outcomes at the best draft length and confidence threshold (the default);
- pareto: draft cost relative to the full model (minimised) against matchness (maximised).

The names users may write are `config.studies.OBJECTIVES` (the config layer validates them); this
table gives each its meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import optuna

from skipsearch.errors import SkipsearchError

Trial = optuna.trial.FrozenTrial


@dataclass(frozen=True)
class Objective:
    name: str
    directions: tuple[str, ...]  # Optuna's study directions
    label: str  # what a report calls the value it plots
    fixed_count: bool  # every candidate skips exactly the study's budget k (else the count is free)
    # the trial's value(s) from a `study.Evaluation`
    values: Callable[[object], float | tuple[float, float]]
    # which measured quantity picks the best re-scored skip set (a `runner.Measurement` field)
    rescore_key: str

    def value(self, trial: Trial) -> float:
        """The one number a history plots, higher is better: matchness for pareto."""
        return trial.values[1] if len(self.directions) == 2 else trial.values[0]

    def ranked(self, trials: Sequence[Trial]) -> list[Trial]:
        """Best first: by value; for pareto by Pareto front (fronts peeled off in turn), each
        front by matchness."""
        if len(self.directions) == 1:
            return sorted(trials, key=lambda t: -t.values[0])
        remaining, ranked = list(trials), []
        while remaining:
            flags = front_flags([t.values[0] for t in remaining], [t.values[1] for t in remaining])
            ranked += sorted((t for t, on in zip(remaining, flags) if on), key=lambda t: -t.values[1])
            remaining = [t for t, on in zip(remaining, flags) if not on]
        return ranked


def front_flags(costs: Sequence[float], matches: Sequence[float]) -> list[bool]:
    """Non-dominated points for (minimise cost, maximise matchness); equal points are all kept."""
    flags = [False] * len(costs)
    best, best_cost = -math.inf, None
    for i in sorted(range(len(costs)), key=lambda i: (costs[i], -matches[i])):
        if matches[i] > best or (matches[i] == best and costs[i] == best_cost):
            flags[i] = True
            best, best_cost = matches[i], costs[i]
    return flags


OBJECTIVES = {o.name: o for o in (
    Objective("matchness", ("maximize",), "matchness", fixed_count=True,
              values=lambda e: e.score.matchness, rescore_key="matchness"),
    Objective("speedup", ("maximize",), "predicted speedup", fixed_count=False,
              values=lambda e: e.predicted_speedup, rescore_key="decode_speedup"),
    Objective("pareto", ("minimize", "maximize"), "matchness", fixed_count=False,
              values=lambda e: (e.draft_cost, e.score.matchness), rescore_key="decode_speedup"),
)}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise SkipsearchError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
