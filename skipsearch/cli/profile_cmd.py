"""`skipsearch profile validate|show`: check a profile file (optionally against a model) and summarise it."""

from __future__ import annotations

import dataclasses

from skipsearch.cli.model_options import add_model_options, model_options
from skipsearch.config.profiles import Profile, check_profile_for_model, load_profile
from skipsearch.engine.models import load_model


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
    ngram = " + n-gram drafting" if profile.draft.ngram else ""
    print(
        f"OK: {args.file} (model {profile.model.name}, task {profile.task}, "
        f"{len(skip.attention)} attention + {len(skip.mlp)} MLP sublayers skipped{ngram}{fits})"
    )
    return 0


def run_show(args) -> int:
    print("\n".join(summary_lines(load_profile(args.file), args.file)))
    return 0


def _drafting_lines(profile: Profile) -> list[str]:
    """What drafts each round and how the policy chooses."""
    skip, draft = profile.skip, profile.draft
    lines = []
    if skip:
        lines.append(f"draft:     layer skip up to {draft.max_draft_tokens} tokens; stop when the draft's top-1 "
                     f"probability < {draft.confidence_threshold:g}")
    ngram = draft.ngram
    lines.append("n-gram:    none" if ngram is None else
                 f"n-gram:    up to {ngram.max_tokens} tokens after the latest earlier occurrence of the context's "
                 f"last {ngram.max_n} down to {ngram.min_n} tokens")
    policy, costs = draft.policy, draft.costs
    if policy is None:
        # a fixed choice; only version 1 files may lack both a skip set and n-grams
        lines.append("policy:    none: the skip set drafts every round" if skip else
                     "policy:    none: an n-gram draft every round whose context suffix occurred before" if ngram else
                     "policy:    none, and nothing drafts: every token is a plain step")
        return lines
    # only the priors and costs of the drafters this policy uses
    options = ["a plain step"] + (["an n-gram draft"] if ngram else []) + (["a layer-skip draft"] if skip else [])
    priors = ([f"n-gram {policy.ngram_prior:g}"] if ngram else []) + (
        [f"layer skip {policy.layer_skip_prior:g}"] if skip else [])
    verify = ", ".join(f"{cost:g}" for cost in costs.verify)
    lines += [
        f"policy:    each round {', '.join(options[:-1])} or {options[-1]}, whichever predicts the most tokens "
        f"per second; drafts when that beats a plain step by x{policy.margin:g}",
        f"  priors:  per-token acceptance {', '.join(priors)}, worth {policy.prior_weight:g} drafted tokens",
        f"  costs:   in plain steps: verifying 1..{len(costs.verify)} tokens {verify}"
        + (f"; one draft step {costs.draft_step:g}" if skip else ""),
    ]
    return lines


def summary_lines(profile: Profile, source: str) -> list[str]:
    model, skip = profile.model, profile.skip
    only = ": n-gram only" if not skip and profile.draft.ngram else ""
    lines = [
        f"profile:   {source} (skipsearch profile v{profile.skipsearch_profile})",
        f"model:     {model.name} ({model.architecture}, {model.num_hidden_layers} layers, {model.fingerprint})",
        f"task:      {profile.task}",
        f"skipped:   {len(skip)} of {2 * model.num_hidden_layers} sublayers{only} (layer indices are 0-based)",
        f"           {skip.describe()}",
        *_drafting_lines(profile),
    ]
    measured = ({k: v for k, v in dataclasses.asdict(profile.metrics).items() if v is not None}
                if profile.metrics else {})
    lines.append("metrics:" + ("" if measured else "   none recorded"))
    lines += [f"  {key.replace('_', ' ')}: {f'{value:g}' if isinstance(value, float) else value}"
              for key, value in measured.items()]
    if measured:
        # The skip set is a property of the weights; only the numbers depend on dtype and device.
        costs = " and the policy's costs" if profile.draft.costs else ""
        lines.append(f"metrics{costs} measured in {measured.get('dtype', 'an unrecorded dtype')} on "
                     f"{measured.get('device', 'an unrecorded device')}; the profile is usable in any dtype")
    lines.append("provenance:" + ("" if profile.provenance else " none recorded"))
    lines += [f"  {key}: {value}" for key, value in profile.provenance.items()]
    return lines
