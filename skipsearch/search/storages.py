"""Where a study lives: what a storage URL means, checked before any work, opened with heartbeats.

Three spellings, one per situation:
- `sqlite:///FILE.db` — one machine (the default: a file next to the study config);
- `postgresql://USER:PASSWORD@HOST:PORT/DB` — many machines (needs psycopg2);
- `FILE.log` — Optuna's JournalStorage on a file, for clusters that share a file system.
Other SQLAlchemy URLs (e.g. `mysql://…`) are passed to Optuna's RDBStorage as they are.

Workers record a heartbeat while they run a trial. A trial whose worker stopped beating
for `GRACE_BEATS` intervals (killed, crashed, machine lost) is failed by whichever worker
looks next, and RetryHeartbeatStaleTrialCallback enqueues a copy for the next free worker.

This module knows nothing about models or the search; it only turns URLs into storages.
"""

from __future__ import annotations

import difflib
import random
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from skipsearch.config.studies import JOURNAL_SUFFIX
from skipsearch.errors import SkipsearchError, first_line

SCHEMES = ("sqlite", "postgresql", "mysql")
FORMS = f"sqlite:///FILE.db, postgresql://USER:PASSWORD@HOST:PORT/DB or a journal file ending in {JOURNAL_SUFFIX}"
GRACE_BEATS = 3  # missed heartbeats before a running trial counts as abandoned
MAX_RETRIES = 3  # a trial that kills its worker every time is given up after this many copies
SQLITE_LOCK_TIMEOUT = 60  # seconds a process waits for another's write lock on the SQLite file
CONNECT_TIMEOUT = 10  # seconds to wait for a database server before calling it unreachable
TABLE_ATTEMPTS = 4  # tries to open a database while other workers create Optuna's tables in it
HEARTBEAT_ATTR = "heartbeat"  # journal trials' system attribute: seconds since the epoch


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for messages and files."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def is_journal(url: str) -> bool:
    return "://" not in url and url.endswith(JOURNAL_SUFFIX)


def storage_file(url: str) -> Path | None:
    """The file a SQLite or journal storage lives in; None for servers and in-memory SQLite."""
    if is_journal(url):
        return Path(url).expanduser()
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return None if path in ("", ":memory:") else Path(path)
    return None


def check_storage(url: str) -> None:
    """Raise a one-line SkipsearchError if the URL is misspelled or its server unreachable.

    Writes nothing: a file-based storage only needs its folder to exist, a server is connected
    to and left as it was. Meant to run before any slow work, so a typo costs nothing."""
    shown = redact(url)
    path = storage_file(url)
    if path is not None:
        if not path.parent.is_dir():
            raise SkipsearchError(f"storage {shown}: folder {path.parent} does not exist; create it or fix the path")
        if path.is_dir():
            raise SkipsearchError(f"storage {shown}: {path} is a folder; give a file name")
        return
    if "://" not in url:
        raise SkipsearchError(f"storage {shown!r} is not a storage URL; use {FORMS}")
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = sqlalchemy.engine.make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        scheme = url.split("://", 1)[0]
        hint = difflib.get_close_matches(scheme.split("+")[0], SCHEMES, n=1)
        did_you_mean = f"did you mean {hint[0]}://? " if hint else ""
        raise SkipsearchError(f"storage {shown}: unknown scheme {scheme!r}; {did_you_mean}use {FORMS}") from None
    except (ArgumentError, ValueError) as exc:
        raise SkipsearchError(f"storage {shown} is not a valid URL ({first_line(exc)}); use {FORMS}") from None
    try:
        dialect.import_dbapi()
    except ImportError:
        extra = " with: pip install 'skipsearch[postgres]'" if parsed.get_backend_name() == "postgresql" else ""
        raise SkipsearchError(f"storage {shown} needs the database driver {parsed.drivername!r}; "
                              f"install it{extra}") from None
    connect_args = {"connect_timeout": CONNECT_TIMEOUT} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
    engine = sqlalchemy.create_engine(parsed, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except Exception as exc:  # the driver's errors: refused, unknown host, bad password, no such database
        raise SkipsearchError(f"cannot reach the study storage {shown}: {first_line(exc)}; "
                              "check that the server runs and the host, port, user, password and database "
                              "name are right") from None
    finally:
        engine.dispose()


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """JournalStorage with Optuna's heartbeat protocol, which Optuna 5 gives only RDBStorage
    (optuna/optuna#6615). Optuna's own machinery does the rest: `optimize` runs the heartbeat
    thread and `fail_stale_trials` fails and retries the trials this class reports as stale.

    A heartbeat is the wall-clock time in a trial system attribute; machines sharing the
    journal need clocks in step to well within the grace period (NTP does that)."""

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int, grace_period: int,
                 stale_trial_callback) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker already failed it as stale; this worker learns so when it reports

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A retried copy inherits the old trial's heartbeat; its own start is the later time.
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            last = max(float(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)), started)
            if now - last > self._grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self._stale_trial_callback


def open_storage(url: str, heartbeat_interval: int | None = None) -> optuna.storages.BaseStorage:
    """The Optuna storage for a URL, creating its file or tables if needed.

    With `heartbeat_interval` (seconds) running trials beat, and abandoned ones are failed after
    GRACE_BEATS intervals and run again (at most MAX_RETRIES times); without it (reading a
    finished study) nothing beats."""
    check_storage(url)
    grace = None if heartbeat_interval is None else GRACE_BEATS * heartbeat_interval
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
            retry = None if heartbeat_interval is None else RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
            if is_journal(url):
                backend = JournalFileBackend(str(storage_file(url)))
                if heartbeat_interval is None:
                    return JournalStorage(backend)
                return HeartbeatJournalStorage(backend, heartbeat_interval, grace, retry)
            # Several processes write one SQLite file; wait for the lock rather than fail at once.
            engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT}} if url.startswith("sqlite") else {}
            for attempt in range(TABLE_ATTEMPTS):
                try:
                    return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                      grace_period=grace, heartbeat_stale_trial_callback=retry)
                except Exception:
                    # Workers opening a new database together race to create Optuna's tables; the
                    # losers find them made when they try again.
                    if attempt == TABLE_ATTEMPTS - 1:
                        raise
                    time.sleep(random.uniform(0.2, 1.0))
    except Exception as exc:  # SQLAlchemy, driver and journal errors all mean the same to the user
        raise SkipsearchError(f"cannot open the study storage {redact(url)}: {first_line(exc)}; "
                              f"check the URL ({FORMS}), the server and its credentials") from None
