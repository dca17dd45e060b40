"""The draft settings a search weighs for each skip set, ranked by the replay's prediction.

The runtime decides each round itself (`engine.drafting`): which drafter, how long a draft.
What a skip set still brings to it from the search is its confidence threshold (where a
layer-skip draft stops early) and, for the matchness objective's informational prediction, the
fixed rule's best draft length. Nothing here switches a drafter off: n-gram drafting is always
weighed with the skip set, as the runtime will run it.

This module knows nothing about models or files.
"""

from __future__ import annotations

from typing import Sequence

from skipsearch.engine.costs import CostModel, relative_costs
from skipsearch.engine.decoding import DecodeSettings, DecodeStats
from skipsearch.engine.drafting import NgramSettings, PolicySettings
from skipsearch.engine.replay import ReplayPrompt, ngram_proposals, prompt_costs, replay_drafting
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9)
# the runtime sizes its drafts itself; the threshold only stops a layer-skip draft early
POLICY_THRESHOLDS = (0.0, 0.5, 0.8)
# the n-gram drafter the runtime runs, and so the one every policy candidate is replayed with
NGRAM = NgramSettings()


def best_draft_settings(costs: CostModel, skip_set: SkipSet, prompts: Sequence[ReplayPrompt], max_gamma: int,
                        thresholds=THRESHOLDS, policies: bool = False) -> tuple[DecodeSettings, float, DecodeStats]:
    """The drafting settings with the highest predicted speedup on these prompts: (settings,
    predicted speedup, replayed stats).

    Without `policies`: the fixed rule (the skip set drafts every round, no n-grams) at every
    draft length and threshold. With `policies`: the runtime's policy with n-gram drafting and
    the skip set at each of the `POLICY_THRESHOLDS` among `thresholds` (with an empty skip set,
    n-gram drafting alone)."""
    relative = relative_costs(costs, skip_set)
    layer_skip = len(skip_set) > 0
    candidates = []
    if policies:
        for threshold in (([t for t in thresholds if t in POLICY_THRESHOLDS] or thresholds)
                          if layer_skip else (0.0,)):
            candidates.append(DecodeSettings(max_new_tokens=1, max_draft_tokens=max_gamma,
                                             confidence_threshold=threshold, ngram=NGRAM, costs=relative,
                                             policy=PolicySettings(), fallback=False))
    elif layer_skip:
        candidates += [DecodeSettings(max_new_tokens=1, max_draft_tokens=gamma, confidence_threshold=threshold,
                                      ngram=None, costs=None, fallback=False)
                       for threshold in thresholds for gamma in range(1, max_gamma + 1)]
    if not candidates:
        raise SkipsearchError("nothing to draft with: an empty skip set needs n-gram drafting (policies)")
    proposals = [ngram_proposals(prompt, NGRAM) for prompt in prompts] if policies else None
    per_prompt, plain_steps = prompt_costs(costs, skip_set, prompts)
    best = None
    for candidate in candidates:
        stats, speedup = replay_drafting(prompts, candidate, layer_skip, per_prompt, proposals, plain_steps)
        if best is None or speedup > best[1]:
            best = (candidate, speedup, stats)
    return best
