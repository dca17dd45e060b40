"""The cost model: measuring on the tiny model (shapes only: timings are noisy) and the pure predictions."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from skipsearch.engine.costs import (
    CostModel,
    draft_step_cost,
    measure_costs,
    nondecreasing,
    relative_costs,
    verify_cost,
)
from skipsearch.engine.decoding import DecodeStats
from skipsearch.engine.prediction import (
    best_draft_length,
    expected_tokens_per_round,
    predicted_speedup,
    predicted_speedup_from_stats,
)
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError

from conftest import assert_blocks_run_through_hooks, hook_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def made_up_costs(num_layers: int = 4) -> CostModel:
    """Round numbers shaped like SmolLM2's on this CPU (fixed part ~1/6 of a step, verify flat at first)."""
    return CostModel(
        attention=[0.5] * num_layers,
        mlp=[0.75] * num_layers,
        fixed=6.0,
        verify=[11.0, 11.5, 12.5, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0],
        device="cpu (2 threads)",
        dtype="float32",
    )


def test_measure_costs_times_each_block_kind_once_per_device_group(tiny_model):
    costs = measure_costs(tiny_model, context_tokens=16, max_verify_tokens=3, repeats=2)
    assert costs.num_layers == tiny_model.config.num_hidden_layers
    assert len(costs.verify) == 3
    # one group of layers on one device: each block kind timed once and shared by every layer
    assert len(set(costs.attention)) == 1 and len(set(costs.mlp)) == 1
    assert costs.fixed > 0 and all(v > 0 for v in costs.verify)
    assert costs.dtype == "float32" and costs.device.startswith("cpu (")
    assert costs.context_tokens == 16
    assert CostModel.from_dict(costs.to_dict()) == costs


def test_measure_costs_leaves_model_unchanged(tiny_model):
    ids = torch.tensor([[1, 5, 9, 17, 33, 64]])
    with torch.inference_mode():
        before = tiny_model(ids).logits
    rng_state = torch.get_rng_state()
    calls = hook_blocks(tiny_model)
    measure_costs(tiny_model, context_tokens=8, max_verify_tokens=2, repeats=1)
    with torch.inference_mode():
        after = tiny_model(ids).logits
    assert torch.equal(before, after)
    assert torch.equal(rng_state, torch.get_rng_state())
    assert_blocks_run_through_hooks(tiny_model, calls)


def test_measure_costs_refuses_bad_arguments(tiny_model):
    with pytest.raises(SkipsearchError, match="context_tokens"):
        measure_costs(tiny_model, context_tokens=0)
    with pytest.raises(SkipsearchError, match="positions"):
        measure_costs(tiny_model, context_tokens=510, max_verify_tokens=9)


def test_draft_cost_is_fixed_plus_the_blocks_that_run():
    costs = made_up_costs()
    full = draft_step_cost(costs, SkipSet())
    assert full == pytest.approx(6.0 + 4 * 0.5 + 4 * 0.75)
    fewer = draft_step_cost(costs, SkipSet(attention=(1,)))
    fewest = draft_step_cost(costs, SkipSet(attention=(1, 2), mlp=(2,)))
    assert full > fewer > fewest
    assert fewest == pytest.approx(6.0 + 2 * 0.5 + 3 * 0.75)
    everything = SkipSet(attention=(0, 1, 2, 3), mlp=(0, 1, 2, 3))
    assert draft_step_cost(costs, everything) == pytest.approx(costs.fixed)
    with pytest.raises(SkipsearchError, match="out of range"):
        draft_step_cost(costs, SkipSet(mlp=(4,)))


def test_expected_tokens_per_round_edges():
    assert expected_tokens_per_round(0.0, 5) == pytest.approx(1.0)
    assert expected_tokens_per_round(1.0, 5) == pytest.approx(6.0)
    assert expected_tokens_per_round(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens_per_round(0.999999, 3) == pytest.approx(4.0, rel=1e-4)
    with pytest.raises(SkipsearchError, match="acceptance"):
        expected_tokens_per_round(1.5, 3)


def test_predicted_speedup_of_the_full_model_as_its_own_draft():
    costs = made_up_costs()
    full = draft_step_cost(costs, SkipSet())
    for gamma in (1, 3, 8):
        expected = (gamma + 1) * costs.verify[0] / (gamma * full + costs.verify[gamma])
        assert predicted_speedup(costs, SkipSet(), 1.0, gamma) == pytest.approx(expected)
    assert predicted_speedup(costs, SkipSet(), 0.3, 0) == pytest.approx(1.0)


def test_best_draft_length_grows_with_acceptance():
    # a draft that skips most of the model is cheap next to a flat verify cost
    costs = CostModel(attention=[2.5] * 4, mlp=[2.5] * 4, fixed=1.0, verify=[21 + 0.5 * n for n in range(10)],
                      device="cpu (2 threads)", dtype="float32")
    cheap = SkipSet(attention=(0, 1, 2), mlp=(1, 2, 3))
    low_gamma, low_speedup = best_draft_length(costs, cheap, 0.3, 8)
    high_gamma, high_speedup = best_draft_length(costs, cheap, 0.95, 8)
    assert high_gamma > low_gamma
    assert high_speedup > low_speedup
    assert high_speedup == pytest.approx(predicted_speedup(costs, cheap, 0.95, high_gamma))
    with pytest.raises(SkipsearchError, match="max_verify_tokens >= 11"):
        best_draft_length(costs, cheap, 0.95, 10)


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=12))
def test_pooled_costs_never_decrease_and_keep_their_total(values):
    pooled = nondecreasing(values)
    assert len(pooled) == len(values)
    assert all(a <= b + 1e-9 for a, b in zip(pooled, pooled[1:]))
    assert sum(pooled) == pytest.approx(sum(values))
    if all(a <= b for a, b in zip(values, values[1:])):
        assert pooled == pytest.approx(values)


def test_a_verify_pass_timed_cheaper_than_a_plain_step_is_pooled_with_it():
    # bfloat16 on this CPU timed a 2-token pass at 0.80 of a 1-token one: taken as it is, a
    # layer-skip draft of one token would look like it pays against a plain step
    costs = CostModel(attention=[0.0011] * 30, mlp=[0.0006] * 30, fixed=0.0053,
                      verify=[0.0557, 0.0447, 0.0499, 0.0480, 0.0517], device="cpu", dtype="bfloat16")
    assert costs.verify == pytest.approx([0.0496] * 4 + [0.0517], abs=1e-4)
    relative = relative_costs(costs, SkipSet(attention=tuple(range(3, 11)) + (25,), mlp=(3, 5)))
    assert relative.verify[1] == pytest.approx(1.0)
    assert relative.draft_step + relative.verify[1] > 1.66  # one draft token accepted at 0.66 does not pay


def test_verify_cost_interpolates_between_measured_counts():
    costs = made_up_costs()
    assert verify_cost(costs, 1) == costs.verify[0]
    assert verify_cost(costs, 2.5) == pytest.approx(12.0)
    assert verify_cost(costs, 9) == costs.verify[-1]


def test_prediction_from_stats():
    costs = made_up_costs()
    skip = SkipSet(attention=(1, 2))
    # no rounds: plain decoding all the way
    assert predicted_speedup_from_stats(costs, skip, DecodeStats(plain_steps=10)) == pytest.approx(1.0)
    # 4 rounds of 3 drafts, 2 accepted each: 12 tokens for 4 x (3 drafts + verify of 4)
    stats = DecodeStats(rounds=4, drafted_tokens=12, draft_steps=12, accepted_tokens=8)
    per_round = 3 * draft_step_cost(costs, skip) + costs.verify[3]
    expected = 12 * costs.verify[0] / (4 * per_round)
    assert predicted_speedup_from_stats(costs, skip, stats) == pytest.approx(expected)
    # plain steps add plain cost to both sides
    stats.plain_steps = 2
    expected = 14 * costs.verify[0] / (4 * per_round + 2 * costs.verify[0])
    assert predicted_speedup_from_stats(costs, skip, stats) == pytest.approx(expected)
    # a draft pass whose token was not confident enough costs a draft step and proposes nothing
    stats.draft_steps = 13
    expected = 14 * costs.verify[0] / (4 * per_round + draft_step_cost(costs, skip) + 2 * costs.verify[0])
    assert predicted_speedup_from_stats(costs, skip, stats) == pytest.approx(expected)


def test_cost_model_from_dict_names_bad_keys():
    data = made_up_costs().to_dict()
    data["atention"] = data.pop("attention")
    with pytest.raises(SkipsearchError, match="unknown keys \\['atention'\\] / missing keys \\['attention'\\]"):
        CostModel.from_dict(data)


def _replay(trace, gamma, threshold):
    from skipsearch.engine.costs import relative_costs
    from skipsearch.engine.decoding import DecodeSettings
    from skipsearch.engine.replay import ReplayPrompt, replay_drafting

    prompt = ReplayPrompt((1, 2), tuple(range(10, 10 + len(trace) + 1)), tuple(trace))
    settings = DecodeSettings(max_draft_tokens=gamma, confidence_threshold=threshold, ngram=None, costs=None,
                              fallback=False)
    stats, _ = replay_drafting([prompt], settings, True, relative_costs(made_up_costs(), SkipSet(mlp=(1,))))
    return stats


def test_replayed_drafting_follows_the_decoder_loop():
    right = [(0.99, True)] * 10
    stats = _replay(right, gamma=4, threshold=0.5)
    # 11 tokens: the prefill's, then rounds at 1 and 6 drafting 4 right tokens and committing 5
    assert (stats.rounds, stats.drafted_tokens, stats.accepted_tokens, stats.draft_steps) == (2, 8, 8, 8)
    unsure_first = [(0.1, True)] + right[1:]
    stats = _replay(unsure_first, gamma=4, threshold=0.5)
    # the last round may draft only what leaves the full model one token to add, as in the decoder
    assert stats.plain_steps == 1 and stats.draft_steps == 1 + 4 + 3
    wrong_second = [(0.99, True), (0.99, False)] + right[2:]
    stats = _replay(wrong_second, gamma=4, threshold=0.0)
    assert stats.accepted_tokens >= 1 and stats.drafted_tokens > stats.accepted_tokens


def test_best_draft_settings_prefers_long_drafts_when_drafts_are_right():
    from skipsearch.engine.replay import ReplayPrompt
    from skipsearch.search.draft_grid import best_draft_settings

    costs = made_up_costs()
    skip = SkipSet(attention=(0, 1, 2, 3), mlp=(0, 1, 2))
    right = [ReplayPrompt((1,), tuple(range(41)), tuple([(0.99, True)] * 40))]
    settings, speedup, _ = best_draft_settings(costs, skip, right, max_gamma=3)
    assert settings.max_draft_tokens > 1 and speedup > 1
    wrong = [ReplayPrompt((1,), tuple(range(41)), tuple([(0.2, False)] * 40))]
    settings, speedup, _ = best_draft_settings(costs, skip, wrong, max_gamma=3)
    assert settings.confidence_threshold > 0.2  # never drafting beats drafting tokens that are always wrong


def test_a_draft_step_is_the_plain_steps_share_of_the_parts_that_run():
    # parts that add up to half the plain step, as timings on a busy machine can
    costs = CostModel(attention=[1.0] * 2, mlp=[2.0] * 2, fixed=4.0, verify=[20.0, 21.0], device="cpu", dtype="float32")
    assert draft_step_cost(costs, SkipSet()) == pytest.approx(20.0)
    assert draft_step_cost(costs, SkipSet(attention=(0,), mlp=(1,))) == pytest.approx(20.0 * 7 / 10)


def test_layers_are_grouped_by_where_their_blocks_run(tiny_model):
    from skipsearch.engine.costs import layer_groups

    assert layer_groups(tiny_model) == [(0, 1, 2, 3)]
    tiny_model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0,
                                "model.layers.2": 1, "model.layers.3.self_attn": 1, "model.layers.3.mlp": "cpu",
                                "lm_head": 1}
    assert layer_groups(tiny_model) == [(0, 1), (2,), (3,)]
    tiny_model.hf_device_map = {"": "cpu"}
    assert layer_groups(tiny_model) == [(0, 1, 2, 3)]


def test_offloaded_layers_are_timed_on_their_own(tmp_path, monkeypatch):
    """Layers dispatched to disk pay for loading their weights at every pass: their blocks are
    timed apart from the layers on the execution device, and each group shares its cost."""
    from accelerate import dispatch_model

    from skipsearch.engine import costs as costs_module

    from conftest import make_tiny_llama

    timed = set()
    real_skipping = costs_module.skipping

    def spy(model, skip_set):
        timed.add(skip_set)
        return real_skipping(model, skip_set)

    monkeypatch.setattr(costs_module, "skipping", spy)

    model = make_tiny_llama()
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": ("disk" if i >= 2 else "cpu") for i in range(4)})
    model = dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    costs = measure_costs(model, context_tokens=8, max_verify_tokens=2, repeats=3)
    assert costs.attention[0] == costs.attention[1] and costs.attention[2] == costs.attention[3]
    assert costs.mlp[0] == costs.mlp[1] and costs.mlp[2] == costs.mlp[3]
    assert {SkipSet(attention=(0, 1)), SkipSet(attention=(2, 3)), SkipSet(mlp=(0, 1)), SkipSet(mlp=(2, 3))} <= timed
    assert SkipSet(attention=(0, 1, 2, 3)) not in timed


# ---------------------------------------------------------------------------- the context fit


def test_the_context_fit_recovers_a_linear_attention_cost():
    """Synthetic timings: attention costs 0.5 + 0.001 per context token in every layer."""
    from skipsearch.engine.costs import with_context_fit

    costs = dataclasses.replace(made_up_costs(), context_tokens=100, attention=[0.6] * 4)
    points = [(n, [0.5 + 0.001 * n] * 4) for n in (500, 2000)]
    fitted = with_context_fit(costs, points)
    assert fitted.attention_slope == pytest.approx([0.001] * 4)
    assert [p["context_tokens"] for p in fitted.context_points] == [100, 500, 2000]
    longer = fitted.at_context(1100)
    assert longer.attention == pytest.approx([1.6] * 4) and longer.mlp == costs.mlp and longer.fixed == costs.fixed
    # every verified token attends to the 1000 tokens more in every layer
    assert longer.verify == pytest.approx([v + n * 4.0 for n, v in enumerate(costs.verify, 1)])
    assert fitted.at_context(100) == fitted and costs.at_context(5000) == costs  # no fit: one length only
    assert CostModel.from_dict(fitted.to_dict()) == fitted


def test_the_fit_never_makes_attention_cheaper_with_more_context():
    from skipsearch.engine.costs import fit_slope

    assert fit_slope([100, 200, 300], [3.0, 2.0, 1.0]) == 0.0
    assert fit_slope([100, 100], [1.0, 2.0]) == 0.0
    assert fit_slope([0, 10, 20], [1.0, 2.0, 3.0]) == pytest.approx(0.1)


def test_measure_costs_times_attention_at_each_context(tiny_model):
    costs = measure_costs(tiny_model, context_tokens=16, max_verify_tokens=2, repeats=1, contexts=(8, 64))
    assert [p["context_tokens"] for p in costs.context_points] == [16, 8, 64]
    assert len(costs.attention_slope) == costs.num_layers and all(s >= 0 for s in costs.attention_slope)
    with pytest.raises(SkipsearchError, match="exceed the model's"):
        measure_costs(tiny_model, context_tokens=16, max_verify_tokens=2, repeats=1, contexts=(10**6,))


def test_a_replay_with_per_prompt_costs_weighs_each_prompt_by_its_plain_step():
    from skipsearch.engine.costs import relative_costs
    from skipsearch.engine.decoding import DecodeSettings
    from skipsearch.engine.replay import ReplayPrompt, prompt_costs, replay_drafting

    skip = SkipSet(mlp=(1,))
    prompts = [ReplayPrompt((1,) * n, tuple(range(10, 21)), ((0.99, True),) * 10) for n in (4, 400)]
    settings = DecodeSettings(max_draft_tokens=3, confidence_threshold=0.5, ngram=None, costs=None, fallback=False)
    flat = made_up_costs()
    _, one = replay_drafting(prompts, settings, True, relative_costs(flat, skip))
    per_prompt, steps = prompt_costs(flat, skip, prompts)
    assert replay_drafting(prompts, settings, True, per_prompt, plain_steps=steps)[1] == pytest.approx(one)
    # with attention dearer at long contexts, drafting (which skips an MLP only) gains less there
    sloped = dataclasses.replace(flat, attention_slope=[0.01] * 4)
    per_prompt, steps = prompt_costs(sloped, skip, prompts)
    assert steps[1] > steps[0]
    assert replay_drafting(prompts, settings, True, per_prompt, plain_steps=steps)[1] < one


def test_fixed_drafts_count_as_an_engine_s_draft_model_counts():
    from skipsearch.engine.replay import ReplayPrompt, replay_fixed_drafts

    # 13 tokens: the prefill's, then a round after each commit. Right, right, wrong, then right:
    # round 1 drafts 4 (positions 0-3), accepts 2 and commits 3; round 2 drafts 4 right ones
    # (3-6) and commits 5; round 3 may draft 3 (7-9) and commits 4.
    trace = [(0.9, True), (0.9, True), (0.9, False)] + [(0.9, True)] * 9
    prompt = ReplayPrompt((1, 2), tuple(range(100, 113)), tuple(trace))
    stats = replay_fixed_drafts([prompt], max_draft_tokens=4, confidence_threshold=0.0)
    assert (stats.rounds, stats.drafted_tokens, stats.accepted_tokens) == (3, 11, 9)
    assert stats.acceptance_rate == pytest.approx(9 / 11) and stats.mean_accepted_tokens == pytest.approx(4)
    # a confidence stop before the third token: drafts of 2 right tokens
    unsure = [(0.9, True), (0.9, True), (0.1, True)] * 4
    stats = replay_fixed_drafts([ReplayPrompt((1, 2), tuple(range(100, 113)), tuple(unsure))], 4, 0.5)
    assert stats.drafted_tokens == stats.accepted_tokens and stats.acceptance_rate == 1.0
