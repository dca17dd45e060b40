"""Many workers on one study: exact trial counts under races, killed workers' trials retried,
Ctrl-C and resume, --workers; on SQLite, a real PostgreSQL server and a journal file."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import operator
import os
import pwd
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from skipsearch.cli import main
from skipsearch.search.storages import open_storage
from skipsearch.search.workers import WORKER_ATTR, fail_orphans, run_trials, surplus_reason

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240  # seconds a whole worker run may take on a loaded 2-core machine


# ---------------------------------------------------------------------------- the trial loop, in process


def _study(storage, name="s"):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler())


def _trials(states_and_fixed):
    """Frozen trials numbered in order, from (state, fixed_params or None)."""
    study = _study(optuna.storages.InMemoryStorage())
    for state, fixed in states_and_fixed:
        value = 1.0 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value,
                                     system_attrs={"fixed_params": fixed} if fixed else {}))
    return study.get_trials()


def test_the_highest_numbered_running_trials_give_way():
    C, R = TrialState.COMPLETE, TrialState.RUNNING
    trials = _trials([(C, None), (C, None), (R, None), (R, None), (R, None)])
    assert surplus_reason(trials, 2, target=4) is None
    assert surplus_reason(trials, 3, target=4) is None
    assert "already holds 4" in surplus_reason(trials, 4, target=4)
    assert surplus_reason(trials, 3, target=3) is not None and surplus_reason(trials, 2, target=3) is None
    assert surplus_reason(trials, 4, target=10) is None


def test_an_enqueued_trial_repeated_by_a_second_worker_runs_once():
    C, R, W, F = TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL
    fixed = {"attention.1": 1.0}
    trials = _trials([(C, fixed), (R, fixed), (R, {"attention.1": 0.0})])
    assert "repeats an earlier enqueued trial" in surplus_reason(trials, 1, target=10)
    assert surplus_reason(trials, 2, target=10) is None
    # a retried copy of a failed trial is no repeat
    assert surplus_reason(_trials([(F, fixed), (W, None), (R, fixed)]), 2, target=10) is None


def test_a_waiting_retry_keeps_its_place_before_the_target():
    C, R, W = TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING
    study = _study(optuna.storages.InMemoryStorage())
    for state in (C, C, R):
        study.add_trial(create_trial(state=state, value=1.0 if state == C else None))
    study.add_trial(create_trial(state=W, system_attrs={"failed_trial": 0, "retry_history": [0]}))
    trials = study.get_trials()
    assert "already holds 3" in surplus_reason(trials, 2, target=3)  # the retry takes the last place
    assert surplus_reason(trials, 2, target=4) is None


@pytest.mark.slow
def test_threads_sharing_one_study_finish_exactly_the_target(tmp_path):
    """Five workers (threads with storages of their own) race for the last trials of a SQLite study."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    target = 23
    errors = []

    def objective(trial):
        time.sleep(random.uniform(0.0, 0.03))
        return trial.suggest_float("x", 0, 1)

    def worker():
        try:
            run_trials(_study(open_storage(url, heartbeat_interval=1)), objective, target, heartbeat_interval=1)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert not errors
    trials = _study(open_storage(url)).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == target
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_that_never_reached_the_objective_is_failed_after_the_grace_period(tmp_path):
    study = _study(open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1))
    orphan = study.ask()
    live = study.ask()
    live.set_user_attr(WORKER_ATTR, "host:1")
    fail_orphans(study, grace_seconds=60)
    assert study.trials[orphan.number].state == TrialState.RUNNING
    fail_orphans(study, grace_seconds=0)
    assert study.trials[orphan.number].state == TrialState.FAIL
    assert study.trials[live.number].state == TrialState.RUNNING  # the heartbeat watches that one


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_worker_waits_for_a_dead_workers_trial_and_runs_its_retry(tmp_path):
    """A trial left RUNNING by a killed worker holds the last slot until its heartbeat goes stale."""
    url = str(tmp_path / "j.log")
    dead = _study(open_storage(url, heartbeat_interval=1))
    for value in (0.1, 0.2):
        dead.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={"x": value},
                                    distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    stuck = dead.ask()
    stuck.suggest_float("x", 0, 1)
    stuck.set_user_attr(WORKER_ATTR, "elsewhere:1")
    dead._storage.record_heartbeat(stuck._trial_id)  # its worker beat once, then died
    start = time.monotonic()
    run_trials(_study(open_storage(url, heartbeat_interval=1)), lambda t: t.suggest_float("x", 0, 1), 3, 1)
    assert time.monotonic() - start >= 3  # the grace period: three missed beats
    trials = _study(open_storage(url)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert trials[3].system_attrs["failed_trial"] == stuck.number
    assert trials[3].params == trials[2].params


# ---------------------------------------------------------------------------- worker processes


def _write_study(folder: Path, model_dir: Path, trials: int) -> Path:
    rng = random.Random(0)
    data = folder / "task.jsonl"
    with open(data, "w") as out:
        for i in range(8):
            text = " ".join(rng.choice(["hello", "world"]) for _ in range(3 + i))
            out.write(json.dumps({"question_id": i, "category": "toy", "turns": [text]}) + "\n")
    study = folder / "toy.yaml"
    study.write_text(
        f"model: {{name: {model_dir}}}\n"
        f"task: {{source: specbench, data: {data}, search_prompts: 3, heldout_prompts: 2, reference_tokens: 10, "
        "chat_template: false}\n"
        f"search: {{trials: {trials}, skip_budget: 2, heartbeat_interval: 1}}\n"
        "draft: {max_draft_tokens: 3}\n"
        f"output: {{profile: {folder / 'toy.profile.yaml'}, report: {folder / 'toy.html'}}}\n"
    )
    return study


def _env(folder: Path) -> dict:
    return {**os.environ, "SKIPSEARCH_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}


def _search(study: Path, *flags: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "skipsearch", "search", str(study), "--no-progress", *flags],
                            cwd=study.parent, env=_env(study.parent), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _load(url: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name="toy", storage=open_storage(url))


def _trials_when_ready(url: str, processes, condition):
    """Poll the storage until `condition(trials)` holds; fail if every worker has exited."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in processes):
            outputs = [p.communicate()[1][-2000:] for p in processes]
            pytest.fail(f"the workers exited before the test could act: {outputs}")
        try:
            trials = _load(url).get_trials()
        except Exception:  # the first worker has not created the study yet
            trials = []
        if condition(trials):
            return trials
        time.sleep(0.05)
    pytest.fail("timed out waiting for the workers")


def _pid(trial) -> int | None:
    worker = trial.user_attrs.get(WORKER_ATTR)
    return int(worker.rsplit(":", 1)[1]) if trial.state == TrialState.RUNNING and worker else None


def _kill_mid_trial(url: str, processes, is_worker, journal: Path | None = None) -> int:
    """SIGKILL a worker process (`is_worker(pid)`) while it runs a trial; returns the trial's number.

    The worker is frozen (SIGSTOP) first and the trial read again, so the kill surely lands
    while the trial is RUNNING in the storage, and not while it holds the journal's lock."""
    while True:
        trials = _trials_when_ready(url, processes, lambda ts: any(is_worker(_pid(t)) for t in ts))
        trial = next(t for t in trials if is_worker(_pid(t)))
        pid = _pid(trial)
        os.kill(pid, signal.SIGSTOP)
        again = _load(url).get_trials()[trial.number]
        if again.state == TrialState.RUNNING and not (journal and Path(f"{journal}.lock").exists()):
            os.kill(pid, signal.SIGKILL)
            return trial.number
        os.kill(pid, signal.SIGCONT)


def _check_study(url: str, trials: int, killed: int | None = None) -> list:
    study = _load(url).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in study) == trials
    assert not [t.number for t in study if t.state == TrialState.RUNNING]
    assert len({t.number for t in study}) == len(study)
    assert len({t.user_attrs[WORKER_ATTR] for t in study}) >= 2  # the trials were shared
    if killed is not None:
        assert study[killed].state == TrialState.FAIL
        retries = [t for t in study if t.system_attrs.get("failed_trial") == killed]
        assert [t.state for t in retries] == [TrialState.COMPLETE]
    return study


def _postgres_bin() -> Path | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "initdb").is_file() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on a free loopback port, stopped after the session."""
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)")
    as_postgres = []
    folder = Path(tempfile.mkdtemp(prefix="skipsearch-pg-"))
    if os.getuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = folder / "data"

    def run(*command):
        return subprocess.run([*as_postgres, *command], capture_output=True, text=True, timeout=120)

    steps = [
        [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
         f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
        [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "skipsearch"],
    ]
    for step in steps:
        result = run(*step)
        if result.returncode != 0:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"could not start PostgreSQL ({Path(step[0]).name}): {(result.stderr or result.stdout)[-300:]}")
    yield f"postgresql://postgres@127.0.0.1:{port}/skipsearch"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_three_workers_on_three_machines_share_a_postgresql_study_and_a_killed_trial_is_retried(
        tmp_path, model_dir, postgres_url):
    """Three `--trials-only` processes started at once, as on three machines: they race to create
    the tables and the study and to enqueue the warm starts."""
    study = _write_study(tmp_path, model_dir, trials=24)
    workers = [_search(study, "--storage", postgres_url, "--trials-only") for _ in range(3)]
    try:
        killed = _kill_mid_trial(postgres_url, workers, lambda pid: pid in {w.pid for w in workers})
        for worker in workers:
            _, err = worker.communicate(timeout=TIMEOUT)
            assert worker.returncode in (0, -signal.SIGKILL), err
            assert "Traceback" not in err
    finally:
        for worker in workers:
            worker.kill()
    trials = _check_study(postgres_url, 24, killed)
    warm = [t.system_attrs["fixed_params"] for t in trials
            if t.state == TrialState.COMPLETE and t.user_attrs.get("warm_start")]
    assert len(warm) == len({json.dumps(p, sort_keys=True) for p in warm})  # each warm start evaluated once


@pytest.mark.slow
def test_workers_flag_shares_a_journal_file_and_a_killed_workers_trial_is_retried(tmp_path, model_dir):
    """`--workers 3` prepares the study once, runs three worker processes, then exports."""
    study = _write_study(tmp_path, model_dir, trials=24)
    journal = tmp_path / "toy.log"
    search = _search(study, "--storage", str(journal), "--workers", "3")
    try:
        killed = _kill_mid_trial(str(journal), [search], lambda pid: pid not in (None, search.pid), journal)
        out, err = search.communicate(timeout=TIMEOUT)
    finally:
        search.kill()
    assert search.returncode == 0, err
    assert "Traceback" not in err and err.count("was stopped by SIGKILL") == 1
    assert f"study toy: 24 trials in {journal}" in out
    trials = _check_study(str(journal), 24, killed)
    assert sum(bool(t.user_attrs.get("warm_start")) for t in trials if t.number < 4) == 4  # enqueued once, first
    assert (tmp_path / "toy.profile.yaml").is_file() and (tmp_path / "toy.html").is_file()
    slower = _load(str(journal)).user_attrs["rescored"][0]["decode_speedup"] < 1  # unrounded, unlike the profile's
    assert ("note: no skip set beat plain decoding" in out) == slower  # says so when it did not pay off
    assert main(["report", str(study), "--storage", str(journal), "-o", str(tmp_path / "again.html")]) == 0


# ---------------------------------------------------------------------------- --workers on GPUs


def _model(**fields):
    from skipsearch.config.studies import ModelConfig

    return ModelConfig(**fields)


def test_each_worker_gets_a_gpu_of_its_own():
    from skipsearch.cli.search_cmd import worker_gpus

    assert worker_gpus(3, _model(), ["0", "1", "2", "3"]) == [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in "012"]
    # names as this process's CUDA_VISIBLE_DEVICES gave them, in its order
    assert worker_gpus(2, _model(device="cuda"), ["5", "GPU-1c2f"]) == [
        {"CUDA_VISIBLE_DEVICES": "5"}, {"CUDA_VISIBLE_DEVICES": "GPU-1c2f"}]
    assert worker_gpus(2, _model(device_map="auto"), ["0", "1"]) == [{"CUDA_VISIBLE_DEVICES": "0"},
                                                                     {"CUDA_VISIBLE_DEVICES": "1"}]
    assert worker_gpus(2, _model(device_map={"model": "cuda", "lm_head": "cpu"}), ["0", "1"])[1] == {
        "CUDA_VISIBLE_DEVICES": "1"}


def test_workers_on_cpu_share_the_machine_as_before():
    from skipsearch.cli.search_cmd import worker_gpus

    assert worker_gpus(3, _model(), []) == [{}, {}, {}]  # auto without GPUs is the CPU
    assert worker_gpus(3, _model(device="cpu"), ["0"]) == [{}, {}, {}]
    assert worker_gpus(3, _model(device_map="cpu"), ["0"]) == [{}, {}, {}]
    assert worker_gpus(2, _model(device_map={"": "cpu"}), ["0"]) == [{}, {}]
    assert worker_gpus(1, _model(device="cuda:3"), ["0"]) == [{}]  # one worker: the trials run in this process


@pytest.mark.parametrize("workers, model, gpus, message", [
    (3, {}, ["0", "1"], "--workers 3: each worker needs a GPU of its own and 2 are visible; use --workers 2 or fewer, "
                        "or --device cpu"),
    (2, {"device": "cuda"}, [], "--workers 2: each worker needs a GPU of its own and 0 are visible; use --workers 1"),
    (2, {"device": "cuda:1"}, ["0", "1"], "--workers 2 gives each worker a GPU of its own, but the device cuda:1 "
                                          "names GPUs; use device auto or cuda"),
    (2, {"device_map": {"model": 0, "lm_head": 1}}, ["0", "1"],
     '--workers 2 gives each worker a GPU of its own, but the device_map {"model": 0, "lm_head": 1} names GPUs'),
])
def test_workers_that_cannot_each_have_a_gpu_are_refused(workers, model, gpus, message):
    from skipsearch.cli.search_cmd import worker_gpus
    from skipsearch.errors import SkipsearchError

    with pytest.raises(SkipsearchError) as info:
        worker_gpus(workers, _model(**model), gpus)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_more_workers_than_gpus_is_one_line_before_anything_is_written(tmp_path, model_dir, monkeypatch, capsys):
    from skipsearch.cli import search_cmd

    study = _write_study(tmp_path, model_dir, trials=4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(search_cmd, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(search_cmd.runner, "prepare", lambda *a, **k: pytest.fail("loaded the model"))
    before = sorted(tmp_path.rglob("*"))
    assert main(["search", str(study), "--workers", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["skipsearch: error: --workers 3: each worker needs a GPU of its own and 2 are visible; "
                                "use --workers 2 or fewer, or --device cpu"]
    assert sorted(tmp_path.rglob("*")) == before


def test_workers_are_started_with_the_loading_options(tmp_path):
    from skipsearch.cli import build_parser
    from skipsearch.cli.search_cmd import _worker_command

    args = build_parser().parse_args(["search", "s.yaml", "--dtype", "bfloat16", "--device-map", '{"": 0}',
                                      "--attn-implementation", "sdpa"])
    command = _worker_command(args, "sqlite:///s.db")
    assert command[command.index("--dtype") + 1] == "bfloat16"
    assert command[command.index("--attn-implementation") + 1] == "sdpa"
    assert json.loads(command[command.index("--device-map") + 1]) == {"": 0}
    assert "--device" not in command  # not given: the workers read the study's, as this process does


def _workers_of(parent: int | None, study: Path) -> list[int]:
    """The `--trials-only` processes of `study` whose parent is `parent` (any: None; Linux /proc)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            ppid = int(Path(stat).read_text().rsplit(")", 1)[1].split()[1])
            command = Path(stat).with_name("cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent in (None, ppid) and b"--trials-only" in command and str(study).encode() in command:
            found.append(int(Path(stat).parent.name))
    return found


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _signal_and_wait(pids: list[int], sig: int, states: str) -> None:
    """Send `sig` to each process and wait until /proc shows it in one of `states` (or gone)."""
    for pid in pids:
        os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while any(_proc_state(pid) not in (*states, "Z", "gone") for pid in pids):
        if time.monotonic() > deadline:
            pytest.fail(f"processes {pids} did not reach state {states} after {signal.Signals(sig).name}")
        time.sleep(0.01)


def _sqlite_counts(db: Path) -> tuple[int, int] | None:
    """(complete, running) trials, read from the SQLite file; None while it is locked or not made yet."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)) as connection:
            states = [state for (state,) in connection.execute("SELECT state FROM trials")]
    except sqlite3.OperationalError:
        return None
    return states.count("COMPLETE"), states.count("RUNNING")


def _pending_signals(pid: int) -> int:
    """The process's pending signals (process- and thread-directed) as a bit mask."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return functools.reduce(operator.or_, (int(line.split()[1], 16) for line in lines
                                           if line.startswith(("ShdPnd:", "SigPnd:"))), 0)


def _freeze_workers_mid_study(parent: subprocess.Popen, study: Path, db: Path, workers: int):
    """Stop (SIGSTOP) the parent's workers at a moment when the study holds >= 2 complete trials;
    returns (pids, complete, running) as read while they are stopped. The workers run between
    looks and are stopped while the test reads, so the count is exact however slowly the test
    (or SQLite, starved by busy writers) answers: the study cannot finish unseen."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if parent.poll() is not None:
            pytest.fail(f"the search exited before the test could act: {parent.communicate()[1][-2000:]}")
        pids = _workers_of(parent.pid, study)
        if len(pids) == workers:
            _signal_and_wait(pids, signal.SIGSTOP, "Tt")
            counts = _sqlite_counts(db)  # None if a worker stopped holding the write lock: look again
            if counts is not None and counts[0] >= 2:
                return pids, *counts
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)
    pytest.fail("timed out waiting for the workers")


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_cleanly_and_the_same_command_completes_the_study(tmp_path, model_dir):
    """On the default storage, a SQLite file that several worker processes write at once.

    Ctrl-C lands while the workers are stopped mid-study: on the tiny model the trials take
    seconds in all, and a test that only polls the study can find it finished before its Ctrl-C
    lands. The workers are let go once the `--workers` process has passed it on; each may then
    finish only the trial it had in flight, so a few trials are enough."""
    study = _write_study(tmp_path, model_dir, trials=16)
    db = tmp_path / "toy.db"
    url = f"sqlite:///{db}"
    first = _search(study, "--workers", "2")
    pids = []
    try:
        pids, complete, running = _freeze_workers_mid_study(first, study, db, workers=2)
        assert complete + running < 16, "the study was all but done before the test could stop its workers"
        first.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while not all(_pending_signals(pid) & (1 << (signal.SIGINT - 1)) for pid in pids):
            if time.monotonic() > deadline:
                pytest.fail("the --workers process did not pass Ctrl-C on to its workers")
            time.sleep(0.01)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        _, err = first.communicate(timeout=TIMEOUT)
    finally:
        first.kill()
        for pid in _workers_of(None, study):  # left behind by a failure above
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    assert first.returncode == 130, err
    line = err.strip().splitlines()[-1]  # a busy machine may add a warning about noisy cost timings above
    assert line.startswith("interrupted: ") and err.count("interrupted") == 1 and "Traceback" not in err, err
    assert line.endswith(f"of 16 trials done in {url}; run the same command to resume")
    done = int(line.split()[1])
    trials = _load(url).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == done
    assert complete <= done <= complete + running < 16  # only the trials in flight were finished
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert not (tmp_path / "toy.profile.yaml").exists()

    second = _search(study, "--workers", "2")
    out, err = second.communicate(timeout=TIMEOUT)
    assert second.returncode == 0, err
    assert f"study toy: 16 trials in {url}" in out
    _check_study(url, 16)
    assert (tmp_path / "toy.profile.yaml").is_file() and (tmp_path / "toy.html").is_file()
