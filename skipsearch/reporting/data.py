"""What a report shows, gathered from finished studies: plain dataclasses (`ReportData` and its
parts) and `gather_report_data`, which fills them.

Pure, tested without a browser: nothing here draws, writes HTML or touches a file (`figures`
draws this data, `page` lays it out and writes it). It knows nothing about models, prompts or
decoding: it reads what `search` and `runner` recorded in the study (trial user attrs, study
user attrs) and the exported profile's text, as given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
import yaml

from skipsearch.engine.skipping import SUBLAYER_KINDS, SkipSet
from skipsearch.search.objectives import OBJECTIVES, front_flags

__all__ = [
    "ReportData", "StudySummary", "History", "ParetoPoint", "LayerHeat", "RescoredPoint", "TaskSummary",
    "TransferMatrix", "gather_report_data", "top_n", "profile_mapping",
]


@dataclass
class StudySummary:
    name: str
    objective: str
    sampler: str
    trials: int  # finished trials
    skip_budget: int | None
    model: str | None = None  # from the exported profile (or the study config)
    task: str | None = None
    device: str | None = None
    dtype: str | None = None


@dataclass
class History:
    """Finished trials in order, their objective value and the best value so far (all maximised)."""

    study: str
    sampler: str
    value_name: str  # "matchness" or "predicted speedup"; pareto studies use matchness
    trials: list[int]
    values: list[float]
    best: list[float]
    warm_start: list[bool]


@dataclass
class ParetoPoint:
    study: str
    trial: int
    draft_cost: float  # one draft step over one full-model step (minimised)
    matchness: float  # maximised
    expected_acceptance: float | None
    skipped: int
    is_front: bool
    is_exported: bool  # the exported profile's skip set


@dataclass
class LayerHeat:
    """Per decoder layer and sublayer kind; None where the sublayer is not eligible (or unscored)."""

    study: str
    layers: list[int]
    top_n: int  # how many of the best trials the shares count
    share: dict[str, list[float | None]]  # kind -> share of the top-N trials that skip it
    importance: dict[str, list[float | None]]  # kind -> matchness when skipped alone


@dataclass
class RescoredPoint:
    study: str
    rank: int  # 0 = the exported candidate
    trial: int | None
    skip: str  # SkipSet.describe()
    predicted_speedup: float
    decode_speedup: float  # measured
    # accepted / drafted tokens: the cost model's replay on the held-out proxy outcomes, and measured
    # on the same prompts by the decoder (None for studies re-scored before the replay kept it)
    predicted_acceptance: float | None
    acceptance_rate: float
    matchness: float
    mean_accepted_tokens: float
    # held-out outputs against plain decoding, "identical / tie flips / errors"; "" before the check existed
    lossless: str = ""
    # which drafter carried the held-out rounds: "n-gram / layer-skip / both / plain steps"; "" before policies
    rounds: str = ""
    search_predicted_speedup: float | None = None  # what the search predicted on its own prompts


@dataclass
class TaskSummary:
    study: str
    task: str | None
    best_acceptance: float | None
    best_decode_speedup: float | None
    best_predicted_speedup: float | None


@dataclass
class TransferMatrix:
    """Rows are the tasks a profile was searched on, columns the tasks it was evaluated on."""

    profile_tasks: list[str]
    eval_tasks: list[str]
    acceptance: list[list[float | None]]
    decode_speedup: list[list[float | None]]
    matchness: list[list[float | None]]


@dataclass
class ReportData:
    studies: list[StudySummary]
    histories: list[History]
    pareto: list[ParetoPoint]
    heat: list[LayerHeat]
    rescored: list[RescoredPoint]
    tasks: list[TaskSummary]
    transfer: TransferMatrix | None
    compare_rows: list[dict[str, Any]]
    profiles: dict[str, str]  # study name -> profile YAML text
    commands: list[str]
    notes: list[str] = field(default_factory=list)  # what the report could not show, and why


def top_n(n_trials: int) -> int:
    """How many of the best trials the heat map counts: 20% of them, at least 10 (all when fewer)."""
    return min(n_trials, max(10, math.ceil(0.2 * n_trials)))


def _objective(study: optuna.Study) -> str:
    objective = study.user_attrs.get("objective")
    if objective in OBJECTIVES:
        return objective
    return "pareto" if len(study.directions) == 2 else "matchness"


def profile_mapping(text: str | None) -> dict:
    """The profile YAML as a mapping ({} when absent or unreadable); the report shows what it can."""
    try:
        data = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _num_layers(study: optuna.Study, profile: dict, trials: list) -> int:
    costs = study.user_attrs.get("costs") or {}
    if isinstance(costs.get("attention"), list) and costs["attention"]:
        return len(costs["attention"])
    model = profile.get("model") if isinstance(profile.get("model"), dict) else {}
    if isinstance(model.get("num_hidden_layers"), int):
        return model["num_hidden_layers"]
    layers = [int(name.split(".", 1)[1]) for t in trials for name in t.params
              if name.split(".", 1)[0] in SUBLAYER_KINDS]
    return max(layers, default=-1) + 1


def _layer_heat(study: optuna.Study, name: str, objective: str, trials: list, num_layers: int) -> LayerHeat:
    best = OBJECTIVES[objective].ranked(trials)[:top_n(len(trials))]
    eligible = {(kind, int(layer)) for t in trials for kind, _, layer in (p.partition(".") for p in t.params)
                if kind in SUBLAYER_KINDS}
    counts = {(kind, layer): 0 for kind, layer in eligible}
    for trial in best:
        for kind in SUBLAYER_KINDS:
            for layer in trial.user_attrs.get(f"skip_{kind}", ()):
                counts[(kind, int(layer))] = counts.get((kind, int(layer)), 0) + 1
    importance = {(str(kind), int(layer)): float(value)
                  for kind, layer, value in study.user_attrs.get("importance") or ()}
    layers = list(range(num_layers))
    share = {kind: [counts[(kind, i)] / len(best) if (kind, i) in counts and best else None for i in layers]
             for kind in SUBLAYER_KINDS}
    imp = {kind: [importance.get((kind, i)) for i in layers] for kind in SUBLAYER_KINDS}
    return LayerHeat(name, layers, len(best), share, imp)


def _transfer(studies: list[optuna.Study]) -> TransferMatrix | None:
    cells: dict[tuple[str, str], dict] = {}
    for study in studies:
        for row in study.user_attrs.get("transfer") or ():
            if isinstance(row, dict) and "profile_task" in row and "eval_task" in row:
                cells[(str(row["profile_task"]), str(row["eval_task"]))] = row
    if not cells:
        return None
    rows = sorted({p for p, _ in cells})
    cols = sorted({e for _, e in cells})

    def grid(key: str) -> list[list[float | None]]:
        return [[_float(_get(cells.get((p, e), {}), key)) for e in cols] for p in rows]

    return TransferMatrix(rows, cols, grid("acceptance_rate"), grid("decode_speedup"), grid("matchness"))


def _get(record: dict, key: str) -> Any:
    """A stored record's field; studies written before the speedups had two names call
    `decode_speedup` `speedup`."""
    return record.get(key, record.get("speedup")) if key == "decode_speedup" else record.get(key)


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def gather_report_data(studies: list[optuna.Study], profile_texts: dict[str, str] | None, commands: list[str],
                       compare_rows: list[dict] | None, *, configs: dict[str, Any] | None = None) -> ReportData:
    """Everything the report shows, from finished studies; `profile_texts` and `configs` are keyed by
    study name (configs are `StudyConfig`s, used for the model and task when no profile exists)."""
    profile_texts, configs = profile_texts or {}, configs or {}
    data = ReportData([], [], [], [], [], [], _transfer(studies), [dict(r) for r in compare_rows or ()],
                      {}, list(commands))
    for study in studies:
        name = study.study_name
        objective = _objective(study)
        sampler = str(study.user_attrs.get("sampler", "?"))
        trials = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                        key=lambda t: t.number)
        trials = [t for t in trials if t.values and "matchness" in t.user_attrs]
        text = profile_texts.get(name)
        if text is not None:
            data.profiles[name] = text
        profile = profile_mapping(text)
        summary = _summary(study, name, objective, sampler, len(trials), profile, configs.get(name))
        data.studies.append(summary)
        if not trials:
            data.notes.append(f"study {name} has no finished trial yet")
            continue

        values = [OBJECTIVES[objective].value(t) for t in trials]
        best = [max(values[: i + 1]) for i in range(len(values))]
        data.histories.append(History(name, sampler, OBJECTIVES[objective].label, [t.number for t in trials], values,
                                      best, [bool(t.user_attrs.get("warm_start")) for t in trials]))

        rescored = [r for r in study.user_attrs.get("rescored") or () if isinstance(r, dict)]
        skip = profile.get("skip") if isinstance(profile.get("skip"), dict) else None
        if skip is not None:
            exported = SkipSet.from_dict(skip)
        elif rescored:
            exported = SkipSet.from_attrs(rescored[0])
        else:
            exported = None
        costs = [float(t.user_attrs["draft_cost"]) for t in trials]
        matches = [float(t.user_attrs["matchness"]) for t in trials]
        for trial, cost, match, on_front in zip(trials, costs, matches, front_flags(costs, matches)):
            key = SkipSet.from_attrs(trial.user_attrs)
            data.pareto.append(ParetoPoint(name, trial.number, cost, match,
                                           _float(trial.user_attrs.get("expected_acceptance")),
                                           int(trial.user_attrs.get("skipped", len(key))), on_front,
                                           key == exported))

        data.heat.append(_layer_heat(study, name, objective, trials, _num_layers(study, profile, trials)))

        by_number = {t.number: t for t in trials}
        for rank, r in enumerate(rescored):
            trial = by_number.get(r.get("trial"))
            data.rescored.append(RescoredPoint(
                name, rank, r.get("trial"), SkipSet.from_attrs(r).describe(),
                _float(r.get("predicted_speedup")), _float(_get(r, "decode_speedup")),
                _float(r.get("predicted_acceptance")), _float(r.get("acceptance_rate")), _float(r.get("matchness")),
                _float(r.get("mean_accepted_tokens")),
                _lossless_cell(r.get("lossless")), _rounds_cell(r),
                _float(trial.user_attrs.get("predicted_speedup")) if trial else None))
        data.tasks.append(TaskSummary(
            name, summary.task,
            max((_float(r.get("acceptance_rate")) for r in rescored
                 if _float(r.get("acceptance_rate")) is not None), default=None),
            max((_float(_get(r, "decode_speedup")) for r in rescored if _float(_get(r, "decode_speedup")) is not None),
                default=None),
            max((_float(r.get("predicted_speedup")) for r in rescored
                 if _float(r.get("predicted_speedup")) is not None), default=None)))
        if not rescored:
            data.notes.append(f"study {name} has no re-scored candidates; predicted vs measured is not shown")
    return data


def _rounds_cell(rescored: dict) -> str:
    if "ngram_rounds" not in rescored:
        return ""
    ngram, rounds = rescored.get("ngram_rounds") or 0, rescored.get("rounds") or 0
    both = rescored.get("ngram_layer_skip_rounds") or 0
    return f"{ngram} / {rounds - ngram - both} / {both} / {rescored.get('plain_steps') or 0}"


def _lossless_cell(counts) -> str:
    if not isinstance(counts, dict):
        return ""
    return " / ".join(str(counts.get(kind, 0)) for kind in ("identical", "tie_flip", "error"))


def _summary(study, name, objective, sampler, n_trials, profile: dict, config) -> StudySummary:
    model = profile.get("model") if isinstance(profile.get("model"), dict) else {}
    metrics = profile.get("metrics") if isinstance(profile.get("metrics"), dict) else {}
    costs = study.user_attrs.get("costs") or {}
    model_name = model.get("name")
    task = profile.get("task")
    if config is not None:
        model_name = model_name or config.model.name
        task = task or config.task.source + (f"/{config.task.category}" if config.task.category else "")
    budget = study.user_attrs.get("skip_budget")
    return StudySummary(name, objective, sampler, n_trials, budget if isinstance(budget, int) else None,
                        None if model_name is None else str(model_name), None if task is None else str(task),
                        _text(costs.get("device") or metrics.get("device")),
                        _text(costs.get("dtype") or metrics.get("dtype")))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
