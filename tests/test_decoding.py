import dataclasses
import random

import pytest
import torch
from transformers import DynamicCache

from skipsearch.engine import decoding, timing
from skipsearch.engine.decoding import DecodeSettings, DecodeStats, Randomness, decode, warp
from skipsearch.engine.drafting import PolicyMemory, PolicySettings, RelativeCosts
from skipsearch.engine.forward import cache_keyword, crop_cache
from skipsearch.engine.skipping import SkipSet, eligible_sublayers, skipping
from skipsearch.errors import SkipsearchError

from conftest import (
    assert_blocks_run_through_hooks,
    empirical_two_token_distribution,
    exact_two_token_distribution,
    generate_greedy,
    hook_blocks,
    make_tiny_llama,
    random_skip_sets,
    sharp_tiny_model,
)


def _perfect_draft_model(seed=0):
    """A tiny model whose last MLP adds nothing, so skipping it drafts exactly the full model."""
    model = make_tiny_llama(seed=seed)
    model.model.layers[-1].mlp.down_proj.weight.zero_()
    return model, SkipSet(mlp=(len(model.model.layers) - 1,))


# a hundred decodes per draft length: the fast tier keeps one of several tokens
@pytest.mark.parametrize("max_draft_tokens", [pytest.param(n, marks=[] if n == 3 else pytest.mark.slow)
                                              for n in range(1, 9)])
def test_greedy_is_identical_togenerate_greedy(tiny_model, max_draft_tokens):
    rng = random.Random(max_draft_tokens)
    prompts = [[rng.randrange(3, 128) for _ in range(rng.randint(1, 16))] for _ in range(5)]
    skip_sets = random_skip_sets(4, 20, seed=max_draft_tokens)
    for prompt in prompts:
        expected = generate_greedy(tiny_model, prompt, 12)
        for skip_set in skip_sets:
            settings = DecodeSettings(max_new_tokens=12, max_draft_tokens=max_draft_tokens, ngram=None, costs=None,
                                      confidence_threshold=0.0, fallback=False)
            assert decode(tiny_model, prompt, skip_set, settings).token_ids == expected, skip_set


@pytest.mark.integration
def test_greedy_is_identical_to_generate_on_smollm(smollm):
    model, tokenizer = smollm.model, smollm.tokenizer
    texts = ["Write a haiku about autumn.", "What is 17 * 23?", "def fibonacci(n):"]
    for i, text in enumerate(texts):
        prompt = list(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                    add_generation_prompt=True)["input_ids"])
        expected = generate_greedy(model, prompt, 12)
        for skip_set in random_skip_sets(30, 5, seed=i):
            # thin the random sets so drafts get accepted sometimes and the accept path runs
            thin = SkipSet(attention=skip_set.attention[::4], mlp=skip_set.mlp[::6])
            settings = DecodeSettings(max_new_tokens=12, max_draft_tokens=3, ngram=None, costs=None,
                                      confidence_threshold=0.0, fallback=False)
            assert decode(model, prompt, thin, settings).token_ids == expected, thin


def test_perfect_draft_is_fully_accepted():
    model, skip_set = _perfect_draft_model()
    prompt = [5, 6, 7]
    # the prefill gives the first token, then six rounds of 4 drafts + 1 token each
    settings = DecodeSettings(max_new_tokens=31, max_draft_tokens=4, confidence_threshold=0.0, fallback=False,
                              ngram=None, costs=None)
    result = decode(model, prompt, skip_set, settings)
    assert result.token_ids == generate_greedy(model, prompt, 31)
    stats = result.stats
    assert stats.acceptance_rate == 1.0
    assert stats.rounds == 6 and stats.mean_accepted_tokens == 5.0
    assert stats.new_tokens == 31 and stats.tokens_per_s > 0


def test_eos_inside_an_accepted_draft_stops_where_generate_stops():
    model, skip_set = _perfect_draft_model()
    prompt = [9, 4, 11]
    free_run = generate_greedy(model, prompt, 30)
    for position in (2, 5, 9, 14):
        eos = free_run[position]
        if eos in free_run[:position]:
            continue
        model.generation_config.eos_token_id = eos
        expected = generate_greedy(model, prompt, 30)
        assert expected[-1] == eos and len(expected) == position + 1
        settings = DecodeSettings(max_new_tokens=30, max_draft_tokens=6, confidence_threshold=0.0, fallback=False,
                                  ngram=None, costs=None)
        result = decode(model, prompt, skip_set, settings)
        assert result.token_ids == expected
        assert result.stats.accepted_tokens > 0


@pytest.mark.parametrize("reject_at", range(0, 6))
def test_cache_rollback_after_rejection_at_every_draft_position(tiny_model, reject_at):
    """After a rejection at draft position j, every layer holds exactly the full model's KV."""
    prompt = [3, 14, 15, 92, 65]
    gamma = 6
    truth = generate_greedy(tiny_model, prompt, gamma + 2)
    cache = DynamicCache()
    forward = decoding.ForwardStep(tiny_model, cache, torch.device("cpu"))
    length = len(prompt)
    with torch.inference_mode():
        forward(prompt, 0)
        pending = truth[0]
        # run a real draft with a skipped attention layer so the layers' lengths diverge
        _, _, steps = decoding.draft_tokens(forward, SkipSet(attention=(1,), mlp=(2,)), tiny_model, [pending], length,
                                            gamma, DecodeSettings(confidence_threshold=0.0), None, set())
        assert steps == gamma
        assert len({layer.get_seq_length() for layer in cache.layers}) == 2
        crop_cache(cache, length)
        drafts = truth[1: gamma + 1]
        drafts[reject_at] = (drafts[reject_at] + 1) % 128
        logits = forward([pending] + drafts, length)
        accepted, next_token = decoding.verify_drafts(logits, drafts, [], DecodeSettings(), None)
        assert accepted == reject_at and next_token == truth[reject_at + 1]
        crop_cache(cache, length + 1 + accepted)

        reference = DynamicCache()
        tiny_model(torch.tensor([prompt + truth[: reject_at + 1]]), **{cache_keyword(tiny_model): reference},
                   use_cache=True)
    for ours, theirs in zip(cache.layers, reference.layers):
        assert ours.keys.shape == theirs.keys.shape
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_speculative_sampling_matches_the_full_model_distribution(monkeypatch):
    model = sharp_tiny_model()
    prompt = [1, 4, 2]
    skip_set = SkipSet(attention=(1,), mlp=(0,))
    # the first token comes from the prefill; with three tokens the second always comes out
    # of a draft-and-verify round (accepted draft or residual resample)
    settings = DecodeSettings(max_new_tokens=3, max_draft_tokens=1, confidence_threshold=0.0, ngram=None, costs=None,
                              temperature=1.0, top_k=5, fallback=False)
    exact = exact_two_token_distribution(model, prompt, settings)
    # total variation of an empirical 36-cell distribution from 2000 draws is ~0.03 by chance; the
    # wrong rule below is off by far more on this model, which 400 draws show
    tolerance = 0.06
    tv = 0.5 * (empirical_two_token_distribution(model, prompt, skip_set, settings, 2000) - exact).abs().sum().item()
    assert tv < tolerance

    def accept_every_draft(logits, drafts, draft_probs, settings, randomness):
        target = warp(logits, settings)
        return len(drafts), int(torch.multinomial(target[-1], 1, generator=randomness.on(logits.device)))

    monkeypatch.setattr(decoding, "verify_drafts", accept_every_draft)
    wrong_tv = 0.5 * (empirical_two_token_distribution(model, prompt, skip_set, settings, 400)
                      - exact).abs().sum().item()
    assert wrong_tv > 2 * tolerance


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    settings = DecodeSettings(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7, confidence_threshold=0.0)
    first = decode(tiny_model, [5, 6], SkipSet(attention=(2,)), settings).token_ids
    assert decode(tiny_model, [5, 6], SkipSet(attention=(2,)), settings).token_ids == first


def test_randomness_is_one_seeded_generator_per_device_made_there():
    randomness = Randomness(7)
    cpu = torch.device("cpu")
    generator = randomness.on(cpu)
    assert generator.device == cpu and randomness.on(cpu) is generator  # one stream per device, not reseeded
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=torch.Generator().manual_seed(7)))


def test_sampling_draws_where_the_logits_are(tiny_model):
    """Every draw asks for the generator of the device its probabilities are on (a split model's
    logits are on its last device); a real split is checked in test_cuda.py."""
    asked = []

    class Recording(Randomness):
        def on(self, device):
            asked.append(device)
            return super().on(device)

    logits = tiny_model(torch.tensor([[5, 6, 7]])).logits[0].detach()  # (3, vocab)
    settings = DecodeSettings(temperature=1.0)
    probs = [warp(logits[0], settings), warp(logits[1], settings)]
    decoding.verify_drafts(logits, [9, 4], probs, settings, Recording(3))
    decoding.choose_token(logits[-1], settings, Recording(3))
    assert asked == [logits.device] * 3  # the acceptance test and the resample, then the plain draw


def test_sampling_on_an_offloaded_model_is_plain_sampling_seed_for_seed(tmp_path):
    """A model dispatched by accelerate (hooks; two layers on disk) samples, for each seed, exactly
    what the same model samples in one piece: the same distribution, and reproducible."""
    from accelerate import dispatch_model

    plain = make_tiny_llama()
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": ("disk" if i >= 2 else "cpu") for i in range(4)})
    dispatched = dispatch_model(make_tiny_llama(), device_map=device_map, offload_dir=str(tmp_path))
    costs = RelativeCosts(verify=tuple(1.0 + 0.02 * n for n in range(30)), draft_step=0.2)
    skip_set, prompt = SkipSet(attention=(1,), mlp=(0,)), [5, 6, 5, 6, 5]
    samples = set()
    for seed in range(4):
        settings = DecodeSettings(max_new_tokens=10, max_draft_tokens=3, temperature=1.0, top_k=8, seed=seed,
                                  confidence_threshold=0.0, costs=costs, fallback=False)
        ours = decode(dispatched, prompt, skip_set, settings)
        assert ours.stats.rounds > 0  # drafts were verified by speculative sampling
        assert ours.token_ids == decode(plain, prompt, skip_set, settings).token_ids
        assert decode(dispatched, prompt, skip_set, settings).token_ids == ours.token_ids
        samples.add(tuple(ours.token_ids))
    assert len(samples) > 1  # the seed is what decides


def test_the_guard_suspends_drafting_that_is_slower_by_the_clock(tiny_model):
    """The fixed rule drafts every round; with everything skipped nothing is accepted, so rounds cost
    more per token than plain steps and the guard suspends drafting early."""
    everything = SkipSet.from_sublayers(eligible_sublayers(4, keep_first=0, keep_last=0))
    prompt = [7, 8, 9]
    settings = DecodeSettings(max_new_tokens=64, max_draft_tokens=8, confidence_threshold=0.0, ngram=None, costs=None)
    result = decode(tiny_model, prompt, everything, settings)
    assert result.token_ids == generate_greedy(tiny_model, prompt, 64)
    assert result.stats.fell_back
    assert result.stats.fallback_at_token < 32
    unguarded = decode(tiny_model, prompt, everything, dataclasses.replace(settings, fallback=False))
    assert not unguarded.stats.fell_back and unguarded.stats.rounds > 50


@pytest.fixture
def host_waits(monkeypatch):
    """The devices each wait of the timer was for (`timing.synchronize`: what a clock read that
    waits for the device calls), from now on."""
    waits = []
    real = timing.synchronize

    def counting(devices):
        waits.append(frozenset(devices))
        real(devices)

    monkeypatch.setattr(timing, "synchronize", counting)
    return waits


def test_the_loop_waits_for_the_model_s_devices_once_a_round_for_the_guard_only(host_waits):
    """Rounds are timed by marks read after the loop; the guard, deciding inside it, is the one
    thing that waits: one synchronised clock read a round (plain step or drafting round) and one
    before the first, on the model's devices. Without a guard the loop never waits for the timer.
    (Before: two waits a drafting round, one a plain step and four around the loop, on every GPU.)"""
    model, skip_set = _perfect_draft_model()
    costs = RelativeCosts(verify=tuple(1.0 + 0.02 * n for n in range(20)), draft_step=0.2)
    # long enough for the guard's 8 rounds to judge, and so for its plain probe steps
    settings = DecodeSettings(max_new_tokens=48, max_draft_tokens=3, confidence_threshold=0.0, costs=costs)
    stats = decode(model, [5, 6, 7, 8], skip_set, settings).stats
    assert stats.rounds >= 8 and stats.plain_steps >= settings.probe_steps
    assert len(host_waits) == 1 + stats.rounds + stats.plain_steps
    assert set(host_waits) == {frozenset({torch.device("cpu")})}
    assert stats.draft_time_s > 0 and stats.verify_time_s > 0 and stats.plain_time_s > 0
    phases = stats.prefill_time_s + stats.draft_time_s + stats.verify_time_s + stats.plain_time_s
    assert stats.total_time_s >= phases - 1e-9  # contiguous marks: the phases add up to the call
    host_waits.clear()
    decode(model, [5, 6, 7, 8], skip_set, dataclasses.replace(settings, fallback=False))
    assert host_waits == []


def test_a_memory_carries_what_the_policy_learned_to_the_next_call(tiny_model):
    """A skip set whose drafts are all rejected: the first call learns it, the next starts from it
    and drafts with it less."""
    everything = SkipSet.from_sublayers(eligible_sublayers(4, keep_first=0, keep_last=0))
    costs = RelativeCosts(verify=tuple(1.0 + 0.1 * n for n in range(20)), draft_step=0.3)
    settings = DecodeSettings(max_new_tokens=40, max_draft_tokens=8, confidence_threshold=0.0, ngram=None,
                              costs=costs, fallback=False, policy=PolicySettings(layer_skip_prior=0.9, explore=False))
    memory = PolicyMemory()
    first = decode(tiny_model, [7, 8, 9], everything, settings, memory=memory)
    assert memory.layer_skip is not None and memory.layer_skip.rejected[0] > 0
    second = decode(tiny_model, [7, 8, 10], everything, settings, memory=memory)
    alone = decode(tiny_model, [7, 8, 10], everything, settings)
    assert second.token_ids == alone.token_ids == generate_greedy(tiny_model, [7, 8, 10], 40)
    assert second.stats.rounds < alone.stats.rounds
    assert first.stats.accepted_tokens == 0
    with pytest.raises(SkipsearchError, match="call_discount"):
        PolicyMemory(call_discount=1.5)


def test_batches_are_refused_with_a_clear_message(tiny_model):
    with pytest.raises(SkipsearchError, match="one prompt at a time"):
        decode(tiny_model, torch.ones(2, 4, dtype=torch.long), SkipSet(attention=(1,)))


def test_skipping_is_restored_after_decoding(tiny_model):
    calls = hook_blocks(tiny_model)
    decode(tiny_model, [1, 2, 3], SkipSet(attention=(1,), mlp=(2,)), DecodeSettings(max_new_tokens=8))
    assert_blocks_run_through_hooks(tiny_model, calls)


def test_streaming_callback_sees_every_token(tiny_model):
    seen = []
    result = decode(tiny_model, [1, 2, 3], SkipSet(mlp=(1,)),
                    DecodeSettings(max_new_tokens=20, confidence_threshold=0.0), on_tokens=seen.extend)
    assert seen == result.token_ids


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"confidence_threshold": 1.5}, {"top_p": 0.0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(SkipsearchError):
        DecodeSettings(**bad)


def test_crop_cache_only_shortens(tiny_model):
    cache = DynamicCache()
    with torch.inference_mode(), skipping(tiny_model, SkipSet(attention=(2,))):
        tiny_model(torch.tensor([[1, 2, 3, 4]]), **{cache_keyword(tiny_model): cache}, use_cache=True)
    crop_cache(cache, 2)
    assert [layer.get_seq_length() for layer in cache.layers] == [2, 2, 0, 2]


def test_totals_add_up_every_counter_over_calls():
    runs = [DecodeStats(new_tokens=5, rounds=2, drafted_tokens=4, draft_steps=5, accepted_tokens=3, plain_steps=1,
                        draft_time_s=0.5),
            DecodeStats(new_tokens=7, rounds=3, drafted_tokens=6, draft_steps=7, accepted_tokens=2, fell_back=True,
                        fallback_at_token=4)]
    total = DecodeStats.total(runs)
    assert (total.new_tokens, total.rounds, total.drafted_tokens, total.draft_steps, total.accepted_tokens,
            total.plain_steps) == (12, 5, 10, 12, 5, 1)
    assert total.draft_time_s == 0.5 and total.fell_back and total.fallback_at_token is None
