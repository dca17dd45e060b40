import optuna

from skipsearch.engine.skipping import SkipSet, eligible_sublayers
from skipsearch.search.neighbours import LOCAL_ATTR, LocalSearch, neighbours
from skipsearch.search.study import enqueue_warm_starts

ELIGIBLE = eligible_sublayers(6, 1, 1)  # attention and mlp of layers 1..4
# skipping a higher layer alone hurts less in this made-up ranking; mlp less than attention
RANKING = {(kind, layer): layer / 10 + (0.05 if kind == "mlp" else 0.0) for kind, layer in ELIGIBLE}


def test_swaps_come_most_promising_first_and_keep_the_count():
    start = SkipSet(attention=(1, 4))
    found = neighbours(start, RANKING, ELIGIBLE, fixed_count=True)
    assert all(len(s) == 2 for s in found)
    assert len(found) == 2 * (len(ELIGIBLE) - 2) and len(set(found)) == len(found)
    # out goes attention 1 (the most important member), in comes mlp 4 (the least important outsider)
    assert found[0] == SkipSet(attention=(4,), mlp=(4,))


def test_a_free_count_also_adds_and_drops():
    start = SkipSet(attention=(1, 4))
    found = neighbours(start, RANKING, ELIGIBLE, fixed_count=False)
    assert found[0] == SkipSet(attention=(4,))  # drop the most important member
    assert found[1] == SkipSet(attention=(1, 4), mlp=(4,))  # add the least important outsider
    assert {len(s) for s in found} == {1, 2, 3}


def test_local_search_alternates_with_the_sampler_and_finds_the_best_set():
    # the score is the count of skipped sublayers from the "good" half; the ranking points there
    good = {s for s in ELIGIBLE if s[1] >= 3}

    def objective(trial):
        params = {f"{k}.{i}": trial.suggest_float(f"{k}.{i}", 0, 1) for k, i in ELIGIBLE}
        skip_set = SkipSet.from_params(params, ELIGIBLE, 4)
        trial.set_user_attr("skip_attention", list(skip_set.attention))
        trial.set_user_attr("skip_mlp", list(skip_set.mlp))
        trial.set_user_attr("skipped", len(skip_set))
        return len(set(skip_set.sublayers) & good)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    enqueue_warm_starts(study, [SkipSet(attention=(1, 2), mlp=(1, 2))], ELIGIBLE)
    study.optimize(objective, n_trials=12, callbacks=[LocalSearch(ELIGIBLE, RANKING, "matchness", True)])
    kinds = ["local" if t.user_attrs.get(LOCAL_ATTR) else "other" for t in study.trials[:7]]
    assert kinds == ["other", "local", "local", "other", "local", "local", "other"]
    assert study.best_value == 4
    assert SkipSet(attention=(3, 4), mlp=(3, 4)).to_params(ELIGIBLE) in [t.params for t in study.trials]
