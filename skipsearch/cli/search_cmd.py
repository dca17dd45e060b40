"""`skipsearch search`: run (or resume) a study, re-score its best candidates, export profiles.

Any number of `search` processes, on one machine or many, may share one study through its
storage; each takes trials until the study holds `--trials` complete ones. `--workers N`
prepares the study, runs its trials in N processes of their own (`--trials-only`), each on a GPU
of its own when the model runs on CUDA, and re-scores and exports once they are done. Bad input
fails before anything is loaded or written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from skipsearch.cli.options import add_study_overrides, configured, device_map_argument
from skipsearch.config.profiles import decode_fields, load_profile
from skipsearch.config.studies import (
    ModelConfig,
    StudyConfig,
    output_paths,
)
from skipsearch.engine.drafting import NgramSettings
from skipsearch.engine.lossless import KINDS, LosslessCounts
from skipsearch.engine.models import runs_on_cuda
from skipsearch.errors import SkipsearchError
from skipsearch.experiments.bench import (
    NGRAM_ONLY,
    PROFILE_POLICY,
    PROMPT_LOOKUP,
    BenchPrompt,
    BenchSettings,
    run_bench,
)
from skipsearch.reporting.page import write_study_report
from skipsearch.search import runner
from skipsearch.search.storages import check_storage, redact
from skipsearch.search.workers import Interrupts, trial_counts

log = logging.getLogger(__name__)

STOP_SECONDS = 300  # how long interrupted workers may take to finish their trials before they are killed


def register(subparsers) -> None:
    parser = subparsers.add_parser("search", help="search a skip profile for a task and export it",
                                   description="Run or resume a study; re-running the same command resumes it.")
    add_study_overrides(parser)
    parser.add_argument("--output", metavar="PROFILE.yaml", help="where to write the best profile")
    parser.add_argument("--top", type=int, default=1, metavar="N", help="export the N best profiles (default 1)")
    parser.add_argument("--warm-start", nargs="+", default=[], metavar="FILE",
                        help="profiles whose skip sets are tried first")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run the trials in N processes on this machine, sharing the study, each on a GPU "
                             "of its own when the model runs on CUDA (default 1: in this process)")
    parser.add_argument("--trials-only", action="store_true",
                        help="only run trials, then exit quietly (also on Ctrl-C): for extra workers while "
                             "another process re-scores and exports")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def _outputs(config: StudyConfig) -> list[tuple[Path, bool]]:
    """(path, is_default) of the profile and the report."""
    profile, report = output_paths(config)
    return [(profile, config.output.profile is None), (report, config.output.report is None)]


def _worker_command(args, storage: str) -> list[str]:
    """This search as an extra worker: the same study, overrides and storage, trials only."""
    command = [sys.executable, "-m", "skipsearch"] + (["-v"] if args.verbose else [])
    command += ["search", args.study, "--storage", storage, "--trials-only", "--no-progress"]
    for flag, value in [("--trials", args.trials), ("--sampler", args.sampler), ("--objective", args.objective),
                        ("--skip-budget", args.skip_budget), ("--seed", args.seed), ("--data", args.data),
                        ("--category", args.category), ("--heldout-prompts", args.heldout_prompts),
                        ("--dtype", args.dtype), ("--device", args.device),
                        ("--attn-implementation", args.attn_implementation)]:
        if value is not None:
            command += [flag, str(value)]
    if args.device_map is not None:
        command += ["--device-map", device_map_argument(args.device_map)]
    return command


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them for a child process."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def worker_gpus(workers: int, model: ModelConfig, gpus: Sequence[str]) -> list[dict[str, str]]:
    """Each worker's extra environment: one GPU of its own (CUDA_VISIBLE_DEVICES, so it is that
    worker's cuda:0) when the model runs on CUDA, nothing on CPU.

    A model pinned to one GPU by number, or a device map that names GPUs, cannot be spread
    over workers that each see one GPU; more workers than GPUs would share them."""
    if workers == 1 or not runs_on_cuda(model.device, model.device_map, cuda_available=len(gpus) > 0):
        return [{} for _ in range(workers)]
    target = model.device if model.device_map is None else model.device_map
    if any(isinstance(value, int) or value.startswith("cuda:") for value in
           ([target] if isinstance(target, str) else target.values())):
        where = f"device {target}" if model.device_map is None else f"device_map {device_map_argument(target)}"
        raise SkipsearchError(f"--workers {workers} gives each worker a GPU of its own, but the {where} names GPUs; "
                              "use device auto or cuda (or a device map such as auto) with --workers")
    if workers > len(gpus):
        raise SkipsearchError(f"--workers {workers}: each worker needs a GPU of its own and {len(gpus)} "
                              f"{'is' if len(gpus) == 1 else 'are'} visible; use --workers {max(1, len(gpus))} or "
                              "fewer, or --device cpu")
    return [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus[:workers]]


def _versus_transformers(setup, profile) -> str:
    """The exported policy beside transformers' greedy `generate` and its best prompt lookup, as
    whole calls on the held-out prompts, interleaved (the bench's rows for them)."""
    draft, fields = profile.draft, decode_fields(profile)
    settings = BenchSettings(
        max_new_tokens=setup.config.task.reference_tokens, skip_set=profile.skip if len(profile.skip) else None,
        max_draft_tokens=draft.max_draft_tokens, confidence_threshold=draft.confidence_threshold,
        early_exit_layers=(), ngram=NgramSettings(), policy_ngram=fields["ngram"], policy=fields["policy"],
        policy_priors=fields["priors"], cost_repeats=0, warmup_tokens=4)
    prompts = [BenchPrompt(r.prompt_id, list(r.prompt_ids)) for r in setup.heldout_refs]
    rows = run_bench(setup.loaded.model, prompts, settings).rows
    ours = next(r for r in rows if r.method == PROFILE_POLICY)
    defaults = next(r for r in rows if r.method == NGRAM_ONLY)
    lookup = next(r for r in rows if r.method.startswith(PROMPT_LOOKUP))
    return (f"exported profile, whole calls on the {len(prompts)} held-out prompts: "
            f"{ours.end_to_end_speedup:.2f}x transformers generate, "
            f"{ours.tokens_per_s / lookup.tokens_per_s:.2f}x its {lookup.method}, "
            f"{ours.tokens_per_s / defaults.tokens_per_s:.2f}x skipsearch without a profile")


def _policy_line(measurement) -> str:
    """What the exported policy drafts with and which drafter carried its held-out rounds."""
    ngram = measurement.ngram
    parts = [f"skip set of {len(measurement.skip_set)} sublayers" if len(measurement.skip_set) else "no skip set",
             "n-gram drafts (min_n {}, max_n {}, up to {} tokens)".format(*ngram) if ngram else "no n-gram drafts",
             "the runtime's choice each round (Thompson sampling on the search's evidence)"]
    both = measurement.ngram_layer_skip_rounds
    layer_skip = measurement.rounds - measurement.ngram_rounds - both
    return (", ".join(parts) + f"; held-out rounds: {measurement.ngram_rounds} n-gram, {layer_skip} layer-skip, "
            f"{both} n-gram continued by the skip set, {measurement.plain_steps} plain steps")


def _interrupt(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)


def _stop(processes: list[subprocess.Popen]) -> None:
    """Pass Ctrl-C on to the workers, which finish their trials and stop, and wait for them;
    a second Ctrl-C is passed on too and stops them at once."""
    _interrupt(processes)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        while True:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
                break
            except KeyboardInterrupt:
                _interrupt(processes)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                break


@contextlib.contextmanager
def _interrupts_held_back() -> Iterator[None]:
    """SIGINT blocked in this thread, so processes started meanwhile start with it blocked too
    (the signal mask survives exec); a worker lets it in (`_let_interrupts_in`) once it can
    stop cleanly. A Ctrl-C passed on while a worker still imports its libraries then waits for
    it, instead of being a KeyboardInterrupt traceback from the middle of an import."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _let_interrupts_in() -> None:
    """Unblock SIGINT that `_interrupts_held_back` blocked; one held back arrives now."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _run_workers(args, storage: str, study, trials: int, progress: bool, gpus: list[dict[str, str]]) -> None:
    """Run the trials in `args.workers` processes of their own, sharing the CPU threads, each with
    its environment from `worker_gpus`, and wait.

    They run in their own sessions, so Ctrl-C reaches only this process, which passes it on
    (`_stop`); each ends its trial cleanly, as a worker started by hand would. From before the
    first worker starts, Ctrl-C is only noted (`Interrupts`) and acted on between steps: one
    that lands while workers start cannot leave a started worker running on unseen, nor break
    off a read of the study. A worker that has not reached its trial loop yet stops as it gets there."""
    share = max(1, torch.get_num_threads() // args.workers)
    env = {"OMP_NUM_THREADS": str(share), **os.environ}
    interrupts = Interrupts()
    processes: list[subprocess.Popen] = []
    bar = tqdm(total=trials, desc=f"trials ({args.workers} workers)", disable=not progress)
    try:
        with interrupts.installed():  # raises KeyboardInterrupt on leaving if Ctrl-C came
            with _interrupts_held_back():
                for gpu in gpus:
                    if interrupts.pending:
                        break
                    processes.append(subprocess.Popen(_worker_command(args, storage), env={**env, **gpu},
                                                      stdin=subprocess.DEVNULL, start_new_session=True))
            while not interrupts.pending and any(process.poll() is None for process in processes):
                bar.n = min(trial_counts(study)[0], trials)
                bar.refresh()
                with interrupts.waiting():
                    time.sleep(1)
    except BaseException:
        _stop(processes)
        raise
    finally:
        bar.close()
    for process in processes:
        if process.returncode < 0:
            log.warning("worker %d was stopped by %s", process.pid, signal.Signals(-process.returncode).name)
        elif process.returncode != 0:
            log.warning("worker %d exited with code %d; its error is printed above", process.pid, process.returncode)
    complete, _ = trial_counts(study)
    if complete < trials:
        raise SkipsearchError(f"the workers stopped with {complete} of {trials} trials done; fix the error they "
                              "printed and run the same command to resume")


def _interrupted(study, trials: int, storage: str) -> str:
    if study is None:
        return "interrupted while loading, before any trial; run the same command to start again"
    done = min(trial_counts(study)[0], trials)
    return f"interrupted: {done} of {trials} trials done in {redact(storage)}; run the same command to resume"


def run(args) -> int:
    if args.workers < 1:
        raise SkipsearchError(f"--workers: expected an integer >= 1, got {args.workers}")
    config, storage = configured(args)
    gpus = worker_gpus(args.workers, config.model, visible_gpus())
    outputs = [] if args.trials_only else _outputs(config)
    for path, is_default in outputs:
        if not is_default:
            runner.check_output_path(path, is_default=False)
    check_storage(storage)
    progress = not args.no_progress
    warm = list(config.search.warm_start) + list(args.warm_start)
    study = None
    try:
        if args.trials_only:
            _let_interrupts_in()  # started by --workers: a Ctrl-C passed on during startup arrives here
        setup = runner.prepare(config, progress, warm_starts=warm)
        study = runner.open_configured_study(config, storage, seeded=not args.trials_only)
        runner.prepare_study(setup, study, progress)
        if args.workers == 1:
            runner.run_search(setup, study, progress)
        else:
            _run_workers(args, storage, study, config.search.trials, progress, gpus)
    except KeyboardInterrupt:
        if not args.trials_only:
            print(_interrupted(study, config.search.trials, storage), file=sys.stderr)
        return 130
    if args.trials_only:
        return 0
    for path, is_default in outputs:
        runner.check_output_path(path, is_default)  # makes the default reports/ folder
    (profile_path, _), (report_path, _) = outputs
    measurements = runner.rescore(setup, study, args.top, progress)
    command = redact("skipsearch " + shlex.join(sys.argv[1:]))
    written = runner.export_profiles(setup, measurements, study, storage, profile_path, args.top, command)
    report = write_study_report(study, config, args.study, storage, report_path, command)
    best = measurements[0]
    print(f"study {config.name}: {len(runner.completed_trials(study))} trials in {redact(storage)}")
    if len(best.skip_set):
        print(f"best skip set: {best.skip_set.describe()} ({len(best.skip_set)} of {len(setup.eligible)} sublayers)")
    else:  # matchness means nothing without a skipped model: 1.0 by definition
        print(f"best skip set: none (n-gram drafting alone beat every skip set of the {len(setup.eligible)} sublayers)")
    matchness = f"matchness {best.matchness:.3f}, " if len(best.skip_set) else ""
    runtime = (f"acceptance {best.acceptance_rate:.3f}, mean accepted tokens {best.mean_accepted_tokens:.2f}, "
               f"decode speedup {best.decode_speedup:.2f}x measured")
    if setup.engine_draft:
        print(f"held-out, as an engine's draft model (own KV cache, drafts of {best.max_draft_tokens} stopping below "
              f"{best.confidence_threshold}): {matchness}{best.predicted_speedup:.2f}x plain decoding predicted "
              f"({setup.costs.device}); export it with `skipsearch export-draft PROFILE DIR --study {args.study}`")
        print(f"held-out, in skipsearch's runtime: {runtime} ({setup.costs.device})")
    else:
        print(f"held-out: {matchness}{runtime} / {best.predicted_speedup:.2f}x predicted ({setup.costs.device})")
    print(f"drafting policy: {_policy_line(best)}")
    counts = LosslessCounts(**{kind: sum(m.lossless[kind] for m in measurements) for kind in KINDS})
    print(f"lossless check ({setup.costs.dtype}, {len(measurements)} candidates x {len(setup.heldout_refs)} held-out "
          f"prompts against plain decoding): {counts.describe()}")
    if best.decode_speedup < 1:
        print(f"note: no drafting policy beat plain decoding on this {setup.costs.device}; at run time the decoder's "
              "fallback switches to plain decoding, so this profile costs little where it does not help")
    print(_versus_transformers(setup, load_profile(written[0])))
    print(f"report: {report}")
    for path in written:
        print(Path(path))
    return 0
