"""CLaSp's and KnapSpec's dynamic programs on a tiny model, against brute force over small skip sets."""

import copy
import itertools

import pytest
import torch

from skipsearch.engine import forward
from skipsearch.engine.costs import CostModel
from skipsearch.engine.prediction import best_draft_length
from skipsearch.engine.skipping import SkipSet, eligible_sublayers, skipping
from skipsearch.search.draft_grid import best_draft_settings
from skipsearch.search.layer_dp import SHORTLIST, clasp, knapspec, knapspec_shortlist, layer_table
from skipsearch.search.scoring import ProxyScorer

from conftest import tiny_references

ELIGIBLE = eligible_sublayers(4, keep_first=0, keep_last=0)


@pytest.fixture
def scorer(tiny_model):
    return ProxyScorer(tiny_model, tiny_references(tiny_model, count=2, seed=3, new_tokens=10, first_length=5))


def _final_similarity_from_scratch(model, references, skip_set: SkipSet, draft_cache: str = "shared") -> float:
    """The skipped model's final state over each continuation, from a full-model prompt cache (or,
    with an own draft cache, its own prefill of the prompt), by whole forward passes (not layer by
    layer), against the full model's."""
    total, positions = 0.0, 0
    with torch.inference_mode():
        for ref in references:
            prompt = torch.tensor([ref.prompt_ids])
            inputs = torch.tensor([ref.continuation[:-1]])
            cache = forward.new_cache()
            forward.run(model, cache, prompt, 0, logits_to_keep=1)
            full = forward.run(model, copy.deepcopy(cache), inputs, prompt.shape[1], output_hidden_states=True)
            with skipping(model, skip_set):
                if draft_cache == "own":
                    cache = forward.new_cache()
                    forward.run(model, cache, prompt, 0, logits_to_keep=1)
                ours = forward.run(model, cache, inputs, prompt.shape[1], output_hidden_states=True)
            total += torch.nn.functional.cosine_similarity(ours.hidden_states[-1], full.hidden_states[-1],
                                                           dim=-1).sum().item()
            positions += inputs.shape[1]
    return total / positions


def test_a_table_that_keeps_everything_holds_every_small_set_with_its_true_similarity(scorer, tiny_model):
    table = layer_table(scorer, ELIGIBLE, 2, keep=lambda states: states)
    sets = {count: sorted(SkipSet.from_sublayers(s.skipped).describe() for s in states)
            for count, states in table.items()}
    for count in (0, 1, 2):
        expected = sorted(SkipSet.from_sublayers(c).describe() for c in itertools.combinations(ELIGIBLE, count))
        assert sets[count] == expected
    for state in table[2]:
        brute = _final_similarity_from_scratch(tiny_model, scorer.references, SkipSet.from_sublayers(state.skipped))
        assert state.similarity == pytest.approx(brute, abs=1e-5)


def test_with_an_own_draft_cache_the_table_scores_the_draft_s_own_prefill(tiny_model):
    references = tiny_references(tiny_model, count=2, seed=3, new_tokens=10, first_length=5)
    own = ProxyScorer(tiny_model, references, draft_cache="own")
    table = layer_table(own, ELIGIBLE, 2, keep=lambda states: states)
    for state in table[2]:
        skip_set = SkipSet.from_sublayers(state.skipped)
        assert state.similarity == pytest.approx(
            _final_similarity_from_scratch(tiny_model, references, skip_set, "own"), abs=1e-5)
    assert clasp(own, ELIGIBLE, 3, whole_layers=False).best  # the dynamic programs run on it


def test_clasp_keeps_one_state_per_cell_and_returns_k_sublayers(scorer, tiny_model):
    exhaustive = layer_table(scorer, ELIGIBLE, 3, keep=lambda states: states)
    best_possible = max(s.similarity for s in exhaustive[3])
    exhaustive_forwards = scorer.block_forwards
    scorer.forget()
    result = clasp(scorer, ELIGIBLE, 3, whole_layers=False)
    assert len(result.best) == 3 and result.evaluations == 1 and scorer.block_forwards > 0
    similarity = _final_similarity_from_scratch(tiny_model, scorer.references, result.best)
    assert similarity <= best_possible + 1e-6
    # the DP is greedy in depth: it costs far fewer block forwards than the exhaustive table
    assert scorer.block_forwards < exhaustive_forwards


def test_clasp_whole_layers_skips_whole_layers_and_an_odd_k_keeps_the_top_mlp(scorer):
    even = clasp(scorer, ELIGIBLE, 4, whole_layers=True).best
    assert even.attention == even.mlp and len(even) == 4
    odd = clasp(scorer, ELIGIBLE, 3, whole_layers=True).best
    assert len(odd) == 3 and set(odd.mlp) < set(odd.attention) and max(odd.attention) not in odd.mlp


def _costs(attention: float) -> CostModel:
    return CostModel(attention=[attention] * 4, mlp=[1.0] * 4, fixed=1.0, verify=[9.0 + n for n in range(9)],
                     device="test", dtype="float32")


def test_knapspec_picks_the_shortlisted_set_predicted_fastest(scorer):
    # attention dearer than MLP and a wide beam: several undominated finals, so that the choice among them is tested
    costs = _costs(5.0)
    shortlist = knapspec_shortlist(scorer, costs, ELIGIBLE, 2, max_draft_tokens=4, floor=0.0, beam=28)
    assert len(shortlist) > 1 and all(len(s) == 2 for s in shortlist)
    speedup = {s: best_draft_settings(costs, s, scorer.score(s).prompts, 4, (0.0,))[1] for s in shortlist}
    result = knapspec(scorer, costs, ELIGIBLE, 2, max_draft_tokens=4, thresholds=(0.0,), floor=0.0, beam=28)
    assert result.best == max(shortlist, key=speedup.__getitem__)


def test_knapspec_without_a_faithful_set_takes_the_most_similar(scorer):
    exhaustive = layer_table(scorer, ELIGIBLE, 2, keep=lambda states: states)
    result = knapspec(scorer, _costs(1.0), ELIGIBLE, 2, max_draft_tokens=4, thresholds=(0.0,), floor=1.01,
                      beam=len(exhaustive[2]))
    best = max(exhaustive[2], key=lambda s: s.similarity)
    assert result.best == SkipSet.from_sublayers(best.skipped) and result.evaluations == 1


def test_knapspec_with_a_free_count_chooses_its_own_count(scorer):
    result = knapspec(scorer, _costs(5.0), ELIGIBLE, None, max_draft_tokens=4, thresholds=(0.0,), floor=0.0)
    assert 1 <= len(result.best) <= len(ELIGIBLE) // 2


def test_knapspecs_shortlist_ranks_its_faithful_sets_by_similarity_taken_as_acceptance(scorer):
    costs = _costs(5.0)
    shortlist = knapspec_shortlist(scorer, costs, ELIGIBLE, None, max_draft_tokens=4, floor=0.0, size=len(ELIGIBLE) * 2)
    finals = [s for n, states in layer_table(scorer, ELIGIBLE, len(ELIGIBLE) // 2, keep=lambda states: states).items()
              if n for s in states]
    similarity = {SkipSet.from_sublayers(s.skipped): s.similarity for s in finals}
    estimates = [best_draft_length(costs, s, min(1.0, max(0.0, similarity[s])), 4)[1] for s in shortlist]
    assert len(shortlist) > SHORTLIST and estimates == sorted(estimates, reverse=True)
    assert knapspec_shortlist(scorer, costs, ELIGIBLE, None, max_draft_tokens=4, floor=0.0) == shortlist[:SHORTLIST]
    # KnapSpec scores only its shortlist, and its own count's choice is one of those sets
    result = knapspec(scorer, costs, ELIGIBLE, None, max_draft_tokens=4, thresholds=(0.0,), floor=0.0)
    assert result.best in shortlist[:SHORTLIST] and result.evaluations <= SHORTLIST
