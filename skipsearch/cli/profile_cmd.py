"""`skipsearch profile validate|show|import|export-skip`: check a profile file (optionally against a
model), summarise it, and turn the skip sets of the research code (SWIFT's and Self-SD's
skip_layers.json, `skipsearch.config.research_skips`) into profiles and back."""

from __future__ import annotations

from pathlib import Path

from skipsearch.cli.options import add_model_arguments, model_options
from skipsearch.config.profile_summary import summary_lines
from skipsearch.config.profiles import check_profile_for_model, dump_profile, load_profile
from skipsearch.config.research_skips import (
    FORMATS,
    choose_entry,
    imported_profile,
    read_skip_entries,
    render_skip_file,
    task_of_entry,
)
from skipsearch.engine.models import load_model
from skipsearch.errors import SkipsearchError
from skipsearch.files import write_atomic


def register(subparsers) -> None:
    parser = subparsers.add_parser("profile", help="validate or show a profile file")
    actions = parser.add_subparsers(dest="profile_command", required=True, metavar="ACTION")

    validate = actions.add_parser(
        "validate", help="check a profile file; with --model, also check that it was made for that model"
    )
    validate.add_argument("file", metavar="FILE", help="profile .yaml file")
    add_model_arguments(validate, optional_for="check that the profile fits it")
    validate.set_defaults(func=run_validate)

    show = actions.add_parser("show", help="print a readable summary of a profile file")
    show.add_argument("file", metavar="FILE", help="profile .yaml file")
    show.set_defaults(func=run_show)

    imported = actions.add_parser(
        "import", help="make a profile of a SWIFT or Self-SD skip_layers.json entry for a model",
        description="Read a skip_layers.json of SWIFT or Self-SD (entries of {\"attention\": [...], \"mlp\": [...]}, "
                    "0-based layer ids) and write a version 3 profile of one entry for --model: layer-skip drafting "
                    "only, the default draft settings, the model's fingerprint.")
    imported.add_argument("file", metavar="FILE", help="the research skip file (.json)")
    imported.add_argument("--entry", metavar="NAME", help="the entry to import (needed when the file holds several)")
    imported.add_argument("--task", metavar="NAME",
                          help="the profile's task (default: the entry name after its last underscore, as SWIFT "
                               "names entries MODEL_TASK; else the whole entry name)")
    imported.add_argument("-o", "--output", metavar="PROFILE.yaml", help="write the profile here (default: print it)")
    add_model_arguments(imported, optional_for="make the profile for it (required)")
    imported.set_defaults(func=run_import)

    export = actions.add_parser(
        "export-skip", help="write a profile's skip set as a SWIFT or Self-SD skip_layers.json entry",
        description="Write the profile's skip set as an entry of SWIFT's (named MODEL_TASK) or Self-SD's (named MODEL) "
                    "skip_layers.json; an existing -o file keeps its other entries.")
    export.add_argument("file", metavar="PROFILE", help="profile .yaml file")
    export.add_argument("-o", "--output", metavar="FILE.json", help="add the entry to this file (default: print it)")
    export.add_argument("--format", choices=FORMATS, default="swift",
                        help="whose naming the entry follows (default swift)")
    export.set_defaults(func=run_export_skip)


def run_validate(args) -> int:
    profile = load_profile(args.file)
    fits = ""
    if args.model:
        loaded = load_model(args.model, **model_options(args))
        check_profile_for_model(profile, loaded.model)
        fits = f"; fits the loaded model {args.model}"
    skip = profile.skip
    ngram = " + n-gram drafting" if profile.draft.ngram else ""
    print(
        f"OK: {args.file} (model {profile.model.name}, task {profile.task}, "
        f"{len(skip.attention)} attention + {len(skip.mlp)} MLP sublayers skipped{ngram}{fits})"
    )
    return 0


def run_show(args) -> int:
    print("\n".join(summary_lines(load_profile(args.file), args.file)))
    return 0


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SkipsearchError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SkipsearchError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def run_import(args) -> int:
    if not args.model:
        raise SkipsearchError("profile import needs --model: the model the skip set is for")
    name, skip = choose_entry(read_skip_entries(_read_text(args.file, "skip file"), args.file), args.entry, args.file)
    loaded = load_model(args.model, **model_options(args))
    profile = imported_profile(skip, loaded.model, args.model, args.task or task_of_entry(name), args.file, name)
    return _write_or_print(dump_profile(profile), args.output, "profile",
                           f"entry {name!r} as {skip.describe()} for {args.model}")


def run_export_skip(args) -> int:
    profile = load_profile(args.file)
    existing = _read_text(args.output, "skip file") if args.output and Path(args.output).is_file() else None
    text = render_skip_file(profile, args.format, existing, args.output or "")
    return _write_or_print(text, args.output, "skip file", f"{profile.skip.describe()} ({args.format})")


def _write_or_print(text: str, output: str | None, what: str, summary: str) -> int:
    """To the file named, atomically, with one line saying what went there; else to stdout."""
    if output:
        write_atomic(output, text, what=what)
        print(f"wrote {output}: {summary}")
    else:
        print(text, end="")
    return 0
