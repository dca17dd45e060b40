"""`skipsearch search`: run (or resume) a study, re-score its best candidates, export profiles."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .. import runner
from . import report_cmd
from ..studies import apply_overrides, default_storage_url, load_study, output_paths, parse_skip_budget
from ..search import OBJECTIVES, SAMPLERS


def add_study_overrides(parser) -> None:
    parser.add_argument("study", metavar="STUDY.yaml", help="study config (see studies/)")
    parser.add_argument("--trials", type=int, metavar="N", help="finished trials the study should hold in total")
    parser.add_argument("--sampler", choices=SAMPLERS)
    parser.add_argument("--objective", choices=OBJECTIVES)
    parser.add_argument("--skip-budget", type=parse_skip_budget, metavar="K",
                        help="sublayers to skip: a fraction of the eligible ones (0.2) or a count (11)")
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: a SQLite file next to the study)")
    parser.add_argument("--seed", type=int, metavar="S")
    parser.add_argument("--data", metavar="FILE", help="task data file (specbench, datasets)")
    parser.add_argument("--category", metavar="NAME", help="task category to keep")


def configured(args):
    """The study config with command-line overrides, its storage URL and output paths."""
    config = load_study(args.study)
    config = apply_overrides(config, trials=args.trials, sampler=args.sampler, objective=args.objective,
                             skip_budget=args.skip_budget, storage=args.storage, seed=args.seed, data=args.data,
                             category=args.category, output_profile=getattr(args, "output", None))
    return config, default_storage_url(config, args.study)


def register(subparsers) -> None:
    parser = subparsers.add_parser("search", help="search a skip profile for a task and export it",
                                   description="Run or resume a study; re-running the same command resumes it.")
    add_study_overrides(parser)
    parser.add_argument("--output", metavar="PROFILE.yaml", help="where to write the best profile")
    parser.add_argument("--top", type=int, default=1, metavar="N", help="export the N best profiles (default 1)")
    parser.add_argument("--warm-start", nargs="+", default=[], metavar="FILE",
                        help="profiles whose skip sets are tried first")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    config, storage = configured(args)
    profile_path, report_path = output_paths(config)
    runner.check_output_path(profile_path, is_default=config.output.profile is None)
    runner.check_output_path(report_path, is_default=config.output.report is None)
    progress = not args.no_progress
    study = runner.open_configured_study(config, storage)
    setup = runner.prepare(config, progress)
    warm = list(config.search.warm_start) + list(args.warm_start)
    runner.run_search(setup, study, warm, progress)
    measurements = runner.rescore(setup, study, args.top, progress)
    command = "skipsearch " + shlex.join(sys.argv[1:])
    written = runner.export_profiles(setup, measurements, study, storage, profile_path, args.top, command)
    report = report_cmd.write_study_report(study, config, args.study, storage, report_path, command)
    best = measurements[0]
    print(f"study {config.name}: {len(runner.completed_trials(study))} trials in {storage}")
    print(f"best skip set: {best.skip_set.describe()} ({len(best.skip_set)} of {len(setup.eligible)} sublayers)")
    print(f"held-out: matchness {best.matchness:.3f}, acceptance {best.acceptance_rate:.3f}, "
          f"mean accepted tokens {best.mean_accepted_tokens:.2f}, speedup {best.speedup:.2f}x measured / "
          f"{best.predicted_speedup:.2f}x predicted ({setup.costs.device})")
    print(f"report: {report}")
    for path in written:
        print(Path(path))
    return 0
