"""The anchor papers' skip-set search methods, run on the same proxy at a fixed skip count k.

Every method maximises proxy matchness over sets of exactly k sublayers (SWIFT's setting)
and returns a `MethodResult`; `evaluations` counts the distinct skip sets a method asked
the scorer for (a repeated proposal is free but still uses up a step of the schedule).

- `swift_search`: SWIFT (arXiv 2410.06916) — start from evenly spaced layers, random
  k-subsets, every `bo_every`-th step a Bayesian-optimisation (UCB) suggestion.
- `selfsd_search`: Draft & Verify / Self-SD (Zhang et al. 2023) — offline Bayesian
  optimisation over one value in [0, 1] per sublayer at every step.
- `greedy_forward_selection`: add the sublayer that keeps matchness highest, one at a time.
- `evenly_spaced_layers`: Unified Layer Skipping (arXiv 2404.06954) — whole layers,
  evenly spaced, no search.
- `early_exit_prefix`: LayerSkip (arXiv 2404.16710) — skip everything above an exit point.
- `importance_ranking`: each sublayer skipped alone; a warm start and a heat map.

bayes_opt's suggest() with its defaults (10,000 random samples, then 10 L-BFGS-B runs with
finite-difference gradients, 5 GP-fit restarts) takes seconds per call in 56 dimensions and
grows with the points registered, which would make the Bayesian baselines slower than the
proxy evaluations they save. Here the acquisition is maximised over `acquisition_samples`
random points refined by `acquisition_starts` L-BFGS-B run(s), with 1 GP-fit restart, and the
GP sees at most `gp_points` observations (the best half and the most recent half). Self-SD
suggests every step, so its window is 100; SWIFT suggests every 25th step and keeps all
points up to 300, i.e. exactly as prescribed for its usual budgets.

This module knows nothing about models, references, tasks or storage: it only calls
`score` (in practice `ProxyScorer.score`) on skip sets.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from bayes_opt import BayesianOptimization, acquisition

from skipsearch.engine.skipping import SkipSet, param_name
from skipsearch.errors import SkipsearchError
from skipsearch.search.scoring import ProxyScore

log = logging.getLogger(__name__)

Sublayer = tuple[str, int]
Score = Callable[[SkipSet], ProxyScore]


@dataclass
class MethodResult:
    method: str
    best: SkipSet
    best_score: ProxyScore
    evaluations: int  # proxy evaluations this method asked for (distinct skip sets)
    seconds: float  # wall time
    # best matchness of a k-sublayer set so far, after each evaluation (0.0 until one is scored:
    # greedy scores smaller sets first)
    history: list[float]


class _Tracker:
    """Memoises `score`, counts distinct evaluations, keeps the best k-set (only improvements replace it)."""

    def __init__(self, score: Score, method: str, k: int):
        self._score, self.method, self.k = score, method, k
        self.started = time.perf_counter()
        self.memo: dict[SkipSet, ProxyScore] = {}
        self.history: list[float] = []
        self.best: SkipSet | None = None
        self.best_score: ProxyScore | None = None

    @property
    def evaluations(self) -> int:
        return len(self.memo)

    def __call__(self, skip_set: SkipSet) -> ProxyScore:
        if skip_set in self.memo:
            return self.memo[skip_set]
        result = self.memo[skip_set] = self._score(skip_set)
        if len(skip_set) == self.k and (self.best_score is None or result.matchness > self.best_score.matchness):
            self.best, self.best_score = skip_set, result
        self.history.append(self.best_score.matchness if self.best_score else 0.0)
        return result

    def result(self) -> MethodResult:
        return MethodResult(self.method, self.best, self.best_score, self.evaluations,
                            time.perf_counter() - self.started, list(self.history))


def _check(eligible: Sequence[Sublayer], k: int, budget: int | None = 1) -> None:
    if not 1 <= k <= len(eligible):
        raise SkipsearchError(f"k must be between 1 and the {len(eligible)} eligible sublayers, got {k}")
    if budget is not None and budget < 1:
        raise SkipsearchError(f"budget must be >= 1 proxy evaluation, got {budget}")


# --- Bayesian optimisation over one value in [0, 1] per eligible sublayer ---------------------------


class _CappedUCB(acquisition.UpperConfidenceBound):
    """UCB whose acquisition maximiser uses `samples` random points and `starts` L-BFGS-B runs."""

    def __init__(self, kappa: float, samples: int, starts: int):
        super().__init__(kappa=kappa)
        self.samples, self.starts = samples, starts

    def suggest(self, gp, target_space, n_random=None, n_smart=None, fit_gp=True, random_state=None):
        return super().suggest(gp, target_space, n_random=self.samples, n_smart=self.starts,
                               fit_gp=fit_gp, random_state=random_state)


def _bo_suggest(points: list[np.ndarray], targets: list[float], seed: int, kappa: float, gp_points: int,
                samples: int, starts: int) -> np.ndarray:
    """A UCB suggestion from a GP fitted on at most `gp_points` observations: the best half, then the latest."""
    best = sorted(range(len(points)), key=lambda i: -targets[i])[: gp_points // 2]
    recent = range(max(0, len(points) - (gp_points - len(best))), len(points))
    names = [f"s{i:03d}" for i in range(len(points[0]))]
    optimizer = BayesianOptimization(
        f=None,
        pbounds={name: (0.0, 1.0) for name in names},
        acquisition_function=_CappedUCB(kappa, samples, starts),
        random_state=seed % 2**32,
        allow_duplicate_points=True,
        verbose=0,
    )
    optimizer.set_gp_params(n_restarts_optimizer=1)
    for i in sorted(set(best) | set(recent)):
        optimizer.register(params=dict(zip(names, map(float, points[i]))), target=targets[i])
    suggestion = optimizer.suggest()
    return np.array([suggestion[name] for name in names], dtype=float)


def _top_k(values: np.ndarray, eligible: Sequence[Sublayer], k: int) -> SkipSet:
    """Decode a point: skip the k sublayers with the highest values (ties by the order of `eligible`)."""
    return SkipSet.from_params({param_name(s): float(v) for s, v in zip(eligible, values)}, eligible, k)


def _encode(skip_set: SkipSet, eligible: Sequence[Sublayer]) -> np.ndarray:
    return np.array(list(skip_set.to_params(eligible).values()))


def _step_cap(budget: int, eligible: Sequence[Sublayer], k: int) -> tuple[int, int]:
    """(evaluations to aim for, steps allowed).

    Repeated proposals cost a step but no evaluation, so the loop also ends after 3 x budget
    steps, or once every k-subset is scored: a search stuck on repeats still returns.
    """
    return min(budget, math.comb(len(eligible), k)), 3 * budget


# --- the methods -------------------------------------------------------------------------------------


def swift_search(score: Score, eligible: Sequence[Sublayer], k: int, budget: int, seed: int,
                 bo_every: int = 25, kappa: float = 2.5, stop_at: float | None = 0.95, gp_points: int = 300,
                 acquisition_samples: int = 10_000, acquisition_starts: int = 1) -> MethodResult:
    """SWIFT's schedule: evenly spaced start, random k-subsets, every `bo_every`-th step a UCB suggestion.

    The GP is fitted on the scored sets, encoded 1.0 for skipped sublayers and 0.0 otherwise
    (all of them up to `gp_points`; beyond that the best half and the most recent half); a
    suggestion is decoded as its top-k values. Stops after `budget` distinct evaluations,
    or once matchness reaches `stop_at` (SWIFT uses 0.93–0.95; None never stops early).
    """
    _check(eligible, k, budget)
    track, rng = _Tracker(score, "swift", k), random.Random(seed)
    target, max_steps = _step_cap(budget, eligible, k)
    points: list[np.ndarray] = []
    targets: list[float] = []

    def evaluate(skip_set: SkipSet) -> None:
        if skip_set not in track.memo:
            targets.append(track(skip_set).matchness)
            points.append(_encode(skip_set, eligible))

    evaluate(evenly_spaced(eligible, k))
    step = 0
    while track.evaluations < target and step < max_steps:
        if stop_at is not None and track.best_score.matchness >= stop_at:
            break
        step += 1
        if step % bo_every == 0:
            point = _bo_suggest(points, targets, seed * 1_000_003 + step, kappa, gp_points,
                                acquisition_samples, acquisition_starts)
            candidate = _top_k(point, eligible, k)
            log.debug("swift step %d: bayes_opt suggests %s", step, candidate.describe())
        else:
            candidate = SkipSet.from_sublayers(rng.sample(list(eligible), k))
        evaluate(candidate)
    return track.result()


def selfsd_search(score: Score, eligible: Sequence[Sublayer], k: int, budget: int, seed: int,
                  initial_points: int = 10, kappa: float = 2.576, gp_points: int = 100,
                  acquisition_samples: int = 10_000, acquisition_starts: int = 1) -> MethodResult:
    """Self-SD's offline Bayesian optimisation: one value in [0, 1] per sublayer, a suggestion every step.

    Self-SD skips the sublayers whose value exceeds 0.5, with a free count; at a fixed count
    k the equivalent rule is to skip the k highest values. The first `initial_points` points
    are uniform random (the initial design). Each later suggestion comes from a GP fitted on
    at most `gp_points` observations — the best half and the most recent half — so the cost
    per step stays bounded however long the search runs. A suggestion that decodes to a set
    already scored is registered with its known matchness at no cost. Self-SD's objective
    was measured tokens/s; here, as for every method in this module, it is proxy matchness.
    """
    _check(eligible, k, budget)
    track, rng = _Tracker(score, "selfsd", k), np.random.default_rng(seed)
    target, max_steps = _step_cap(budget, eligible, k)
    points: list[np.ndarray] = []
    targets: list[float] = []
    for step in range(max_steps):
        if track.evaluations >= target:
            break
        if step < initial_points:
            point = rng.random(len(eligible))
        else:
            point = _bo_suggest(points, targets, seed * 1_000_003 + step, kappa, gp_points,
                                acquisition_samples, acquisition_starts)
        points.append(point)
        targets.append(track(_top_k(point, eligible, k)).matchness)
    return track.result()


def greedy_forward_selection(score: Score, eligible: Sequence[Sublayer], k: int,
                             budget: int | None = None) -> MethodResult:
    """Start empty; k times add the sublayer whose addition keeps matchness highest (ties: `eligible` order).

    Costs n + (n-1) + … + (n-k+1) evaluations for n eligible sublayers. If `budget` runs
    out first, the last evaluation is kept for the completed set: the open slots are filled
    from the current round's ranking (then the previous round's), so the result still has
    exactly k sublayers and compares fairly with the other methods.
    """
    _check(eligible, k, budget)
    track = _Tracker(score, "greedy", k)
    chosen: list[Sublayer] = []
    previous = list(eligible)  # the remaining sublayers, best first by the last complete round
    while len(chosen) < k:
        remaining = [s for s in eligible if s not in chosen]
        needed = sum(len(remaining) - i for i in range(k - len(chosen)))
        scores: dict[Sublayer, float] = {}
        for candidate in remaining:
            if budget is not None and budget - track.evaluations <= 1 and needed > 1:
                fill = sorted(scores, key=lambda s: -scores[s]) + [s for s in previous if s not in scores]
                log.debug("greedy: budget exhausted after %d of %d rounds", len(chosen), k)
                track(SkipSet.from_sublayers(chosen + fill[: k - len(chosen)]))
                return track.result()
            scores[candidate] = track(SkipSet.from_sublayers(chosen + [candidate])).matchness
            needed -= 1
        previous = sorted(remaining, key=lambda s: -scores[s])  # stable: ties keep the order of eligible
        chosen.append(previous.pop(0))
    return track.result()  # the best k-set scored is `chosen`: the last round's first-best


def evenly_spaced(eligible: Sequence[Sublayer], k: int) -> SkipSet:
    """Whole layers evenly spaced over the eligible layers: ceil(k/2) layers when both blocks are eligible.

    Layer j of m is the eligible layer at offset floor((j + 0.5)·N/m) of N, so m = N/2 gives
    every other layer. If k is odd, the last chosen layer keeps its MLP (only its attention
    is skipped). Layers with one eligible block contribute one sublayer; more layers are
    then taken so that the set still has k sublayers.
    """
    _check(eligible, k)
    layers = sorted({layer for _, layer in eligible})
    for m in range(math.ceil(k / 2), len(layers) + 1):
        chosen = [layers[math.floor((j + 0.5) * len(layers) / m)] for j in range(m)]
        sublayers = [s for layer in chosen for s in eligible if s[1] == layer]
        if len(sublayers) >= k:
            break
    # drop the surplus from the top: MLP blocks of the last chosen layers first
    sublayers.sort(key=lambda s: (s[1], s[0] == "mlp"))
    return SkipSet.from_sublayers(sublayers[:k])


def evenly_spaced_layers(score: Score, eligible: Sequence[Sublayer], k: int) -> MethodResult:
    """Unified Layer Skipping's static rule (no search): `evenly_spaced`, scored once."""
    track = _Tracker(score, "evenly-spaced", k)
    track(evenly_spaced(eligible, k))
    return track.result()


def early_exit_prefix(score: Score, eligible: Sequence[Sublayer], k: int) -> MethodResult:
    """LayerSkip's family: skip the k highest eligible sublayers, i.e. exit early; scored once.

    Within a layer the MLP (the later block) goes first, so an odd k exits after the
    lowest chosen layer's attention.
    """
    _check(eligible, k)
    top = sorted(eligible, key=lambda s: (s[1], s[0] == "mlp"), reverse=True)[:k]
    track = _Tracker(score, "early-exit", k)
    track(SkipSet.from_sublayers(top))
    return track.result()


def importance_ranking(score: Score, eligible: Sequence[Sublayer]) -> list[tuple[Sublayer, float]]:
    """Each sublayer skipped alone: (sublayer, matchness), most important (lowest matchness) first.

    Ties keep the order of `eligible`.
    """
    scored = [(s, score(SkipSet.from_sublayers([s])).matchness) for s in eligible]
    return sorted(scored, key=lambda item: item[1])


def least_important(ranking: Sequence[tuple[Sublayer, float]], k: int) -> SkipSet:
    """The k sublayers whose removal alone hurts matchness least."""
    if not 0 <= k <= len(ranking):
        raise SkipsearchError(f"k must be between 0 and the {len(ranking)} ranked sublayers, got {k}")
    return SkipSet.from_sublayers([s for s, _ in ranking[len(ranking) - k:]])


BASELINES: dict[str, Callable[[Score, Sequence[Sublayer], int, int, int], MethodResult]] = {
    "swift": lambda score, eligible, k, budget, seed: swift_search(score, eligible, k, budget, seed),
    "selfsd": lambda score, eligible, k, budget, seed: selfsd_search(score, eligible, k, budget, seed),
    "greedy": lambda score, eligible, k, budget, seed: greedy_forward_selection(score, eligible, k, budget),
    "evenly-spaced": lambda score, eligible, k, budget, seed: evenly_spaced_layers(score, eligible, k),
    "early-exit": lambda score, eligible, k, budget, seed: early_exit_prefix(score, eligible, k),
}
