"""`skipsearch report`: one offline HTML page for one or more finished studies."""

from __future__ import annotations

import shlex
from pathlib import Path

import optuna

from skipsearch.cli.model_options import add_model_options, model_options
from skipsearch.config.profiles import Profile, load_profile
from skipsearch.config.studies import StudyConfig, apply_overrides, default_storage_url, load_study, output_paths
from skipsearch.errors import SkipsearchError, first_line
from skipsearch.experiments.transfer import TransferTask, measure_transfer
from skipsearch.reporting import data as reports
from skipsearch.search import runner
from skipsearch.search.storages import open_storage, redact, storage_file


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


def open_finished_study(config: StudyConfig, storage: str) -> optuna.Study:
    """Load an existing study from any storage without creating anything; a missing one is one clear line."""
    missing = SkipsearchError(f"no study {config.name} in {redact(storage)}; run skipsearch search STUDY.yaml first")
    path = storage_file(storage)
    if path is not None and not path.is_file():
        raise missing  # opening would create an empty database or journal file
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = open_storage(storage)
    try:
        return optuna.load_study(study_name=config.name, storage=backend)
    except KeyError:
        raise missing from None
    except Exception as exc:  # SQLAlchemy, psycopg and file errors all mean the same to the user
        raise SkipsearchError(f"no study {config.name} in {redact(storage)} ({first_line(exc)}); "
                              "run skipsearch search STUDY.yaml first") from None


def _profile_path(study: optuna.Study, config: StudyConfig) -> Path:
    exported = study.user_attrs.get("exported_profile")
    return Path(exported) if isinstance(exported, str) else output_paths(config)[0]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def _search_command(study_path, profile_text: str | None, storage: str | None) -> str:
    """The search command recorded in the profile, else the plain one for the study file."""
    provenance = (reports.profile_mapping(profile_text).get("provenance") or {}) if profile_text else {}
    if isinstance(provenance, dict) and isinstance(provenance.get("command"), str):
        return provenance["command"]
    return "skipsearch " + shlex.join(["search", str(study_path)] + (["--storage", redact(storage)] if storage else []))


def build_page(studies: list[tuple[optuna.Study, StudyConfig, str | Path]], commands: list[str],
               explicit_storage: str | None = None, search_commands: list[str] | None = None) -> str:
    """The report page for (study, config, study file) triples.

    The commands shown are each study's search command (given, else the one its profile
    recorded, else the plain one), then `commands`."""
    texts, compare, searches = {}, [], []
    for i, (study, config, study_path) in enumerate(studies):
        text = _read(_profile_path(study, config))
        if text is not None:
            texts[config.name] = text
        searches.append(search_commands[i] if search_commands else _search_command(study_path, text, explicit_storage))
        csv_path = reports.compare_csv_path(config.name)
        if csv_path.is_file():
            rows = reports.read_compare_csv(csv_path)
            compare += [{"study": config.name, **row} for row in rows] if len(studies) > 1 else rows
    data = reports.gather_report_data([s for s, _, _ in studies], texts, searches + commands,
                                      compare, configs={c.name: c for _, c, _ in studies})
    return reports.render_report(data, reports.build_figures(data))


def write_study_report(study: optuna.Study, config: StudyConfig, study_path: str | Path, storage: str,
                       path: str | Path, command: str) -> Path:
    """Write the report of one study; for `skipsearch search` to call when it finishes.

    `command` is the search command that just ran (shown as the one to reproduce), followed by
    the `skipsearch report` command that rewrites this page later."""
    custom = storage != default_storage_url(config, study_path)
    again = ["report", str(study_path), "-o", str(path)] + (["--storage", redact(storage)] if custom else [])
    page = build_page([(study, config, study_path)], ["skipsearch " + shlex.join(again)],
                      search_commands=[command])
    return reports.write_report(path, page)


def exported_profile(study: optuna.Study, config: StudyConfig) -> Profile:
    path = _profile_path(study, config)
    if not path.is_file():
        raise SkipsearchError(f"study {config.name} has no exported profile at {path}; "
                              f"run skipsearch search for it first")
    return load_profile(path)


def measure_transfer_matrix(loaded: list[tuple[optuna.Study, StudyConfig, str]], progress: bool) -> None:
    """Prepare every study on one loaded model and store the transfer matrix in the studies."""
    if len(loaded) < 2:
        raise SkipsearchError("--transfer needs at least two studies (tasks); give more STUDY.yaml files")
    profiles = [exported_profile(study, config) for study, config, _ in loaded]
    model = runner.load_configured_model(loaded[0][1])
    tasks = [TransferTask(runner.prepare(config, progress, loaded=model), study, profile)
             for (study, config, _), profile in zip(loaded, profiles)]
    measure_transfer(tasks, progress)


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
        measure_transfer_matrix(loaded, progress=not args.no_progress)
    page = build_page(loaded, [command], args.storage)
    print(reports.write_report(target, page))
    return 0
