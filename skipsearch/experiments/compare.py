"""The default search against the anchor papers' search methods, on one proxy, one skip
count, one evaluation budget and one seed.

Each method starts with an empty score memo, so evaluations and wall time are its own.
The default search spends its budget on the importance ranking (one evaluation per
eligible sublayer) and warm starts first, then Optuna trials (objective matchness at the
fixed count, as the baselines use); a budget below the eligible count is spent on the
ranking alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna

from skipsearch.engine.skipping import SkipSet
from skipsearch.search.baselines import BASELINES, MethodResult
from skipsearch.search.draft_grid import best_draft_settings
from skipsearch.search.neighbours import LocalSearch
from skipsearch.search.runner import DP_METHODS, StudySetup, dp_method, importance, measure, warm_start_sets
from skipsearch.search.scoring import full_forward_seconds
from skipsearch.search.study import (
    SkipObjective,
    best_trials,
    enqueue_warm_starts,
    make_sampler,
    open_study,
)


@dataclass
class CompareRow:
    method: str
    evaluations: int
    # the dynamic programs' block forwards as the proxy evaluations they are worth at least
    block_forwards_as_evaluations: float
    wall_time_s: float
    search_matchness: float
    heldout_matchness: float
    heldout_acceptance: float
    predicted_speedup: float
    decode_speedup: float  # measured on the held-out prompts, against skipsearch's plain decoder
    skip: str
    # held-out outputs against plain decoding (see `lossless`)
    identical: int = 0
    tie_flips: int = 0
    errors: int = 0


class DefaultSearch:
    """skipsearch's own search at fixed k (objective matchness), run to a budget of proxy
    evaluations and continued to a larger one: `default_search`, and the selection-rules tool
    that judges several budgets' picks from one run."""

    def __init__(self, setup: StudySetup, seed: int, sampler: str):
        self.setup = setup
        self.study = open_study("compare", optuna.storages.InMemoryStorage(), "matchness",
                                make_sampler(sampler, seed, "matchness"))
        ranking = importance(setup, self.study, progress=False)
        enqueue_warm_starts(self.study, warm_start_sets(setup, ranking), setup.eligible)
        self.objective = SkipObjective(setup.scorer.score, setup.costs, setup.eligible, "matchness", setup.k,
                                       setup.config.draft.max_draft_tokens, setup.thresholds)
        self.local = LocalSearch(setup.eligible, dict(ranking), "matchness", fixed_count=True)
        self.history: list[float] = []  # the best value after each trial

    def run_to(self, budget: int) -> None:
        """Trials until the scorer has spent `budget` evaluations (repeated sets cost none, so it
        gives up after 3 x `budget` trials)."""
        for _ in range(3 * budget):
            if self.setup.scorer.evaluations >= budget:
                break
            self.study.optimize(self.objective, n_trials=1, callbacks=[self.local])
            self.history.append(max(t.value for t in self.study.trials if t.value is not None))

    def best(self) -> SkipSet:
        return SkipSet.from_attrs(best_trials(self.study, "matchness", 1)[0].user_attrs)


def default_search(setup: StudySetup, budget: int, seed: int, sampler: str) -> MethodResult:
    """skipsearch's own search at fixed k within `budget` proxy evaluations."""
    started = time.perf_counter()
    search = DefaultSearch(setup, seed, sampler)
    search.run_to(budget)
    skip_set = search.best()
    return MethodResult("skipsearch", skip_set, setup.scorer.score(skip_set), setup.scorer.evaluations,
                        time.perf_counter() - started, search.history)


@dataclass
class Comparison:
    rows: list[CompareRow]
    proxy_seconds: float  # mean proxy evaluation over all methods
    full_forward_seconds: float  # a plain full forward over the same prompts + continuations, timed alongside

    @property
    def proxy_cost_ratio(self) -> float:
        return self.proxy_seconds / self.full_forward_seconds if self.full_forward_seconds else 0.0


def compare_methods(setup: StudySetup, budget: int, seed: int, sampler: str = "tpe",
                    methods: list[str] | None = None, on_method=None, on_measured=None) -> Comparison:
    """Time the costs on this machine, run every method from a clean memo, then re-score each
    best set on held-out prompts."""
    setup.time_costs()
    names = methods or ["skipsearch", *BASELINES, *DP_METHODS]
    results = []
    proxy_seconds, full_seconds, evaluations = 0.0, 0.0, 0
    equivalents: dict[str, float] = {}  # the dynamic programs' block forwards as proxy evaluations
    for name in names:
        setup.scorer.forget()
        if name == "skipsearch":
            result = default_search(setup, budget, seed, sampler)
        elif name in DP_METHODS:
            result = dp_method(setup, name, setup.k)
        else:
            result = BASELINES[name](setup.scorer.score, setup.eligible, setup.k, budget, seed)
        proxy_seconds, evaluations = proxy_seconds + setup.scorer.seconds, evaluations + setup.scorer.evaluations
        equivalents[name] = round(setup.scorer.block_forwards / (2 * len(setup.scorer.layers)), 1)
        # a full forward timed after each method, weighted by its evaluations: the machine's load
        # drifts over a long comparison, and both sides of the ratio should see the same drift
        full_seconds += setup.scorer.evaluations * full_forward_seconds(setup.loaded.model, setup.search_refs,
                                                                        repeats=1)
        if on_method is not None:
            on_method(name)
        results.append(result)
    rows = []
    for result in results:
        heldout = setup.heldout_scorer.score(result.best)
        # draft settings chosen as the search chooses them: on the search prompts
        drafting, _, _ = best_draft_settings(setup.costs, result.best, setup.scorer.score(result.best).prompts,
                                             setup.config.draft.max_draft_tokens, setup.thresholds)
        measured = measure(setup, result.best, drafting.max_draft_tokens, drafting.confidence_threshold)
        rows.append(CompareRow(result.method, result.evaluations, equivalents[result.method], round(result.seconds, 2),
                               round(result.best_score.matchness, 4), round(heldout.matchness, 4),
                               round(measured.acceptance_rate, 4), round(measured.predicted_speedup, 3),
                               round(measured.decode_speedup, 3), result.best.describe(),
                               measured.lossless["identical"], measured.lossless["tie_flip"],
                               measured.lossless["error"]))
        if on_measured is not None:
            on_measured(result.method)
    return Comparison(rows, proxy_seconds / max(evaluations, 1), full_seconds / max(evaluations, 1))
