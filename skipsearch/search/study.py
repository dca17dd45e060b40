"""Optuna search over skip sets.

Every eligible sublayer is one float parameter in [0, 1] named "attention.5" or "mlp.7"
(`SkipSet.to_params` / `from_params`). With a fixed skip count k (objective `matchness`) the k
highest values are skipped; with a free count (`speedup`, `pareto`) the values above 0.5 are. The
same encoding serves warm starts: a known skip set is enqueued as 1.0 for its sublayers and 0.0
elsewhere. What each objective means is `objectives.OBJECTIVES`.

This module holds the Optuna objective, samplers and study handling; workers sharing a study are
`workers`; loading models and tasks, re-scoring with the real decoder and writing files happen in
`runner`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import optuna

from skipsearch.config.studies import SAMPLERS
from skipsearch.engine.costs import CostModel, draft_step_cost
from skipsearch.engine.decoding import DecodeSettings, DecodeStats
from skipsearch.engine.skipping import SkipSet, param_name
from skipsearch.errors import SkipsearchError, first_line
from skipsearch.search.draft_grid import THRESHOLDS, best_draft_settings
from skipsearch.search.objectives import get_objective
from skipsearch.search.scoring import ProxyScore
from skipsearch.search.storages import open_storage, redact

log = logging.getLogger(__name__)



def make_sampler(name: str, seed: int | None, objective: str) -> optuna.samplers.BaseSampler:
    """The named sampler; seed None draws a random one."""
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


@dataclass(frozen=True)
class Evaluation:
    """Everything a trial records about one skip set."""

    skip_set: SkipSet
    score: ProxyScore
    draft_cost: float  # one draft step over one full-model step
    settings: DecodeSettings  # the drafting settings that maximise the predicted speedup
    predicted_speedup: float
    stats: DecodeStats  # the replay of drafting with those settings

    def user_attrs(self) -> dict:
        ngram = self.settings.ngram
        return {
            **self.skip_set.to_attrs(),
            "skipped": len(self.skip_set),
            "matchness": self.score.matchness,
            "expected_acceptance": self.score.expected_acceptance,
            "draft_cost": self.draft_cost,
            "draft_tokens": self.settings.max_draft_tokens,
            "confidence_threshold": self.settings.confidence_threshold,
            # the policy: None where the skip set drafts every round
            "policy_margin": None if self.settings.costs is None else self.settings.policy.margin,
            "ngram": None if ngram is None else [ngram.min_n, ngram.max_n, ngram.max_tokens],
            "predicted_speedup": self.predicted_speedup,
            "predicted_acceptance": self.stats.acceptance_rate,
            "ngram_rounds": self.stats.ngram_rounds,
            "ngram_layer_skip_rounds": self.stats.ngram_layer_skip_rounds,
            "rounds": self.stats.rounds,
        }


def evaluate(score: Callable[[SkipSet], ProxyScore], costs: CostModel, skip_set: SkipSet,
             max_draft_tokens: int, thresholds: Sequence[float] = THRESHOLDS, policies: bool = False) -> Evaluation:
    result = score(skip_set)
    if not policies and not len(skip_set):  # the fixed rule with nothing skipped drafts nothing: plain decoding
        settings = DecodeSettings(max_new_tokens=1, max_draft_tokens=1, ngram=None, costs=None, fallback=False)
        return Evaluation(skip_set, result, 1.0, settings, 1.0, DecodeStats())
    settings, speedup, stats = best_draft_settings(costs, skip_set, result.prompts, max_draft_tokens, thresholds,
                                                   policies)
    return Evaluation(skip_set, result, draft_step_cost(costs, skip_set) / costs.plain_step, settings, speedup,
                      stats)


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
    # also weigh drafting policies (n-gram drafts, the cost-model choice) for each skip set
    policies: bool = False

    def __call__(self, trial: optuna.Trial):
        params = {param_name(s): trial.suggest_float(param_name(s), 0.0, 1.0) for s in self.eligible}
        evaluation = evaluate(self.score, self.costs, SkipSet.from_params(params, self.eligible, self.k),
                              self.max_draft_tokens, self.thresholds, self.policies)
        for key, value in evaluation.user_attrs().items():
            trial.set_user_attr(key, value)
        return get_objective(self.objective).values(evaluation)


def open_study(name: str, storage: str | optuna.storages.BaseStorage, objective: str,
               sampler: optuna.samplers.BaseSampler, heartbeat_interval: int | None = None) -> optuna.Study:
    """Create the study or load it to resume; a storage that cannot be opened is one clear line.

    A URL is opened with heartbeats every `heartbeat_interval` seconds (see `storages`)."""
    shown = redact(storage) if isinstance(storage, str) else type(storage).__name__
    backend = open_storage(storage, heartbeat_interval) if isinstance(storage, str) else storage
    try:
        study = optuna.create_study(study_name=name, storage=backend, load_if_exists=True,
                                    directions=list(get_objective(objective).directions),
                                    sampler=sampler)
    except SkipsearchError:
        raise
    except Exception as exc:  # SQLAlchemy, psycopg and file errors all mean the same to the user
        raise SkipsearchError(
            f"cannot open the study storage {shown}: {first_line(exc)}; check the URL, the server and its credentials"
        ) from exc
    existing = study.user_attrs.get("objective")
    if existing is not None and existing != objective:
        raise SkipsearchError(
            f"study {name!r} in this storage was run with objective {existing!r}, not {objective!r}; "
            "use another study name or storage, or the same objective"
        )
    study.set_user_attr("objective", objective)
    return study


def enqueue_warm_starts(study: optuna.Study, skip_sets: Sequence[SkipSet], eligible: Sequence[tuple[str, int]],
                        user_attrs: dict | None = None) -> int:
    """Enqueue skip sets the study has not seen yet, tagged with `user_attrs` (default: a warm
    start); returns how many were enqueued."""
    seen = {SkipSet.from_attrs(t.user_attrs) for t in study.get_trials(deepcopy=False)}
    enqueued = 0
    for skip_set in skip_sets:
        if skip_set in seen:
            continue
        study.enqueue_trial(skip_set.to_params(eligible), user_attrs=user_attrs or {"warm_start": True},
                            skip_if_exists=True)
        seen.add(skip_set)
        enqueued += 1
    return enqueued


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def best_trials(study: optuna.Study, objective: str, n: int) -> list[optuna.trial.FrozenTrial]:
    """The n best distinct skip sets that draft (with n-grams, an empty one does), in the
    objective's ranking."""
    chosen, seen = [], set()
    for trial in get_objective(objective).ranked(completed_trials(study)):
        key = SkipSet.from_attrs(trial.user_attrs)
        drafts = trial.user_attrs["skipped"] > 0 or trial.user_attrs.get("ngram") is not None
        if key not in seen and drafts:
            seen.add(key)
            chosen.append(trial)
        if len(chosen) == n:
            break
    return chosen
