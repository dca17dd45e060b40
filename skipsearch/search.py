"""Optuna search over skip sets.

Every eligible sublayer is one float parameter in [0, 1] named "attention.5" or "mlp.7".
With a fixed skip count k (objective `matchness`) the k highest values are skipped; with
a free count (`speedup`, `pareto`) the values above 0.5 are. The same encoding serves
warm starts: a known skip set is enqueued as 1.0 for its sublayers and 0.0 elsewhere.

Objectives:
- matchness: proxy matchness at exactly k skipped sublayers (SWIFT's setting);
- speedup: the cost model's predicted speedup, replaying drafting over the proxy's
  per-position outcomes at the best draft length and confidence threshold (the default);
- pareto: draft cost relative to the full model (minimised) against matchness (maximised).

This module holds the objective, samplers and study handling; loading models and tasks,
re-scoring with the real decoder and writing files happen in `runner`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import optuna

from .costs import THRESHOLDS, CostModel, best_draft_settings, draft_step_cost
from .errors import SkipsearchError
from .scoring import ProxyScore
from .skipping import SkipSet

log = logging.getLogger(__name__)

OBJECTIVES = ("matchness", "speedup", "pareto")
SAMPLERS = ("tpe", "gp", "nsga2", "random")


def param_name(sublayer: tuple[str, int]) -> str:
    kind, layer = sublayer
    return f"{kind}.{layer}"


def skip_set_from_params(params: dict[str, float], eligible: Sequence[tuple[str, int]], k: int | None) -> SkipSet:
    """Top-k values with a fixed count, else every value above 0.5."""
    values = [(params[param_name(s)], -i, s) for i, s in enumerate(eligible)]
    if k is None:
        chosen = [s for value, _, s in values if value > 0.5]
    else:
        chosen = [s for _, _, s in sorted(values, reverse=True)[:k]]
    return SkipSet.from_sublayers(chosen)


def params_for(skip_set: SkipSet, eligible: Sequence[tuple[str, int]]) -> dict[str, float]:
    skipped = set(skip_set.sublayers)
    return {param_name(s): 1.0 if s in skipped else 0.0 for s in eligible}


def make_sampler(name: str, seed: int, objective: str) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        if objective == "pareto":
            raise SkipsearchError("sampler gp takes one objective; use tpe or nsga2 with objective pareto")
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SkipsearchError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")


def directions(objective: str) -> list[str]:
    if objective == "pareto":
        return ["minimize", "maximize"]
    if objective in ("matchness", "speedup"):
        return ["maximize"]
    raise SkipsearchError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class Evaluation:
    """Everything a trial records about one skip set."""

    skip_set: SkipSet
    score: ProxyScore
    draft_cost: float  # one draft step over one full-model step
    draft_tokens: int  # the draft length and confidence threshold that maximise the predicted speedup
    confidence_threshold: float
    predicted_speedup: float
    predicted_acceptance: float  # share of drafts accepted when drafting replays with those settings

    def objective_values(self, objective: str) -> float | tuple[float, float]:
        if objective == "matchness":
            return self.score.matchness
        if objective == "speedup":
            return self.predicted_speedup
        return self.draft_cost, self.score.matchness

    def user_attrs(self) -> dict:
        return {
            "skip_attention": list(self.skip_set.attention),
            "skip_mlp": list(self.skip_set.mlp),
            "skipped": len(self.skip_set),
            "matchness": self.score.matchness,
            "expected_acceptance": self.score.expected_acceptance,
            "draft_cost": self.draft_cost,
            "draft_tokens": self.draft_tokens,
            "confidence_threshold": self.confidence_threshold,
            "predicted_speedup": self.predicted_speedup,
            "predicted_acceptance": self.predicted_acceptance,
        }


def evaluate(score: Callable[[SkipSet], ProxyScore], costs: CostModel, skip_set: SkipSet,
             max_draft_tokens: int, thresholds: Sequence[float] = THRESHOLDS) -> Evaluation:
    result = score(skip_set)
    gamma, threshold, speedup, stats = best_draft_settings(costs, skip_set, result.trace, max_draft_tokens,
                                                           thresholds)
    return Evaluation(skip_set, result, draft_step_cost(costs, skip_set) / costs.plain_step, gamma, threshold,
                      speedup, stats.acceptance_rate)


@dataclass
class SkipObjective:
    """The Optuna objective: suggest one value per eligible sublayer, score the skip set."""

    score: Callable[[SkipSet], ProxyScore]
    costs: CostModel
    eligible: Sequence[tuple[str, int]]
    objective: str
    k: int | None
    max_draft_tokens: int
    thresholds: Sequence[float] = THRESHOLDS

    def __call__(self, trial: optuna.Trial):
        params = {param_name(s): trial.suggest_float(param_name(s), 0.0, 1.0) for s in self.eligible}
        evaluation = evaluate(self.score, self.costs, skip_set_from_params(params, self.eligible, self.k),
                              self.max_draft_tokens, self.thresholds)
        for key, value in evaluation.user_attrs().items():
            trial.set_user_attr(key, value)
        return evaluation.objective_values(self.objective)


def open_study(name: str, storage: str | optuna.storages.BaseStorage, objective: str,
               sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create the study or load it to resume; a storage that cannot be opened is one clear line."""
    try:
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                    directions=directions(objective), sampler=sampler)
    except SkipsearchError:
        raise
    except Exception as exc:  # SQLAlchemy, psycopg and file errors all mean the same to the user
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SkipsearchError(
            f"cannot open the study storage {storage!r}: {first_line}; check the URL, the server and its credentials"
        ) from exc
    existing = study.user_attrs.get("objective")
    if existing is not None and existing != objective:
        raise SkipsearchError(
            f"study {name!r} in this storage was run with objective {existing!r}, not {objective!r}; "
            "use another study name or storage, or the same objective"
        )
    study.set_user_attr("objective", objective)
    return study


def enqueue_warm_starts(study: optuna.Study, skip_sets: Sequence[SkipSet], eligible: Sequence[tuple[str, int]]) -> int:
    """Enqueue skip sets the study has not seen yet; returns how many were enqueued."""
    seen = {(tuple(t.user_attrs.get("skip_attention", ())), tuple(t.user_attrs.get("skip_mlp", ())))
            for t in study.get_trials(deepcopy=False)}
    enqueued = 0
    for skip_set in skip_sets:
        key = (skip_set.attention, skip_set.mlp)
        if key in seen:
            continue
        study.enqueue_trial(params_for(skip_set, eligible), user_attrs={"warm_start": True}, skip_if_exists=True)
        seen.add(key)
        enqueued += 1
    return enqueued


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def best_trials(study: optuna.Study, objective: str, n: int) -> list[optuna.trial.FrozenTrial]:
    """The n best distinct skip sets: by value, or the Pareto front by matchness for `pareto`."""
    if objective == "pareto":
        ranked = sorted(study.best_trials, key=lambda t: -t.values[1])
        ranked += sorted((t for t in completed_trials(study) if t not in ranked), key=lambda t: -t.values[1])
    else:
        ranked = sorted(completed_trials(study), key=lambda t: -t.value)
    chosen, seen = [], set()
    for trial in ranked:
        key = (tuple(trial.user_attrs["skip_attention"]), tuple(trial.user_attrs["skip_mlp"]))
        if key not in seen and trial.user_attrs["skipped"] > 0:
            seen.add(key)
            chosen.append(trial)
        if len(chosen) == n:
            break
    return chosen


def trial_skip_set(trial: optuna.trial.FrozenTrial) -> SkipSet:
    return SkipSet(attention=tuple(trial.user_attrs["skip_attention"]), mlp=tuple(trial.user_attrs["skip_mlp"]))
