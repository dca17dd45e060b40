"""The anchor papers' search methods: on a synthetic additive score, and once on a tiny Llama."""

from __future__ import annotations

import math
import random

import bayes_opt
import pytest

from skipsearch.engine.skipping import SkipSet, eligible_sublayers
from skipsearch.errors import SkipsearchError
from skipsearch.search.baselines import (
    BASELINES,
    early_exit_prefix,
    evenly_spaced,
    evenly_spaced_layers,
    greedy_forward_selection,
    importance_ranking,
    least_important,
    selfsd_search,
    swift_search,
)
from skipsearch.search.scoring import ProxyScore

ELIGIBLE = eligible_sublayers(10)  # 16 sublayers, layers 1..8
WEIGHTS = {s: w for s, w in zip(ELIGIBLE, random.Random(7).sample(range(1, 100), len(ELIGIBLE)))}


def additive(skip_set: SkipSet) -> ProxyScore:
    """Matchness falls by each skipped sublayer's known weight: the k lightest are the optimum."""
    value = 1.0 - sum(WEIGHTS[s] for s in skip_set.sublayers) / 1000
    return ProxyScore(value, value)


class Counting:
    def __init__(self):
        self.sets: list[SkipSet] = []

    def __call__(self, skip_set: SkipSet) -> ProxyScore:
        self.sets.append(skip_set)
        return additive(skip_set)


def lightest(k: int) -> SkipSet:
    return SkipSet.from_sublayers(sorted(ELIGIBLE, key=WEIGHTS.get)[:k])


def test_greedy_finds_the_lightest_with_the_exact_evaluation_count():
    counting = Counting()
    result = greedy_forward_selection(counting, ELIGIBLE, 4)
    n = len(ELIGIBLE)
    assert result.best == lightest(4)
    assert result.best_score == additive(lightest(4))
    assert result.evaluations == len(counting.sets) == sum(n - i for i in range(4))
    assert len(set(counting.sets)) == len(counting.sets)


def test_greedy_ties_follow_the_order_of_eligible():
    result = greedy_forward_selection(lambda s: ProxyScore(0.5, 0.5), ELIGIBLE, 2)
    assert result.best == SkipSet.from_sublayers(ELIGIBLE[:2])


def test_greedy_out_of_budget_still_returns_k_sublayers():
    counting = Counting()
    result = greedy_forward_selection(counting, ELIGIBLE, 4, budget=20)
    assert result.evaluations == len(counting.sets) == 20
    assert len(result.best) == 4 and counting.sets[-1] == result.best
    # one full round (16) ranks every sublayer; the second round starts with the lightest chosen
    assert lightest(1).sublayers[0] in result.best.sublayers


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("k", [1, 5])
def test_every_method_returns_k_eligible_sublayers_within_budget(name, k):
    result = BASELINES[name](additive, ELIGIBLE, k, 12, 0)
    assert result.method == name
    assert len(result.best) == k and set(result.best.sublayers) <= set(ELIGIBLE)
    assert 1 <= result.evaluations <= 12
    assert len(result.history) == result.evaluations
    assert all(a <= b for a, b in zip(result.history, result.history[1:]))
    assert result.history[-1] == result.best_score.matchness == additive(result.best).matchness
    assert 0 < result.seconds < 60


@pytest.mark.parametrize("search", [swift_search, selfsd_search])
def test_searches_are_deterministic_per_seed(search):
    def run(seed):
        counting = Counting()
        kwargs = {"bo_every": 5, "stop_at": None} if search is swift_search else {"initial_points": 5}
        result = search(counting, ELIGIBLE, 4, 14, seed, acquisition_samples=500, acquisition_starts=0, **kwargs)
        return counting.sets, result

    (sets_a, a), (sets_b, b), (sets_c, _) = run(1), run(1), run(2)
    assert sets_a == sets_b and a.best == b.best and a.history == b.history
    assert sets_a != sets_c
    assert a.evaluations == len(sets_a) <= 14


def test_swift_asks_bayes_opt_every_bo_every_steps(monkeypatch):
    calls = []
    original = bayes_opt.BayesianOptimization.suggest

    def spy(self):
        calls.append(len(self.space))
        return original(self)

    monkeypatch.setattr(bayes_opt.BayesianOptimization, "suggest", spy)
    result = swift_search(additive, ELIGIBLE, 4, 21, 0, bo_every=5, stop_at=None, acquisition_samples=500)
    assert result.evaluations <= 21
    assert len(calls) >= 3
    assert calls[0] >= 5  # registered with the start set and the random proposals before it


def test_swift_starts_evenly_spaced_and_stops_at_the_target():
    counting = Counting()
    result = swift_search(counting, ELIGIBLE, 4, 50, 0, stop_at=0.0)
    assert counting.sets == [evenly_spaced(ELIGIBLE, 4)] and result.evaluations == 1


def test_searches_stop_when_every_k_subset_is_scored():
    small = ELIGIBLE[:4]
    for search in (swift_search, selfsd_search):
        result = search(additive, small, 2, 50, 0, acquisition_samples=200, acquisition_starts=0)
        assert result.evaluations <= math.comb(4, 2)


def test_evenly_spaced_even_and_odd_k():
    eligible = eligible_sublayers(30)  # layers 1..28
    every_other = evenly_spaced(eligible, 28)
    assert every_other.attention == every_other.mlp == tuple(range(2, 29, 2))
    six = evenly_spaced(eligible, 11)
    assert len(six) == 11 and len(six.attention) == 6 and six.mlp == six.attention[:5]
    gaps = [b - a for a, b in zip(six.attention, six.attention[1:])]
    assert max(gaps) - min(gaps) <= 1
    assert evenly_spaced_layers(additive, ELIGIBLE, 3).evaluations == 1


def test_early_exit_skips_the_top_sublayers():
    result = early_exit_prefix(additive, ELIGIBLE, 5)
    assert result.best == SkipSet(attention=(7, 8), mlp=(6, 7, 8))  # layer 6 keeps its attention
    assert result.evaluations == 1


def test_importance_ranking_orders_by_harm():
    ranking = importance_ranking(additive, ELIGIBLE)
    assert [s for s, _ in ranking] == sorted(ELIGIBLE, key=WEIGHTS.get, reverse=True)
    assert [m for _, m in ranking] == sorted(m for _, m in ranking)
    assert least_important(ranking, 3) == lightest(3)


def test_arguments_are_checked():
    with pytest.raises(SkipsearchError, match="k must be"):
        swift_search(additive, ELIGIBLE, 0, 10, 0)
    with pytest.raises(SkipsearchError, match="budget"):
        selfsd_search(additive, ELIGIBLE, 2, 0, 0)


def test_all_baselines_on_a_tiny_llama():
    from skipsearch.engine.decoding import DecodeSettings, decode
    from skipsearch.search.references import Reference
    from skipsearch.search.scoring import ProxyScorer

    from conftest import make_tiny_llama

    model = make_tiny_llama()
    references = []
    for index, prompt in enumerate([[1, 5, 9, 17, 33], [1, 40, 41, 42]]):
        result = decode(model, prompt, None, DecodeSettings(max_new_tokens=10, fallback=False))
        references.append(Reference(f"p{index}", tuple(prompt), tuple(result.token_ids)))
    scorer = ProxyScorer(model, references)
    eligible = eligible_sublayers(4)
    for method in BASELINES.values():
        before = scorer.evaluations
        result = method(scorer.score, eligible, 2, 12, 0)
        assert len(result.best) == 2 and set(result.best.sublayers) <= set(eligible)
        assert 1 <= result.evaluations <= 12 and scorer.evaluations - before <= result.evaluations
        assert 0.0 <= result.best_score.matchness <= 1.0
        assert result.best_score == scorer.score(result.best)


def test_greedy_ties_in_later_rounds_follow_eligible_not_the_previous_ranking():
    # all second-round candidates tie; the first round ranks the last sublayer second-best
    weights = {s: (0.0 if i == 0 else 0.01 if i == len(ELIGIBLE) - 1 else 0.5) for i, s in enumerate(ELIGIBLE)}

    def tied(skip_set: SkipSet) -> ProxyScore:
        value = 1.0 - sum(weights[s] for s in skip_set.sublayers) if len(skip_set) == 1 else 0.3
        return ProxyScore(value, value)

    result = greedy_forward_selection(tied, ELIGIBLE, 2)
    assert result.best == SkipSet.from_sublayers(ELIGIBLE[:2])
