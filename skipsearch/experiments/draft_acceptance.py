"""An exported draft's acceptance and draft settings, re-scored as an engine runs it.

A draft model in vLLM, SGLang or llama.cpp prefills the prompt itself and keeps its own KV cache,
built from its own (skipped) hidden states; skipsearch's runtime drafts from the full model's. The
study's search may have scored either (`search.draft_cache`); this scores the exported skip set
with both on the study's held-out prompts. An engine drafts a fixed number of tokens per round,
stopping below a confidence (llama.cpp's `--spec-draft-n-max` and `--spec-draft-p-min`), with no
n-gram drafting beside it and no guard: given costs, the draft length and stop that the replay of
that rule over the own-cache trace predicts fastest are chosen (`draft_grid.best_draft_settings`),
and the acceptance at them is what the engine should report.
"""

from __future__ import annotations

from typing import Sequence

from skipsearch.config.draft_export import DraftAcceptance
from skipsearch.engine.costs import CostModel
from skipsearch.engine.replay import replay_fixed_drafts
from skipsearch.engine.skipping import SkipSet
from skipsearch.search.draft_grid import best_draft_settings
from skipsearch.search.references import Reference
from skipsearch.search.scoring import ProxyScorer

LONGEST_ENGINE_DRAFT = 16  # llama.cpp's default --spec-draft-n-max is 16 (vLLM's num_speculative_tokens has none)


def draft_acceptance(model, references: Sequence[Reference], skip: SkipSet, draft_tokens: int, p_min: float,
                     prompts: str, costs: CostModel | None = None) -> DraftAcceptance:
    """`skip` scored on `references` with an own and a shared draft cache; `prompts` says where they
    came from. With `costs` the draft length (up to `LONGEST_ENGINE_DRAFT`) and confidence stop are
    the engine's best by the replay, else `draft_tokens` and `p_min`."""
    own = ProxyScorer(model, list(references), draft_cache="own")
    shared = ProxyScorer(model, list(references), draft_cache="shared")
    own_score, shared_score = own.score(skip), shared.score(skip)
    predicted = None
    if costs is not None:
        settings, predicted, _ = best_draft_settings(costs, skip, own_score.prompts, LONGEST_ENGINE_DRAFT)
        draft_tokens, p_min = settings.max_draft_tokens, settings.confidence_threshold
    own_run = replay_fixed_drafts(own_score.prompts, draft_tokens, p_min)
    shared_run = replay_fixed_drafts(shared_score.prompts, draft_tokens, p_min)
    return DraftAcceptance(prompts=prompts, positions=own.positions, draft_tokens=draft_tokens, p_min=p_min,
                           own_matchness=own_score.matchness, shared_matchness=shared_score.matchness,
                           own_acceptance=own_run.acceptance_rate, shared_acceptance=shared_run.acceptance_rate,
                           own_tokens_per_round=own_run.mean_accepted_tokens, predicted_speedup=predicted)
