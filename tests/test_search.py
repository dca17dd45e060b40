import dataclasses
import random
import types

import optuna
import pytest

from skipsearch.config.profiles import check_profile_for_model, load_profile
from skipsearch.engine.costs import CostModel
from skipsearch.engine.skipping import SkipSet, eligible_sublayers
from skipsearch.errors import SkipsearchError
from skipsearch.search import runner
from skipsearch.search.draft_grid import best_draft_settings
from skipsearch.search.references import Reference
from skipsearch.search.scoring import ProxyScorer, score_from_scratch
from skipsearch.search.study import open_study

from conftest import study_config, tiny_loaded, tiny_references


def _run(tmp_path, config, storage):
    setup = runner.prepare(config, progress=False, loaded=tiny_loaded())
    study = runner.open_configured_study(config, storage)
    runner.prepare_study(setup, study, progress=False)
    runner.run_search(setup, study, progress=False)
    return setup, study


def test_a_short_study_writes_a_valid_profile(tmp_path, isolated_cache):
    config = study_config(tmp_path)
    storage = f"sqlite:///{tmp_path / 'toy.db'}"
    setup, study = _run(tmp_path, config, storage)
    assert len(runner.completed_trials(study)) == 3
    measurements = runner.rescore(setup, study, top=2, progress=False)
    written = runner.export_profiles(setup, measurements, study, storage, tmp_path / "toy.profile.yaml", 2, "test")
    assert [p.name for p in written] == ["toy.profile.yaml", "toy.profile-2.yaml"]
    profile = load_profile(written[0])
    check_profile_for_model(profile, setup.loaded.model)
    # the best re-scored set, one of the study's trials, of the eligible sublayers
    assert profile.skip == measurements[0].skip_set
    assert profile.skip in {SkipSet.from_attrs(t.user_attrs) for t in runner.completed_trials(study)}
    assert set(profile.skip.sublayers) <= set(setup.eligible)
    assert load_profile(written[1]).skip == measurements[1].skip_set
    assert profile.provenance["study"] == "toy" and profile.provenance["trials"] == 3
    assert 0 <= profile.metrics.acceptance_rate <= 1


def test_an_own_cache_study_searches_an_engine_s_draft_and_says_so(tmp_path, isolated_cache):
    config = study_config(tmp_path, draft_cache="own", trials=4)
    storage = f"sqlite:///{tmp_path / 'own.db'}"
    setup, study = _run(tmp_path, config, storage)
    assert setup.scorer.draft_cache == "own" and setup.heldout_scorer.draft_cache == "own"
    assert setup.runtime_scorer.draft_cache == "shared"  # the profile's priors are for skipsearch's runtime
    trials = runner.completed_trials(study)
    # the engine's rule: no n-gram drafting and no policy, and no empty set (that draft is the model itself)
    assert all(t.user_attrs["ngram"] is None and t.user_attrs["policy_margin"] is None for t in trials)
    assert all(t.user_attrs["skipped"] > 0 for t in trials if t.user_attrs["predicted_speedup"] != 1.0)
    measurements = runner.rescore(setup, study, top=1, progress=False)
    best = measurements[0]
    assert best.predicted_speedup == max(m.predicted_speedup for m in measurements)
    written = runner.export_profiles(setup, measurements, study, storage, tmp_path / "own.profile.yaml", 1, "test")
    assert load_profile(written[0]).provenance["draft_cache"] == "own"
    # the same study with the other cache would mix two meanings of its trial values
    shared = dataclasses.replace(config, search=dataclasses.replace(config.search, draft_cache="shared"))
    with pytest.raises(SkipsearchError, match="scores drafts on the own draft cache, not the shared one"):
        runner.prepare_study(runner.prepare(shared, progress=False, loaded=tiny_loaded()),
                             runner.open_configured_study(shared, storage), progress=False)


@pytest.mark.slow
def test_rescoring_predicts_from_costs_timed_on_the_rescoring_machine(tmp_path, isolated_cache):
    setup, study = _run(tmp_path, study_config(tmp_path), f"sqlite:///{tmp_path / 'r.db'}")
    shared = setup.costs
    # as if the costs the study's workers share had been timed where verify passes are 1000x dearer
    slow_verify = [shared.verify[0]] + [v * 1000 for v in shared.verify[1:]]
    setup.costs = dataclasses.replace(shared, verify=slow_verify, device="elsewhere")
    measurement = runner.rescore(setup, study, top=1, progress=False)[0]
    fresh = CostModel.from_dict(study.user_attrs["rescore_costs"])
    assert fresh.device != "elsewhere" and setup.costs == fresh
    assert measurement.predicted_speedup > 0.05  # with those costs it would be below 0.01
    assert CostModel.from_dict(study.user_attrs["costs"]) == shared  # the workers' shared costs stay as they were


@pytest.mark.slow
def test_warm_starts_are_enqueued_first(tmp_path, isolated_cache):
    setup, study = _run(tmp_path, study_config(tmp_path, objective="matchness", trials=4),
                        f"sqlite:///{tmp_path / 'w.db'}")
    trials = study.get_trials()
    warm = [t for t in trials if t.user_attrs.get("warm_start")]
    assert len(warm) >= 2 and trials[:len(warm)] == warm  # tried before any sampled trial
    assert SkipSet.from_attrs(warm[0].user_attrs) == runner.dp_method(setup, "clasp-sublayers", 2).best


@pytest.mark.parametrize("objective", ["matchness", "speedup"])
def test_the_dynamic_programs_sets_are_the_first_warm_starts(tmp_path, isolated_cache, objective):
    """Strongest first: few trials or a small budget must reach them before the weaker starts."""
    from skipsearch.search.baselines import evenly_spaced, least_important

    setup = runner.prepare(study_config(tmp_path, objective=objective), progress=False, loaded=tiny_loaded())
    setup.time_costs()
    ranking = [(sublayer, float(i)) for i, sublayer in enumerate(setup.eligible)][::-1]
    dp_sets = [runner.dp_method(setup, name, setup.k).best for name in ("clasp-sublayers", "knapspec")]
    assert least_important(ranking, setup.k) not in dp_sets  # the ranking makes the two kinds differ
    sets = runner.warm_start_sets(setup, ranking)
    assert sets[:2] == dp_sets
    weaker = sets.index(least_important(ranking, setup.k))
    assert weaker >= 2 and sets[weaker + 1] == evenly_spaced(setup.eligible, setup.k)
    if objective == "speedup":  # KnapSpec's own choice and n-gram drafting alone before them too
        assert SkipSet() in sets[:weaker] and runner.dp_method(setup, "knapspec", None).best in sets[:weaker]
    # a user's own warm start goes before all of them: a short study must not drop it
    given = SkipSet(attention=(2,))
    setup.warm_profiles = [("given.profile.yaml", types.SimpleNamespace(skip=given))]
    assert runner.warm_start_sets(setup, ranking)[:3] == [given, *dp_sets]


@pytest.mark.slow
def test_the_dynamic_programs_sets_and_their_neighbours_are_warm_starts(tmp_path, isolated_cache):
    setup, study = _run(tmp_path, study_config(tmp_path, objective="matchness", trials=12),
                        f"sqlite:///{tmp_path / 'dp.db'}")
    warm = [SkipSet.from_attrs(t.user_attrs) for t in study.get_trials() if t.user_attrs.get("warm_start")]
    clasp = runner.dp_method(setup, "clasp-sublayers", setup.k).best
    knapspec = runner.dp_method(setup, "knapspec", setup.k).best
    assert clasp in warm and knapspec in warm and all(len(s) == setup.k for s in warm)


@pytest.mark.slow
def test_with_a_free_count_knapspecs_own_choice_is_a_warm_start(tmp_path, isolated_cache):
    setup, study = _run(tmp_path, study_config(tmp_path, objective="speedup", trials=16),
                        f"sqlite:///{tmp_path / 'free.db'}")
    own = runner.dp_method(setup, "knapspec", None)
    warm = {SkipSet.from_attrs(t.user_attrs): t for t in study.get_trials() if t.user_attrs.get("warm_start")}
    assert own.best in warm
    # the trial scored it as KnapSpec does (and also weighed n-gram policies, which can only add)
    _, knapspec_speedup, _ = best_draft_settings(setup.costs, own.best, own.best_score.prompts,
                                                 setup.config.draft.max_draft_tokens, setup.thresholds)
    assert warm[own.best].value >= knapspec_speedup - 1e-9


@pytest.mark.slow
def test_resuming_adds_trials_instead_of_starting_over(tmp_path, isolated_cache):
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    _run(tmp_path, study_config(tmp_path, trials=3), storage)
    _, study = _run(tmp_path, study_config(tmp_path, trials=5), storage)
    assert len(runner.completed_trials(study)) == 5
    assert len({t.number for t in study.trials}) == len(study.trials) == 5


def test_references_are_cached_on_disk(tmp_path, isolated_cache):
    config = study_config(tmp_path)
    first = runner.prepare(config, progress=False, loaded=tiny_loaded())
    files = list((tmp_path / "cache" / "references").glob("*.json"))
    assert len(files) == 5
    second = runner.prepare(config, progress=False, loaded=tiny_loaded())
    assert first.search_refs == second.search_refs


@pytest.mark.parametrize("draft_cache", ["shared", "own"])
def test_proxy_equals_a_from_scratch_computation(tiny_model, draft_cache):
    references = tiny_references(tiny_model, count=3, seed=1, new_tokens=12)
    rng = random.Random(1)
    scorer = ProxyScorer(tiny_model, references, draft_cache=draft_cache)
    eligible = eligible_sublayers(4, keep_first=0, keep_last=0)
    scored = set()
    for _ in range(15):
        skip_set = SkipSet.from_sublayers(rng.sample(eligible, rng.randint(1, 6)))
        fast, slow = scorer.score(skip_set), score_from_scratch(tiny_model, references, skip_set, draft_cache)
        scored.add(skip_set)
        assert fast.matchness == slow.matchness
        assert fast.expected_acceptance == pytest.approx(slow.expected_acceptance, abs=1e-5)
        assert scorer.score(skip_set) is fast  # a set scored again is remembered, not run again
    assert scorer.evaluations == len(scored)


def test_an_own_draft_cache_scores_what_a_separate_draft_sees(tiny_model):
    references = tiny_references(tiny_model, count=3, seed=1, new_tokens=12)
    shared, own = ProxyScorer(tiny_model, references), ProxyScorer(tiny_model, references, draft_cache="own")
    skip_set = SkipSet(attention=(1, 2), mlp=(1, 3))
    # the prompt's KV differs (the draft's own, skipped, states), so the draft's distributions do
    assert own.score(skip_set).expected_acceptance != pytest.approx(shared.score(skip_set).expected_acceptance,
                                                                    abs=1e-4)
    # a skip set that starts above the prompt's layers changes nothing below them: the last
    # layer's MLP only reads the position's own state, so both caches score it alike
    last = SkipSet(mlp=(3,))
    assert own.score(last).expected_acceptance == pytest.approx(shared.score(last).expected_acceptance, abs=1e-5)
    with pytest.raises(SkipsearchError, match="unknown draft cache 'mine'"):
        ProxyScorer(tiny_model, references, draft_cache="mine")


def test_params_encode_and_decode_skip_sets():
    eligible = eligible_sublayers(6)
    skip_set = SkipSet(attention=(2,), mlp=(1, 4))
    params = skip_set.to_params(eligible)
    assert SkipSet.from_params(params, eligible, k=None) == skip_set
    assert SkipSet.from_params(params, eligible, k=3) == skip_set
    assert len(SkipSet.from_params(params, eligible, k=5)) == 5


def test_an_unreachable_storage_is_one_clear_error():
    with pytest.raises(SkipsearchError, match="cannot reach the study storage"):
        open_study("x", "postgresql://nobody@127.0.0.1:1/none", "speedup", optuna.samplers.RandomSampler())


def test_a_study_run_with_another_objective_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    open_study("x", storage, "speedup", optuna.samplers.RandomSampler())
    with pytest.raises(SkipsearchError, match="objective"):
        open_study("x", storage, "matchness", optuna.samplers.RandomSampler())


def test_explicit_output_folder_must_exist(tmp_path):
    with pytest.raises(SkipsearchError, match="does not exist"):
        runner.check_output_path(tmp_path / "missing" / "p.yaml", is_default=False)
    runner.check_output_path(tmp_path / "made" / "p.yaml", is_default=True)
    assert (tmp_path / "made").is_dir()


def _held_bytes(value, seen: set[int]) -> int:
    """Bytes of the tensors `value` holds (in fields, lists, tuples, caches), each storage once."""
    import torch

    if isinstance(value, torch.Tensor):
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen:
            return 0
        seen.add(pointer)
        return value.untyped_storage().nbytes()
    if isinstance(value, (list, tuple)):
        return sum(_held_bytes(item, seen) for item in value)
    if isinstance(value, dict):
        return sum(_held_bytes(item, seen) for item in value.values())
    if hasattr(value, "__dict__"):
        return sum(_held_bytes(item, seen) for item in vars(value).values())
    return 0


def test_scoring_memory_grows_with_tokens_not_with_the_vocabulary():
    """64 prompts x 512 tokens x a 128k vocabulary of kept float32 distributions would be ~17 GB."""
    from conftest import make_tiny_llama

    vocab = 128 * 1024
    model = make_tiny_llama(seed=2, vocab_size=vocab)
    rng = random.Random(3)
    references = [Reference(f"p{i}", tuple(rng.randrange(vocab) for _ in range(6)),
                            tuple(rng.randrange(vocab) for _ in range(33))) for i in range(4)]
    held = [_held_bytes(ProxyScorer(model, references[:count])._states, set()) for count in (2, 4)]
    per_token = (held[1] - held[0]) / (2 * 32)
    assert 0 < per_token < vocab * 4 / 16  # far below one float32 row of the vocabulary
    ProxyScorer(model, references).score(SkipSet(attention=(1,)))  # and it still scores
