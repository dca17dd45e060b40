"""Optuna search over skip sets.

Every eligible sublayer is one float parameter in [0, 1] named "attention.5" or "mlp.7"
(`SkipSet.to_params` / `from_params`). With a fixed skip count k (objective `matchness`) the k
highest values are skipped; with a free count (`speedup`, `pareto`) the values above 0.5 are. The
same encoding serves warm starts: a known skip set is enqueued as 1.0 for its sublayers and 0.0
elsewhere. What each objective means is `objectives.OBJECTIVES`.

Several workers (processes, machines) can share one study: `run_trials` keeps each of them
taking trials until the study holds its target of complete ones, and no more.

This module holds the objective, samplers and study handling; loading models and tasks,
re-scoring with the real decoder and writing files happen in `runner`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import optuna
from optuna.trial import TrialState

from skipsearch.config.studies import SAMPLERS
from skipsearch.engine.costs import THRESHOLDS, CostModel, best_draft_settings, draft_step_cost
from skipsearch.engine.decoding import DecodeSettings, DecodeStats
from skipsearch.engine.skipping import SkipSet, param_name
from skipsearch.errors import SkipsearchError, first_line
from skipsearch.search.objectives import get_objective
from skipsearch.search.scoring import ProxyScore
from skipsearch.search.storages import GRACE_BEATS, open_storage, redact

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


# ---------------------------------------------------------------------------- workers sharing a study

WORKER_ATTR = "worker"  # trial user attribute: host:pid of the process that runs the trial
COUNTED = (TrialState.COMPLETE, TrialState.RUNNING)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_counts(study: optuna.Study) -> tuple[int, int]:
    """(complete, running) trials of the study, whichever worker runs them."""
    trials = study.get_trials(deepcopy=False, states=COUNTED)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete


def surplus_reason(trials: Sequence[optuna.trial.FrozenTrial], number: int, target: int) -> str | None:
    """Why running trial `number` is not needed, or None when it is.

    Workers start a trial only while complete + running trials are below the target, but two
    may look at the same moment and both start; the trials with the highest numbers then give
    way, so every worker comes to the same decision. Likewise warm starts that workers starting
    together both enqueued run once: the copy with the higher number gives way. A waiting retry
    of a dead worker's trial holds its place: queued trials ahead of it (local moves enqueued
    before the worker died) give way instead, so the retry runs before the target is reached."""
    me = next(t for t in trials if t.number == number)
    fixed = me.system_attrs.get("fixed_params")
    if fixed is not None and any(
        t.number < number and t.state in (*COUNTED, TrialState.WAITING) and t.system_attrs.get("fixed_params") == fixed
        for t in trials
    ):
        return f"trial {number} repeats an earlier enqueued trial"
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    running = sorted(t.number for t in trials if t.state == TrialState.RUNNING)
    # RetryFailedTrialCallback marks its copies with the failed trial's number
    retries = sum(t.state == TrialState.WAITING and "failed_trial" in t.system_attrs for t in trials)
    excess = complete + len(running) + retries - target
    if excess > 0 and number in running[-excess:]:
        return f"the study already holds {target} complete or running trials"
    return None


def fail_orphans(study: optuna.Study, grace_seconds: float) -> None:
    """Fail running trials that never reached the objective and are older than the grace period.

    Optuna's heartbeat only watches trials that beat at least once; a worker stopped between
    Optuna creating its trial and the first beat (or a study run before heartbeats existed)
    leaves a RUNNING trial that nothing else would ever end, and workers would wait for it."""
    cutoff = dt.datetime.now() - dt.timedelta(seconds=grace_seconds)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if WORKER_ATTR in trial.user_attrs or trial.datetime_start is None or trial.datetime_start > cutoff:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # another worker ended it first


class Interrupts:
    """Ctrl-C as the trial loop needs it: the trial in flight is finished and recorded, then the
    worker stops with KeyboardInterrupt. A second Ctrl-C, or one while the worker only waits,
    stops it at once. (Interrupted inside Optuna's storage writes, a process can leave its
    database session stuck and its trial RUNNING.) The `--workers` process uses it the same way
    while it starts and watches its workers. Only the main thread gets signals; elsewhere
    nothing changes."""

    def __init__(self) -> None:
        self.pending = False
        self._waiting = False

    def _handle(self, signum, frame) -> None:
        if self.pending or self._waiting:
            raise KeyboardInterrupt
        self.pending = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if self.pending:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        if self.pending:
            raise KeyboardInterrupt
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], object], target: int,
               heartbeat_interval: int, callbacks: Sequence[Callable] = ()) -> None:
    """Take trials until the study holds `target` complete ones, shared with any other workers.

    A trial starts only while complete + running trials are below the target: MaxTrialsCallback
    counting both stops `optimize`, and `surplus_reason` settles workers that looked at once.
    When the running trials would make up the rest, the worker waits; either they complete, or
    their worker died, Optuna's heartbeat fails them and enqueues copies, and a worker runs those.
    Ctrl-C raises KeyboardInterrupt once this worker's trial is recorded."""
    grace = GRACE_BEATS * heartbeat_interval
    interrupts = Interrupts()

    def guarded(trial: optuna.Trial):
        trial.set_user_attr(WORKER_ATTR, worker_name())
        if interrupts.pending:
            raise KeyboardInterrupt  # Optuna records the trial as failed
        reason = surplus_reason(study.get_trials(deepcopy=False), trial.number, target)
        if reason is not None:
            raise optuna.TrialPruned(reason)
        return objective(trial)

    def stop_if_interrupted(study: optuna.Study, _trial) -> None:
        if interrupts.pending:
            study.stop()

    full = optuna.study.MaxTrialsCallback(target, states=COUNTED)
    with interrupts.installed():
        while not interrupts.pending:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            fail_orphans(study, grace)
            complete, running = trial_counts(study)
            if complete >= target:
                return
            if complete + running >= target:
                with interrupts.waiting():
                    time.sleep(heartbeat_interval)
                continue
            try:
                study.optimize(guarded, callbacks=[full, stop_if_interrupted, *callbacks])
            except optuna.exceptions.UpdateFinishedTrialError:
                log.warning("another worker took this worker's trial for abandoned (no heartbeat for %d s) and "
                            "runs it again; raise search.heartbeat_interval if the machines are this busy", grace)
