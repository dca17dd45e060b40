"""The objective table: every name a study may give has one row, and each row says what a trial's
values are and how trials rank."""

from types import SimpleNamespace

import optuna
import pytest

from skipsearch.config.studies import OBJECTIVES as CONFIG_NAMES
from skipsearch.errors import SkipsearchError
from skipsearch.search.objectives import OBJECTIVES, front_flags, get_objective


def _trial(number: int, values: list[float]) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(values=values)
    trial.number = number
    return trial


def test_every_configurable_objective_has_one_row():
    assert tuple(OBJECTIVES) == CONFIG_NAMES


def test_an_unknown_objective_is_one_clear_error():
    with pytest.raises(SkipsearchError, match="unknown objective 'latency'; use one of matchness, speedup, pareto"):
        get_objective("latency")


def test_values_come_from_the_evaluation():
    evaluation = SimpleNamespace(score=SimpleNamespace(matchness=0.7), predicted_speedup=1.3, draft_cost=0.6)
    assert get_objective("matchness").values(evaluation) == 0.7
    assert get_objective("speedup").values(evaluation) == 1.3
    assert get_objective("pareto").values(evaluation) == (0.6, 0.7)
    assert [o.fixed_count for o in OBJECTIVES.values()] == [True, False, False]


def test_front_flags_keep_equal_points_and_drop_equal_matchness_at_higher_cost():
    assert front_flags([1, 1, 2, 0.5], [0.9, 0.9, 0.9, 0.1]) == [True, True, False, True]


def test_pareto_ranks_front_by_front_then_by_matchness():
    # (cost, matchness): front {0: (0.2, 0.5), 1: (0.5, 0.8)}, then {2: (0.6, 0.7)}, then {3: (0.9, 0.6)}
    trials = [_trial(3, [0.9, 0.6]), _trial(0, [0.2, 0.5]), _trial(2, [0.6, 0.7]), _trial(1, [0.5, 0.8])]
    pareto = get_objective("pareto")
    assert [t.number for t in pareto.ranked(trials)] == [1, 0, 2, 3]
    assert [pareto.value(t) for t in trials] == [0.6, 0.5, 0.7, 0.8]


def test_single_objectives_rank_by_value():
    trials = [_trial(0, [0.5]), _trial(1, [0.9]), _trial(2, [0.7])]
    assert [t.number for t in get_objective("speedup").ranked(trials)] == [1, 2, 0]
