"""`skipsearch profile validate|show`: check a profile file (optionally against a model) and summarise it."""

from __future__ import annotations

from skipsearch.cli.options import add_model_arguments, model_options
from skipsearch.config.profile_summary import summary_lines
from skipsearch.config.profiles import check_profile_for_model, load_profile
from skipsearch.engine.models import load_model


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
