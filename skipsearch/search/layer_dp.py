"""Dynamic programs over the decoder's layers that pick a skip set from hidden-state fidelity,
instead of scoring candidates one by one.

- CLaSp (arXiv 2505.24196): a table over (layer, skipped count). Each cell keeps one hidden state:
  of the ways to reach it (the cell one layer down with this layer run, or one count down with it
  skipped), the one closest by cosine similarity to the full model's hidden state at that depth.
  The set in the cell (last layer, k) is the answer. Whole layers as in the paper, or sublayers
  (attention and MLP as separate items), which is how skipsearch counts skips.
- KnapSpec (arXiv 2602.20217): attention and MLP blocks are knapsack items weighted by the time a
  draft step saves without them (from the cost model at the prompts' context length, where
  attention is dearer the longer the context). A cell keeps the few states that no other beats on
  both fidelity and time saved. The final sets whose cosine similarity clears a floor are ranked by
  the speedup the cost model predicts with the similarity as acceptance (the paper's estimate);
  the first few are scored by the proxy, and the one with the most predicted tokens per unit of
  time wins (the cost model's replay of drafting over the proxy's outcomes, as the search
  predicts). At a fixed skip count it chooses among sets of that count; with a free count, among
  sets of every count up to a limit (by default half the eligible sublayers).

The hidden states are the proxy's (`ProxyScorer`): every search prompt's reference continuation,
attending to the full model's KV of the prompt. Work is counted in block forwards (an attention
or MLP block run over every prompt's continuation once); a proxy evaluation runs at most every
block once over the same tokens, so `block_forwards / (2 * layers)` is a lower bound of the
proxy evaluations the table is worth.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from skipsearch.engine.costs import CostModel
from skipsearch.engine.prediction import best_draft_length
from skipsearch.engine.skipping import SUBLAYER_KINDS, SkipSet
from skipsearch.errors import SkipsearchError
from skipsearch.search.baselines import MethodResult, Sublayer
from skipsearch.search.draft_grid import best_draft_settings
from skipsearch.search.scoring import ProxyScorer

# KnapSpec's defaults here: final cosine similarity a set must keep, and states kept per cell
FIDELITY_FLOOR = 0.9
BEAM = 2
# KnapSpec's sets scored by the proxy: a free count has up to BEAM faithful sets per count, and
# scoring each costs a proxy evaluation
SHORTLIST = 4


@dataclass
class _State:
    skipped: tuple[Sublayer, ...]
    hidden: list[torch.Tensor]  # per prompt: the output of the last layer placed
    similarity: float
    saved: float  # seconds of one draft step the skipped blocks save


def _variants(layer: int, eligible: set[Sublayer], whole_layers: bool) -> list[tuple[Sublayer, ...]]:
    """The ways one layer can be placed: run whole, or some of its eligible blocks left out."""
    blocks = [(kind, layer) for kind in SUBLAYER_KINDS if (kind, layer) in eligible]
    if whole_layers:
        return [()] + ([tuple(blocks)] if len(blocks) == len(SUBLAYER_KINDS) else [])
    return [()] + [(block,) for block in blocks] + ([tuple(blocks)] if len(blocks) > 1 else [])


def layer_table(scorer: ProxyScorer, eligible: Sequence[Sublayer], max_count: int, keep: Callable,
                whole_layers: bool = False,
                saved_by: Callable[[Sublayer], float] = lambda s: 0.0) -> dict[int, list[_State]]:
    """Fill the table layer by layer and return its last row: per skipped count, the states kept
    at the full depth. `keep` prunes one cell's candidates (best first). Counts are in layers
    with `whole_layers`, else in sublayers. The scorer counts the block forwards."""
    allowed = set(eligible)
    cells: dict[int, list[_State]] = {0: [_State((), scorer.layer_inputs(), 1.0, 0.0)]}
    for layer in range(len(scorer.layers)):
        candidates: dict[int, list[_State]] = {}
        for count, states in cells.items():
            for state in states:
                for variant in _variants(layer, allowed, whole_layers):
                    step = 1 if whole_layers and variant else len(variant)
                    if count + step > max_count:
                        continue
                    if len(variant) == len(SUBLAYER_KINDS):  # the whole layer left out: its input passes on
                        hidden = state.hidden
                    else:
                        hidden = scorer.run_layer(layer, state.hidden, SkipSet.from_sublayers(variant))
                    candidates.setdefault(count + step, []).append(
                        _State(state.skipped + variant, hidden, 0.0, state.saved + sum(map(saved_by, variant))))
        for states in candidates.values():
            for state in states:
                state.similarity = scorer.similarity(state.hidden, layer + 1)
        cells = {count: keep(states) for count, states in candidates.items()}
    return cells


def _most_similar(states: list[_State]) -> list[_State]:
    return [max(states, key=lambda s: s.similarity)]


def _undominated(beam: int) -> Callable[[list[_State]], list[_State]]:
    """The states no other beats on both similarity and time saved, the `beam` most similar of them."""

    def keep(states: list[_State]) -> list[_State]:
        ranked = sorted(states, key=lambda s: (-s.similarity, -s.saved))
        front, most_saved = [], -math.inf
        for state in ranked:
            if state.saved > most_saved:
                front.append(state)
                most_saved = state.saved
        return front[:beam]

    return keep


def _check(eligible: Sequence[Sublayer], k: int) -> None:
    if not 1 <= k <= len(eligible):
        raise SkipsearchError(f"k must be between 1 and the {len(eligible)} eligible sublayers, got {k}")


def clasp(scorer: ProxyScorer, eligible: Sequence[Sublayer], k: int, whole_layers: bool) -> MethodResult:
    """CLaSp's set of k sublayers. With whole layers it skips ceil(k/2) layers; for an odd k the
    highest of them keeps its MLP, so that the set has k sublayers like every other method's."""
    _check(eligible, k)
    started = time.perf_counter()
    evaluations = scorer.evaluations
    count = math.ceil(k / 2) if whole_layers else k
    table = layer_table(scorer, eligible, count, _most_similar, whole_layers)
    if count not in table:
        raise SkipsearchError(f"CLaSp cannot skip {k} sublayers as whole layers: too few layers have both blocks "
                              "eligible; use the sublayer variant (clasp-sublayers) or a smaller --skip-budget")
    skipped = list(table[count][0].skipped)
    if whole_layers and len(skipped) > k:
        skipped.remove(("mlp", max(layer for _, layer in skipped)))
    best = SkipSet.from_sublayers(skipped)
    score = scorer.score(best)
    name = "clasp" if whole_layers else "clasp-sublayers"
    return MethodResult(name, best, score, scorer.evaluations - evaluations, time.perf_counter() - started,
                        [score.matchness])


def knapspec_shortlist(scorer: ProxyScorer, costs: CostModel, eligible: Sequence[Sublayer], k: int | None,
                       max_draft_tokens: int, floor: float = FIDELITY_FLOOR, beam: int = BEAM,
                       size: int = SHORTLIST, max_count: int | None = None) -> list[SkipSet]:
    """KnapSpec's candidate sets, best first: the table's final states that clear the fidelity floor
    (or the most similar one if none does), ranked by the speedup the cost model predicts with each
    state's cosine similarity taken as its acceptance rate, as the paper estimates it without
    decoding; the first `size`. With k None, of every count up to `max_count` (by default half the
    eligible sublayers): the table's cost grows with it."""
    if k is not None:
        _check(eligible, k)
    weight = {**{("attention", i): c for i, c in enumerate(costs.attention)},
              **{("mlp", i): c for i, c in enumerate(costs.mlp)}}
    max_count = k if k is not None else max(1, min(max_count or len(eligible) // 2, len(eligible)))
    table = layer_table(scorer, eligible, max_count, _undominated(beam), saved_by=weight.__getitem__)
    finals = table.get(k, []) if k is not None else [s for n, states in table.items() if n for s in states]
    if not finals:
        raise SkipsearchError(f"KnapSpec found no set of {k} eligible sublayers; use a smaller --skip-budget")
    faithful = [s for s in finals if s.similarity >= floor] or [max(finals, key=lambda s: s.similarity)]
    sets = [SkipSet.from_sublayers(s.skipped) for s in faithful]
    estimate = {skip_set: best_draft_length(costs, skip_set, min(1.0, max(0.0, s.similarity)), max_draft_tokens)[1]
                for skip_set, s in zip(sets, faithful)}
    return sorted(estimate, key=lambda skip_set: -estimate[skip_set])[:size]


def knapspec(scorer: ProxyScorer, costs: CostModel, eligible: Sequence[Sublayer], k: int | None,
             max_draft_tokens: int, thresholds: Sequence[float], floor: float = FIDELITY_FLOOR,
             beam: int = BEAM, max_count: int | None = None) -> MethodResult:
    """KnapSpec's set: exactly k sublayers, or with k None the count it finds best (up to `max_count`). Its shortlist is
    scored by the proxy, and the set with the most predicted tokens per unit of time wins. `costs`
    should be timed at the prompts' context length (`CostModel.at_context`)."""
    started = time.perf_counter()
    evaluations = scorer.evaluations
    best, best_speedup, best_score = None, -math.inf, None
    for skip_set in knapspec_shortlist(scorer, costs, eligible, k, max_draft_tokens, floor, beam, max_count=max_count):
        score = scorer.score(skip_set)
        _, speedup, _ = best_draft_settings(costs, skip_set, score.prompts, max_draft_tokens, thresholds)
        if speedup > best_speedup:
            best, best_speedup, best_score = skip_set, speedup, score
    return MethodResult("knapspec", best, best_score, scorer.evaluations - evaluations, time.perf_counter() - started,
                        [best_score.matchness])
