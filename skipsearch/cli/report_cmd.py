"""`skipsearch report`: one offline HTML page for one or more finished studies."""

from __future__ import annotations

import shlex
from pathlib import Path

from skipsearch.cli.options import add_model_options, model_options
from skipsearch.config.studies import apply_overrides, default_storage_url, load_study, output_paths
from skipsearch.errors import SkipsearchError
from skipsearch.experiments.transfer import measure_transfer_matrix
from skipsearch.reporting.page import build_page, open_finished_study, write_report
from skipsearch.search.storages import redact


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write an HTML report of finished studies",
        description="Write one self-contained HTML page (works offline) with the optimisation history, "
                    "Pareto front, per-layer skip heat maps and measured speedups of one or more studies.")
    parser.add_argument("studies", nargs="+", metavar="STUDY.yaml", help="study configs (see studies/)")
    parser.add_argument("-o", "--output", metavar="FILE.html",
                        help="where to write the page (default: the first study's output.report)")
    parser.add_argument("--storage", metavar="URL",
                        help="where every study lives: sqlite:///FILE.db, postgresql://… or FILE.log "
                             "(default: each study's storage)")
    parser.add_argument("--transfer", action="store_true",
                        help="first decode every study's exported profile on every study's held-out prompts "
                             "(loads the model; the matrix is kept in the studies for later reports)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_model_options(parser, from_study=True, title="loading the model (with --transfer)")
    parser.set_defaults(func=run)


def run(args) -> int:
    loaded = []
    for study_path in args.studies:
        config = apply_overrides(load_study(study_path), **model_options(args))
        storage = args.storage or default_storage_url(config, study_path)
        loaded.append((open_finished_study(config, storage), config, study_path))
    if args.output:
        target = Path(args.output)
    else:
        target = output_paths(loaded[0][1])[1]
        if loaded[0][1].output.report is None:
            target.parent.mkdir(parents=True, exist_ok=True)  # the default reports/ folder is made
    command = "skipsearch " + shlex.join(["report", *args.studies] + (["-o", args.output] if args.output else [])
                                         + (["--storage", redact(args.storage)] if args.storage else [])
                                         + (["--transfer"] if args.transfer else []))
    if not target.parent.is_dir():
        raise SkipsearchError(f"output folder {target.parent} does not exist; create it or choose another path")
    if args.transfer:
        if len(loaded) < 2:
            raise SkipsearchError("--transfer needs at least two studies (tasks); give more STUDY.yaml files")
        measure_transfer_matrix([(study, config) for study, config, _ in loaded], progress=not args.no_progress)
    page = build_page(loaded, [command], args.storage)
    print(write_report(target, page))
    return 0
