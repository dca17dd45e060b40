"""Workers sharing one study: several processes or machines take trials from one Optuna
storage. `run_trials` keeps each of them taking trials until the study holds its target of
complete ones, and no more; a worker that died leaves its trials running until the storage's
heartbeat grace marks them failed (`fail_orphans`); Ctrl-C finishes the running trial first
(`Interrupts`).
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
from typing import Callable, Iterator, Sequence

import optuna
from optuna.trial import TrialState

from skipsearch.search.storages import GRACE_BEATS

log = logging.getLogger(__name__)

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
