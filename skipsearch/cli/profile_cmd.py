"""`skipsearch profile validate|show`: check a profile file (optionally against a model) and summarise it."""

from __future__ import annotations

import dataclasses

from ..models import load_model
from ..profiles import Profile, check_profile_for_model, load_profile
from .model_options import add_model_options, model_options


def register(subparsers) -> None:
    parser = subparsers.add_parser("profile", help="validate or show a profile file")
    actions = parser.add_subparsers(dest="profile_command", required=True, metavar="ACTION")

    validate = actions.add_parser(
        "validate", help="check a profile file; with --model, also check that it was made for that model"
    )
    validate.add_argument("file", metavar="FILE", help="profile .yaml file")
    validate.add_argument(
        "--model", metavar="NAME",
        help="also load this model (embedded name, hub id, folder or .gguf) and check that the profile fits it",
    )
    add_model_options(validate)
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
    print(
        f"OK: {args.file} (model {profile.model.name}, task {profile.task}, "
        f"{len(skip.attention)} attention + {len(skip.mlp)} MLP sublayers skipped{fits})"
    )
    return 0


def run_show(args) -> int:
    print("\n".join(summary_lines(load_profile(args.file), args.file)))
    return 0


def _layers(indices: tuple[int, ...]) -> str:
    return ", ".join(map(str, indices)) or "none"


def summary_lines(profile: Profile, source: str) -> list[str]:
    model, skip, draft = profile.model, profile.skip, profile.draft
    lines = [
        f"profile:   {source} (skipsearch profile v{profile.skipsearch_profile})",
        f"model:     {model.name} ({model.architecture}, {model.num_hidden_layers} layers, {model.fingerprint})",
        f"task:      {profile.task}",
        f"skipped:   {len(skip)} of {2 * model.num_hidden_layers} sublayers (layer indices are 0-based)",
        f"  attention: {_layers(skip.attention)}",
        f"  mlp:       {_layers(skip.mlp)}",
        f"draft:     up to {draft.max_draft_tokens} tokens; stop when the draft's top-1 probability "
        f"< {draft.confidence_threshold:g}",
    ]
    measured = {k: v for k, v in dataclasses.asdict(profile.metrics).items() if v is not None} if profile.metrics else {}
    lines.append("metrics:" + ("" if measured else "   none recorded"))
    lines += [f"  {key.replace('_', ' ')}: {f'{value:g}' if isinstance(value, float) else value}"
              for key, value in measured.items()]
    if measured:
        # The skip set is a property of the weights; only the numbers depend on dtype and device.
        lines.append(f"metrics measured in {measured.get('dtype', 'an unrecorded dtype')} on "
                     f"{measured.get('device', 'an unrecorded device')}; the profile is usable in any dtype")
    lines.append("provenance:" + ("" if profile.provenance else " none recorded"))
    lines += [f"  {key}: {value}" for key, value in profile.provenance.items()]
    return lines
