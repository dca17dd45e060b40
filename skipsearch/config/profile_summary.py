"""A profile in words, as `skipsearch profile show` prints it and an exported model card quotes
it: what it was made for, what it skips, how it drafts, what was measured and where."""

from __future__ import annotations

import dataclasses

from skipsearch.config.profiles import Profile


def _layers(indices: tuple[int, ...]) -> str:
    return ", ".join(map(str, indices)) or "none"


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
        f"  attention: {_layers(skip.attention)}",
        f"  mlp:       {_layers(skip.mlp)}",
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
