"""A profile in words, as `skipsearch profile show` prints it and an exported model card quotes
it: what it was made for, what it skips, how it drafts, what was measured and where."""

from __future__ import annotations

import dataclasses

from skipsearch.config.profiles import Profile, decode_fields
from skipsearch.engine.drafting import AcceptanceCounts


def _layers(indices: tuple[int, ...]) -> str:
    return ", ".join(map(str, indices)) or "none"


def _counts(counts: AcceptanceCounts) -> str:
    rates = [f"{rate:.2f}" for rate in counts.rates()[:4] if rate is not None]
    return f"{counts.drafts:g} drafts, accepted by position {' / '.join(rates) or '-'}"


def _drafting_lines(profile: Profile) -> list[str]:
    """What may draft, how the runtime chooses, and the evidence the profile gives it."""
    skip, draft = profile.skip, profile.draft
    fields = decode_fields(profile)
    lines = []
    if skip:
        lines.append(f"draft:     layer skip up to {draft.max_draft_tokens} tokens; stop when the draft's top-1 "
                     f"probability < {draft.confidence_threshold:g}")
    ngram = fields["ngram"]
    lines.append("n-gram:    off" if ngram is None else
                 f"n-gram:    up to {ngram.max_tokens} tokens, the most frequent continuation of the context's "
                 f"last {ngram.max_n} down to {ngram.min_n} tokens"
                 + (" (the runtime's default: this version's null meant the search's choice)"
                    if draft.ngram is None else ""))
    lines.append("runtime:   each round a plain step or a draft, chosen by Thompson sampling with this device's "
                 "costs and what it learns while decoding")
    priors = draft.priors
    if priors is not None:
        if priors.layer_skip is not None:
            lines.append(f"  layer-skip evidence: {_counts(priors.layer_skip)}")
        lines += [f"  n-gram evidence, {n}-token match: {_counts(c)}" for n, c in priors.ngram]
    else:
        lines.append("  evidence: none (the runtime's default priors)")
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
        lines.append(f"metrics measured in {measured.get('dtype', 'an unrecorded dtype')} on "
                     f"{measured.get('device', 'an unrecorded device')}; the profile is usable in any dtype")
    lines.append("provenance:" + ("" if profile.provenance else " none recorded"))
    lines += [f"  {key}: {value}" for key, value in profile.provenance.items()]
    return lines
