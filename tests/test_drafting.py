"""The drafting policy: the n-gram drafter's index, the cost-model choice, and one set of rules
shared by the decoder and the search's replay."""

import dataclasses

import pytest
import torch

from skipsearch.engine.costs import replay_drafting
from skipsearch.engine.decoding import DecodeSettings, DecodeStats, decode
from skipsearch.engine.drafting import (
    LAYER_SKIP,
    NGRAM,
    PLAIN,
    DraftPolicy,
    Estimate,
    NgramIndex,
    NgramSettings,
    PolicySettings,
    RelativeCosts,
    expected_tokens,
)
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError
from skipsearch.search.references import Reference
from skipsearch.search.scoring import ProxyScorer

from conftest import (
    empirical_two_token_distribution,
    exact_two_token_distribution,
    generate_greedy,
    make_tiny,
    make_tiny_llama,
    sharp_tiny_model,
)

CPU = RelativeCosts(verify=(1.0, 1.7, 2.2, 1.9, 1.8, 2.0, 2.1, 1.9, 2.0, 2.1, 2.2), draft_step=0.8)
GPU = RelativeCosts(verify=tuple(1.0 + 0.01 * n for n in range(11)), draft_step=0.5)
CHEAP = dataclasses.replace(GPU, draft_step=0.15)  # a skip set that leaves out most of the model


def _longest_earlier_match(tokens, settings):
    """The n-gram rule written plainly, as a reference for the incremental index."""
    for n in range(settings.max_n, settings.min_n - 1, -1):
        if len(tokens) < n:
            continue
        suffix = tokens[-n:]
        for end in range(len(tokens) - 1, n - 1, -1):
            if tokens[end - n:end] == suffix:
                return tokens[end:end + settings.max_tokens], n
    return [], 0


def test_the_index_proposes_what_followed_the_latest_longest_match():
    index = NgramIndex(NgramSettings(min_n=1, max_n=3, max_tokens=3), [7, 1, 2, 3, 9, 1, 2, 4, 5, 1, 2])
    # "1 2" ends the context; its latest earlier occurrence is followed by 4 5 1
    assert index.propose() == ([4, 5, 1], 2)
    index.extend([4])
    assert index.propose() == ([5, 1, 2], 3)  # "1 2 4" occurred once before
    assert NgramIndex(NgramSettings(min_n=2), [1, 2, 3]).propose() == ([], 0)


def test_the_incremental_index_equals_the_rule_and_grows_with_the_new_tokens_only():
    import random

    rng = random.Random(0)
    settings = NgramSettings(min_n=1, max_n=4, max_tokens=5)
    tokens = [rng.randrange(6) for _ in range(30)]
    index = NgramIndex(settings, tokens[:10])
    writes = {"n": 0}

    class Counting(dict):
        def __setitem__(self, key, value):
            writes["n"] += 1
            super().__setitem__(key, value)

    index._ends = {n: Counting(ends) for n, ends in index._ends.items()}
    for end in range(10, 30):
        before = writes["n"]
        index.extend(tokens[end:end + 1])
        assert writes["n"] - before <= 4  # one gram per length for one new token, whatever the context
        assert index.propose() == _longest_earlier_match(tokens[:end + 1], settings)


def test_bad_ngram_and_policy_settings_are_refused():
    with pytest.raises(SkipsearchError, match="min_n <= max_n"):
        NgramSettings(min_n=3, max_n=2)
    with pytest.raises(SkipsearchError, match="margin"):
        PolicySettings(margin=0)
    with pytest.raises(SkipsearchError, match="ngram_prior"):
        PolicySettings(ngram_prior=1.0)


def test_expected_tokens_and_the_estimate():
    assert expected_tokens(0.0, 5) == 1.0 and expected_tokens(1.0, 3) == 4.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    estimate = Estimate(prior=0.5, weight=2)
    estimate.record(drafted=4, accepted=4)
    estimate.record(drafted=4, accepted=1)
    assert estimate.value == pytest.approx((1 + 5) / (2 + 5 + 1))


def test_where_verifying_costs_most_of_a_step_the_policy_decodes_plainly():
    """On this CPU verifying two tokens costs 1.7 steps: a draft must be likely to pay for it.
    At 0.4 per token neither drafter pays; at 0.6 three n-gram tokens do (verifying 4 costs 1.9)."""
    policy = DraftPolicy(CPU, PolicySettings(ngram_prior=0.4, layer_skip_prior=0.4), NgramSettings(), layer_skip=True)
    assert policy.choose(8, proposal=[5, 6, 7], match=2).kind == PLAIN
    policy = DraftPolicy(CPU, PolicySettings(ngram_prior=0.6, layer_skip_prior=0.4), NgramSettings(), layer_skip=True)
    assert policy.choose(8, proposal=[5, 6, 7], match=2).tokens == (5, 6, 7)


def test_where_verifying_is_nearly_free_the_same_rule_drafts_long():
    policy = DraftPolicy(GPU, PolicySettings(ngram_prior=0.9, layer_skip_prior=0.6), NgramSettings(), layer_skip=True)
    choice = policy.choose(8, proposal=[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], match=2)
    assert choice.kind == NGRAM and choice.tokens == (5, 6, 7, 8, 9, 10, 11, 12)
    # a skipped model at a fifth of a step, right 80% of the time: drafts of several tokens on
    # the GPU, none where verifying costs 1.7 steps and a draft step 0.8
    cheap = RelativeCosts(verify=GPU.verify, draft_step=0.2)
    choice = DraftPolicy(cheap, PolicySettings(layer_skip_prior=0.8), layer_skip=True, max_draft_tokens=8).choose(8)
    assert choice.kind == LAYER_SKIP and choice.draft_tokens >= 4
    assert DraftPolicy(CPU, PolicySettings(layer_skip_prior=0.8), layer_skip=True).choose(8).kind == PLAIN


def test_the_policy_learns_to_stop_drafting_what_is_rejected():
    policy = DraftPolicy(CPU, PolicySettings(ngram_prior=0.9), NgramSettings(min_n=2, max_n=2), layer_skip=False)
    first = policy.choose(8, proposal=[1, 2, 3], match=2)
    assert first.kind == NGRAM
    for _ in range(20):
        policy.record(first, drafted=3, accepted=0)
    assert policy.choose(8, proposal=[1, 2, 3], match=2).kind == PLAIN


def test_without_costs_the_rule_is_fixed():
    policy = DraftPolicy(None, layer_skip=True, max_draft_tokens=5)
    assert (policy.choose(8).kind, policy.choose(8).draft_tokens) == (LAYER_SKIP, 5)
    assert DraftPolicy(None, ngram=NgramSettings()).choose(2, [4, 5, 6], 2).tokens == (4, 5)
    assert DraftPolicy(None, ngram=NgramSettings()).choose(0, [4, 5, 6], 2).kind == PLAIN


# ---------------------------------------------------------------------------- in the decoder


def _repeating_prompt(length=24, period=7, offset=3):
    return [offset + (i % period) * 5 for i in range(length)]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("costs", [None, GPU, CPU, CHEAP], ids=["fixed", "gpu-costs", "cpu-costs", "cheap-drafts"])
def test_greedy_with_ngram_drafts_is_identical_to_generate(family, costs):
    model = make_tiny(family)
    continued = 0
    for prompt in (_repeating_prompt(), _repeating_prompt(30, 5, 9), [4, 8, 15, 16, 23, 42]):
        expected = generate_greedy(model, prompt, 16)
        for skip_set in (None, SkipSet(attention=(2,)), SkipSet(mlp=(0, 3))):
            settings = DecodeSettings(max_new_tokens=16, max_draft_tokens=4, confidence_threshold=0.0, fallback=False,
                                      ngram=NgramSettings(min_n=1, max_n=3, max_tokens=6), costs=costs,
                                      policy=PolicySettings(ngram_prior=0.9, layer_skip_prior=0.5))
            result = decode(model, prompt, skip_set, settings)
            assert result.token_ids == expected, (prompt, skip_set)
            continued += result.stats.ngram_layer_skip_rounds
    if costs is CHEAP:  # the skipped model continued n-gram drafts, wrong ones included
        assert continued > 0


def _perfect_draft_model():
    """A tiny model whose last MLP adds nothing, so skipping it drafts exactly the full model."""
    model = make_tiny_llama(seed=1)
    model.model.layers[-1].mlp.down_proj.weight.zero_()
    return model, SkipSet(mlp=(len(model.model.layers) - 1,))


@pytest.mark.parametrize("mode", ["ngram only", "layer skip", "hybrid, gpu costs", "hybrid, cpu costs",
                                  "continued, cheap drafts", "fixed"])
def test_decoder_and_replay_count_the_same_rounds(mode):
    """The search's prediction replays the decoder's own rules: over the tokens the decoder
    produced, the counts agree exactly (the perfect draft model makes the proxy's outcomes the
    decoder's)."""
    model, skip_set = _perfect_draft_model()
    ngram = NgramSettings(min_n=1, max_n=3, max_tokens=6)
    settings = {
        "ngram only": dict(ngram=ngram, costs=GPU),
        "layer skip": dict(costs=GPU),
        "hybrid, gpu costs": dict(ngram=ngram, costs=GPU),
        "hybrid, cpu costs": dict(ngram=ngram, costs=CPU),
        # short, trusted n-gram drafts and draft steps at a seventh of a plain step: continuing pays
        "continued, cheap drafts": dict(ngram=NgramSettings(min_n=1, max_n=3, max_tokens=2),
                                        costs=CHEAP,
                                        policy=PolicySettings(ngram_prior=0.95, layer_skip_prior=0.7)),
        "fixed": dict(ngram=ngram),
    }[mode]
    skip = SkipSet() if mode == "ngram only" else skip_set
    decoding = DecodeSettings(max_new_tokens=24, max_draft_tokens=4, confidence_threshold=0.0, fallback=False,
                              **{"policy": PolicySettings(ngram_prior=0.7, layer_skip_prior=0.7), **settings})
    prompts = [_repeating_prompt(), _repeating_prompt(20, 4, 11)]
    outputs = [decode(model, prompt, skip, decoding) for prompt in prompts]
    references = [Reference(str(i), tuple(p), tuple(o.token_ids)) for i, (p, o) in enumerate(zip(prompts, outputs))]
    replay_prompts = ProxyScorer(model, references).score(skip).prompts
    replayed, _ = replay_drafting(replay_prompts, decoding, len(skip) > 0, GPU)
    measured = DecodeStats.total([o.stats for o in outputs])
    fields = ("rounds", "drafted_tokens", "accepted_tokens", "draft_steps", "plain_steps", "ngram_rounds",
              "ngram_drafted_tokens", "ngram_accepted_tokens", "ngram_layer_skip_rounds")
    assert {f: getattr(replayed, f) for f in fields} == {f: getattr(measured, f) for f in fields}
    if mode == "ngram only":
        assert measured.ngram_rounds > 0
    if mode == "continued, cheap drafts":
        assert measured.ngram_layer_skip_rounds > 0 and measured.layer_skip_rounds > 0


@pytest.mark.slow
@pytest.mark.parametrize("continued", [False, True], ids=["ngram", "ngram continued by the skip set"])
def test_a_sampled_ngram_draft_is_a_point_mass_that_keeps_the_full_models_distribution(monkeypatch, continued):
    """Speculative sampling with an n-gram proposal: accept it with probability p(token), else
    sample p without it. The second token always comes out of an n-gram round here, alone or
    continued by the skipped model (whose draft then follows the point mass)."""
    from skipsearch.engine import decoding
    from skipsearch.engine.decoding import warp

    model = sharp_tiny_model()
    prompt = [0, 3, 1, 4, 2, 5, 3, 0, 4, 1, 5, 2]  # every token occurs, followed by another
    settings = DecodeSettings(max_new_tokens=3, confidence_threshold=0.0, temperature=1.0, top_k=5, fallback=False,
                              ngram=NgramSettings(min_n=1, max_n=1, max_tokens=1))
    skip_set = None
    if continued:  # room for one more token, and costs under which continuing pays from the first round
        skip_set = SkipSet(mlp=(1,))
        settings = dataclasses.replace(settings, max_new_tokens=4, costs=CHEAP,
                                       policy=PolicySettings(ngram_prior=0.95, layer_skip_prior=0.9))
    exact = exact_two_token_distribution(model, prompt, settings)
    tolerance = 0.06
    stats = decode(model, prompt, skip_set, settings).stats
    if continued:  # the first round (a rejection may leave room for an n-gram round after it)
        assert stats.ngram_layer_skip_rounds == 1
    else:
        assert stats.ngram_rounds == 1
    tv = 0.5 * (empirical_two_token_distribution(model, prompt, skip_set, settings, 2000) - exact).abs().sum().item()
    assert tv < tolerance

    def accept_every_draft(logits, drafts, draft_probs, settings, generator):
        return len(drafts), int(torch.multinomial(warp(logits, settings)[-1], 1, generator=generator))

    monkeypatch.setattr(decoding, "_verify", accept_every_draft)
    wrong = empirical_two_token_distribution(model, prompt, skip_set, settings, 400)
    assert 0.5 * (wrong - exact).abs().sum().item() > 2 * tolerance


def test_with_a_policy_the_fallback_waits_for_more_rounds():
    """Under a cost-model policy the fallback judges after `policy_fallback_rounds`, so the
    policy's first rounds, drafted on its priors, do not end a policy that pays once it learnt."""
    assert DecodeSettings(fallback_min_rounds=2).fallback_rounds == 2
    assert DecodeSettings(fallback_min_rounds=2, costs=GPU, policy_fallback_rounds=8).fallback_rounds == 8


def test_a_policy_s_verdict_on_one_prompt_does_not_carry_to_the_next(monkeypatch):
    """The fixed rule's fallback verdict carries across calls through a FallbackMemory; a cost-model
    policy's does not, since its n-gram drafts depend on each prompt."""
    from skipsearch.engine.decoding import FallbackMemory

    model = make_tiny_llama()
    skip_set = SkipSet(attention=(0, 1, 2, 3), mlp=(0, 1, 2, 3))  # drafts that are always rejected
    # a clock that ticks once per reading: a round (3 readings) of one token costs 2 plain steps
    monkeypatch.setattr("skipsearch.engine.timing.time.perf_counter", iter(range(0, 10**9, 1)).__next__)
    for costs, carried in ((None, True), (GPU, False)):
        settings = DecodeSettings(max_new_tokens=40, max_draft_tokens=2, confidence_threshold=0.0, costs=costs,
                                  fallback_min_rounds=1, policy_fallback_rounds=1)
        memory = FallbackMemory()
        first = decode(model, _repeating_prompt(), skip_set, settings, memory=memory).stats
        second = decode(model, _repeating_prompt(), skip_set, settings, memory=memory).stats
        assert first.fell_back and first.fallback_at_token > 0
        assert (second.fallback_at_token == 0) is carried
