"""The drafting policy: the n-gram drafter's index, the cost-model choice, and one set of rules
shared by the decoder and the search's replay."""

import dataclasses
import random

import pytest
import torch

from skipsearch.engine.decoding import DecodeSettings, DecodeStats, decode
from skipsearch.engine.drafting import (
    LAYER_SKIP,
    NGRAM,
    PLAIN,
    AcceptanceCounts,
    Choice,
    DraftPolicy,
    NgramIndex,
    NgramSettings,
    PolicyMemory,
    PolicySettings,
    Priors,
    RelativeCosts,
    ThroughputGuard,
    expected_tokens,
    round_cost,
)
from skipsearch.engine.replay import replay_drafting
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


def _reference_proposal(tokens, settings):
    """The n-gram rule written plainly, as a reference for the incremental index: the longest
    suffix seen before, then token by token the most frequent follower of the draft's tail (the
    latest among equals), backing off to shorter tails but not below min(first match, 2)."""

    def follower(context, shortest):
        for n in range(settings.max_n, shortest - 1, -1):
            if len(context) < n:
                continue
            counts, latest = {}, {}
            for end in range(n, len(tokens)):  # only committed tokens are followers
                if tuple(tokens[end - n:end]) == tuple(context[-n:]):
                    counts[tokens[end]] = counts.get(tokens[end], 0) + 1
                    latest[tokens[end]] = end
            if counts:
                return max(counts, key=lambda t: (counts[t], latest[t])), n
        return None, 0

    token, match = follower(tokens, settings.min_n)
    if token is None:
        return [], 0
    draft = [token]
    while len(draft) < settings.max_tokens:
        token, n = follower(tokens + draft, max(settings.min_n, min(match, 2)))
        if token is None:
            break
        draft.append(token)
    return draft, match


def test_the_index_proposes_the_most_frequent_continuation():
    index = NgramIndex(NgramSettings(min_n=1, max_n=3, max_tokens=3), [7, 1, 2, 3, 9, 1, 2, 3, 5, 1, 2, 4, 6, 1, 2])
    # "1 2" ends the context; it was followed by 3 twice and by 4 once (the latest): 3 wins, then "2 3" -> 9 or 5
    draft, match = index.propose()
    assert (draft[0], match) == (3, 2)
    assert draft[1] == 5  # "1 2 3" was followed by 9 and by 5 once each: the latest
    index.extend([4])
    assert index.propose()[0][0] == 6  # "1 2 4" occurred once, followed by 6
    assert NgramIndex(NgramSettings(min_n=2), [1, 2, 3]).propose() == ([], 0)


def test_the_incremental_index_equals_the_rule_and_grows_with_the_new_tokens_only():
    rng = random.Random(0)
    settings = NgramSettings(min_n=1, max_n=4, max_tokens=5)
    tokens = [rng.randrange(6) for _ in range(60)]
    index = NgramIndex(settings, tokens[:10])
    writes = {"n": 0}

    class Counting(dict):
        def __setitem__(self, key, value):
            writes["n"] += 1
            super().__setitem__(key, value)

    index._followers = {n: Counting(table) for n, table in index._followers.items()}
    for end in range(10, 60):
        before = writes["n"]
        index.extend(tokens[end:end + 1])
        assert writes["n"] - before <= 4  # at most one new n-gram per length for one token, whatever the context
        assert index.propose() == _reference_proposal(tokens[:end + 1], settings)


def test_bad_ngram_and_policy_settings_are_refused():
    with pytest.raises(SkipsearchError, match="min_n <= max_n"):
        NgramSettings(min_n=3, max_n=2)
    with pytest.raises(SkipsearchError, match="margin"):
        PolicySettings(margin=0)
    with pytest.raises(SkipsearchError, match="ngram_prior"):
        PolicySettings(ngram_prior=1.0)


def test_expected_tokens_and_the_posterior_by_position():
    assert expected_tokens(0.0, 5) == 1.0 and expected_tokens(1.0, 3) == 4.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    counts = AcceptanceCounts.of_drafts([(4, 4), (4, 1), (2, 0)], positions=4)
    assert counts.accepted == (2, 1, 1, 1) and counts.rejected == (1, 1, 0, 0) and counts.drafts == 3
    # prior Beta(0.5 * 2, 0.5 * 2) per position, plus the counts; nothing fades without rounds
    policy = DraftPolicy(GPU, PolicySettings(layer_skip_prior=0.5, prior_weight=2, discount=1.0), layer_skip=True,
                         max_draft_tokens=4, priors=Priors(layer_skip=counts))
    assert policy.acceptance(LAYER_SKIP) == pytest.approx([(1 + 2) / (2 + 3), (1 + 1) / (2 + 2), 2 / 3, 2 / 3])
    # a profile's counts are capped, so that this device's evidence can overrule them
    strong = Priors(layer_skip=AcceptanceCounts((900.0,), (100.0,)))
    capped = DraftPolicy(GPU, PolicySettings(layer_skip_prior=0.5, prior_weight=2, prior_cap=8), layer_skip=True,
                         max_draft_tokens=1, priors=strong)
    assert capped.acceptance(LAYER_SKIP) == pytest.approx([(1 + 7.2) / (2 + 8)])
    with pytest.raises(SkipsearchError, match="one entry per draft position"):
        AcceptanceCounts((1.0,), ())


def test_where_verifying_costs_most_of_a_step_the_policy_decodes_plainly():
    """On this CPU verifying two tokens costs 1.7 steps: a draft must be likely to pay for it.
    At 0.4 per token neither drafter pays; at 0.6 three n-gram tokens do (verifying 4 costs 1.9)."""
    means = dict(explore=False)
    policy = DraftPolicy(CPU, PolicySettings(ngram_prior=0.4, layer_skip_prior=0.4, **means), NgramSettings(),
                         layer_skip=True)
    assert policy.choose(8, proposal=[5, 6, 7], match=3).kind == PLAIN
    policy = DraftPolicy(CPU, PolicySettings(ngram_prior=0.6, layer_skip_prior=0.4, **means), NgramSettings(),
                         layer_skip=True)
    assert policy.choose(8, proposal=[5, 6, 7], match=3).tokens == (5, 6, 7)


def test_where_verifying_is_nearly_free_the_same_rule_drafts_long():
    means = dict(explore=False)
    policy = DraftPolicy(GPU, PolicySettings(ngram_prior=0.9, layer_skip_prior=0.6, **means), NgramSettings(),
                         layer_skip=True)
    choice = policy.choose(8, proposal=[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], match=3)
    assert choice.kind == NGRAM and choice.tokens == (5, 6, 7, 8, 9, 10, 11, 12)
    # a skipped model at a fifth of a step, right 80% of the time: drafts of several tokens on
    # the GPU, none where verifying costs 1.7 steps and a draft step 0.8
    cheap = RelativeCosts(verify=GPU.verify, draft_step=0.2)
    choice = DraftPolicy(cheap, PolicySettings(layer_skip_prior=0.8, **means), layer_skip=True,
                         max_draft_tokens=8).choose(8)
    assert choice.kind == LAYER_SKIP and choice.draft_tokens >= 4
    assert DraftPolicy(CPU, PolicySettings(layer_skip_prior=0.8, **means), layer_skip=True).choose(8).kind == PLAIN


def _stream(policy, accepts, rounds, proposal=(1, 2, 3, 4, 5, 6), match=3):
    """Run `rounds` rounds of a synthetic acceptance stream: `accepts(round, choice)` says how many
    of the choice's drafted tokens the full model accepts. Returns the kinds chosen."""
    kinds = []
    for number in range(rounds):
        choice = policy.choose(8, proposal=list(proposal), match=match)
        drafted = len(choice.tokens) + choice.draft_tokens
        policy.record(choice, drafted, min(drafted, accepts(number, choice)) if drafted else 0)
        kinds.append(choice.kind)
    return kinds


def test_a_drafter_that_stops_paying_mid_generation_is_dropped_within_bounded_rounds():
    """n-gram drafts accepted whole for 60 rounds, then never: with Thompson sampling and discounted
    evidence the policy keeps drafting while they pay and drafts in at most a quarter of the rounds
    a few dozen rounds after (the guard bounds what those cost by the clock)."""
    for seed in range(5):
        policy = DraftPolicy(CPU, PolicySettings(seed=seed), NgramSettings(), layer_skip=False)
        kinds = _stream(policy, lambda number, choice: 99 if number < 60 else 0, 200)
        assert kinds[20:60].count(NGRAM) >= 36, seed
        assert kinds[100:].count(NGRAM) <= 25, seed  # re-checked at a bounded rate after the drop


def test_a_drafter_that_starts_paying_is_picked_up():
    """A skip set rejected for 60 rounds, then accepted whole: the faded evidence lets Thompson
    sampling try it again, and the policy drafts with it once it pays."""
    cheap = RelativeCosts(verify=CPU.verify, draft_step=0.2)
    for seed in range(5):
        policy = DraftPolicy(cheap, PolicySettings(seed=seed), layer_skip=True, max_draft_tokens=6)
        kinds = _stream(policy, lambda number, choice: 0 if number < 60 else 99, 400, proposal=(), match=0)
        assert kinds[40:60].count(LAYER_SKIP) <= 10, seed
        assert kinds[300:].count(LAYER_SKIP) >= 80, seed


def test_a_skip_set_too_unsure_to_draft_is_dropped_though_its_prior_claims_otherwise():
    """Drafts the confidence threshold stops before their first token cost a draft pass and give
    nothing; they count as rejected at the first position, so a profile whose priors claim 90%
    acceptance for such a skip set stops being followed. The priors fade with the evidence, and
    the belief falls back to a default prior below break-even by the costs, so the skip set is
    re-checked by exploration only: in 5-6 of the last 150 rounds here (with the priors kept
    whole and a default prior of 0.6, in 63-68; without counting empty drafts, in all)."""
    claimed = Priors(layer_skip=AcceptanceCounts((900.0,) * 8, (100.0,) * 8))
    for seed in range(5):
        policy = DraftPolicy(GPU, PolicySettings(seed=seed), layer_skip=True, priors=claimed)
        kinds = []
        for _ in range(200):
            choice = policy.choose(8)
            # whatever was asked, the draft came back empty after one pass
            policy.record(choice, 0, 0, int(choice.kind == LAYER_SKIP))
            kinds.append(choice.kind)
        assert kinds[:5].count(LAYER_SKIP) >= 3, seed  # the prior is followed at first
        assert kinds[50:].count(LAYER_SKIP) <= 20, seed
        assert policy.acceptance(LAYER_SKIP)[0] < 0.3, seed


def test_exploring_loses_no_more_time_than_its_budget_by_what_rounds_realized():
    """Drafts that come back empty cost a draft pass that no posterior mean foresees. Charged by
    what each exploring round realized, the time exploring lost over the calls after the first
    (whose priors claim 90%) stays within `explore_cost` of their time, plus the step's worth the
    first call left and one round's overshoot. Charged by the means, with a fresh allowance every
    call (the rule before), all 5 of these streams lost more than that, by 20-91%."""
    claimed = Priors(layer_skip=AcceptanceCounts((900.0,) * 8, (100.0,) * 8))
    settings = PolicySettings()
    for seed in range(5):
        memory, lost, spent = PolicyMemory(), 0.0, 0.0
        for call in range(4):
            policy = DraftPolicy(GPU, dataclasses.replace(settings, seed=10 * seed + call), layer_skip=True,
                                 priors=claimed, memory=memory)
            carried = policy.explore_allowance
            for _ in range(63):
                choice = policy.choose(8)
                steps = int(choice.kind == LAYER_SKIP)  # one draft pass, stopped before its first token
                policy.record(choice, 0, 0, steps)
                cost = round_cost(GPU, choice, 0, steps)
                if call:
                    lost, spent = lost + cost - 1.0, spent + cost
            policy.remember()
            if call == 1:
                assert carried <= 1.0
                opening = carried
        assert memory.explore_allowance is not None, seed
        assert lost <= opening + settings.explore_cost * spent + GPU.draft_step, seed


def test_a_round_the_means_would_choose_too_is_not_charged_to_exploring():
    """Thompson draws that pick what the means pick, at another predicted rate, are no exploring:
    such a round takes nothing from the allowance, however little it then commits."""
    policy = DraftPolicy(GPU, PolicySettings(ngram_prior=0.9), NgramSettings(), layer_skip=False)
    proposal = [1, 2, 3, 4, 5, 6]
    for _ in range(30):
        rng, policy.rng = policy.rng, None
        by_means = policy.choose(8, proposal=proposal, match=3)
        policy.rng = rng
        before = policy.explore_allowance
        choice = policy.choose(8, proposal=proposal, match=3)
        policy.record(choice, len(choice.tokens), 0)  # every draft rejected
        if choice.same_round(by_means):
            assert policy.explore_allowance >= before, choice


def test_the_profile_s_priors_open_a_memory_s_first_call_only():
    """The next call opens with what the first left in the memory (the priors' remains included),
    not with the priors again: a skip set the first call saw rejected is not believed anew."""
    claimed = Priors(layer_skip=AcceptanceCounts((900.0,) * 8, (100.0,) * 8))
    settings, memory = PolicySettings(explore=False), PolicyMemory()
    first = DraftPolicy(GPU, settings, layer_skip=True, priors=claimed, memory=memory)
    opening = first.acceptance(LAYER_SKIP)[0]
    for _ in range(10):
        first.record(Choice(LAYER_SKIP, draft_tokens=1), 1, 0)
    first.remember()
    second = DraftPolicy(GPU, settings, layer_skip=True, priors=claimed, memory=memory)
    without_memory = DraftPolicy(GPU, settings, layer_skip=True, priors=claimed)
    assert second.acceptance(LAYER_SKIP)[0] < 0.4 < 0.7 < without_memory.acceptance(LAYER_SKIP)[0] == opening


def test_the_guard_suspends_drafting_slower_than_plain_steps_and_lets_it_back():
    guard = ThroughputGuard(probe_steps=2, min_rounds=4, first_backoff=16)
    assert guard.allows_drafting(1)  # no probing before there is something to judge
    tokens = 1
    for _ in range(4):  # 3 seconds for 2 tokens: slower than a plain step per token, not yet known
        tokens += 2
        guard.drafting_round(3.0, 2, tokens)
    assert guard.suspensions == [] and not guard.allows_drafting(tokens)  # probe now
    guard.plain_step(1.0)
    assert not guard.allows_drafting(tokens + 1)
    guard.plain_step(1.0)
    tokens += 2
    assert guard.allows_drafting(tokens)
    tokens += 2
    guard.drafting_round(3.0, 2, tokens)  # judged at once, against the probes
    assert guard.suspensions == [tokens] and not guard.allows_drafting(tokens + 15)
    assert guard.allows_drafting(tokens + 16)
    for _ in range(10):  # 1.5 seconds for 3 tokens: drafting pays, no new suspension
        tokens += 3
        guard.drafting_round(1.5, 3, tokens)
    assert guard.suspensions == [tokens - 30]


def _guarded_call(guard: ThroughputGuard, rng: random.Random, acceptance: float, draft: int, cost: float,
                  tokens: int = 64) -> int:
    """A call of `tokens` tokens: 7 rounds in 10 have a draft of `draft` tokens, each accepted with
    `acceptance`, that costs `cost` plain steps; timings jitter by 8%. Returns the drafting
    rounds timed before the first suspension (all of them if none)."""
    committed = rounds = 0
    while committed < tokens:
        if guard.allows_drafting(committed) and rng.random() < 0.7:
            accepted = 0
            while accepted < draft and rng.random() < acceptance:
                accepted += 1
            committed += accepted + 1
            guard.drafting_round(cost * (1 + rng.gauss(0, 0.08)), accepted + 1, committed)
            rounds += 0 if guard.suspensions else 1
        else:
            committed += 1
            guard.plain_step(1 + rng.gauss(0, 0.08))
    return rounds


def test_the_guard_lets_noisy_drafting_that_pays_through_and_catches_drafting_that_loses():
    """4-token drafts at 35% acceptance pay 1.18x a round on average, but rounds commit 1 to 5
    tokens. Comparing the rates of the last rounds suspended such drafting in 55% of these
    64-token calls, on noise; the guard's test, in 20%. A 1-token draft at 30% costing 1.7 plain
    steps (0.76x) is suspended in every call: in half of them within 8 drafting rounds, as the
    rates' comparison did, and in all within 24 (that comparison: 8)."""
    rng = random.Random(0)
    paying = [ThroughputGuard() for _ in range(200)]
    for guard in paying:
        _guarded_call(guard, rng, 0.35, 4, 1.3)
    assert sum(bool(guard.suspensions) for guard in paying) < 0.3 * len(paying)
    losing = [ThroughputGuard() for _ in range(50)]
    rounds = sorted(_guarded_call(guard, rng, 0.3, 1, 1.7) for guard in losing)
    assert all(guard.suspensions for guard in losing)
    assert rounds[len(rounds) // 2] <= 8 and rounds[-1] <= 24


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
    drafted = 0
    for prompt in (_repeating_prompt(), _repeating_prompt(30, 5, 9), [4, 8, 15, 16, 23, 42]):
        expected = generate_greedy(model, prompt, 16)
        for skip_set in (None, SkipSet(attention=(2,)), SkipSet(mlp=(0, 3))):
            settings = DecodeSettings(max_new_tokens=16, max_draft_tokens=4, confidence_threshold=0.0, fallback=False,
                                      ngram=NgramSettings(min_n=1, max_n=3, max_tokens=6), costs=costs,
                                      policy=PolicySettings(ngram_prior=0.9, layer_skip_prior=0.8))
            result = decode(model, prompt, skip_set, settings)
            assert result.token_ids == expected, (prompt, skip_set)
            drafted += result.stats.rounds
    assert drafted > 0


def _perfect_draft_model():
    """A tiny model whose last MLP adds nothing, so skipping it drafts exactly the full model."""
    model = make_tiny_llama(seed=1)
    model.model.layers[-1].mlp.down_proj.weight.zero_()
    return model, SkipSet(mlp=(len(model.model.layers) - 1,))


def _custom_generate_stats(model, prompt, skip_set, settings) -> DecodeStats:
    """`generate(custom_generate=self_speculative)` with a profile holding `settings`' drafting."""
    from skipsearch.config.profiles import DraftSettings, Profile, ProfileModel
    from skipsearch.engine.models import model_fingerprint
    from skipsearch.hf import self_speculative

    config = model.config
    profile = Profile(ProfileModel("tiny", config.model_type, config.num_hidden_layers, model_fingerprint(model)),
                      "test", skip_set, DraftSettings(settings.max_draft_tokens, settings.confidence_threshold,
                                                      ngram=settings.ngram, policy=settings.policy))
    stats = DecodeStats()
    model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=settings.max_new_tokens,
                   custom_generate=self_speculative, skip_profile=profile, policy_costs=settings.costs,
                   fallback=False, skip_stats=stats, policy_memory=PolicyMemory())  # nothing learnt before
    return stats


@pytest.mark.parametrize("mode", ["ngram only", "layer skip", "hybrid, gpu costs", "hybrid, cpu costs",
                                  "continued, cheap drafts", "fixed"])
def test_decoder_custom_generate_and_replay_count_the_same_rounds(mode):
    """The search's prediction replays the decoder's own rounds: over the tokens the decoder
    produced, the counts agree exactly (the perfect draft model makes the proxy's outcomes the
    decoder's), and so do generate's through custom_generate."""
    model, skip_set = _perfect_draft_model()
    ngram = NgramSettings(min_n=1, max_n=3, max_tokens=6)
    settings = {
        "ngram only": dict(ngram=ngram, costs=GPU),
        "layer skip": dict(ngram=None, costs=GPU),
        "hybrid, gpu costs": dict(ngram=ngram, costs=GPU),
        "hybrid, cpu costs": dict(ngram=ngram, costs=CPU),
        # short, trusted n-gram drafts and draft steps at a seventh of a plain step: continuing pays
        "continued, cheap drafts": dict(ngram=NgramSettings(min_n=1, max_n=3, max_tokens=2),
                                        costs=CHEAP,
                                        policy=PolicySettings(ngram_prior=0.95, layer_skip_prior=0.7)),
        "fixed": dict(ngram=ngram, costs=None),
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
    if decoding.costs is not None:  # transformers' generate through custom_generate runs the same rounds
        via_generate = DecodeStats.total([_custom_generate_stats(model, prompt, skip, decoding) for prompt in prompts])
        assert {f: getattr(via_generate, f) for f in fields} == {f: getattr(measured, f) for f in fields}
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
                              ngram=NgramSettings(min_n=1, max_n=1, max_tokens=1), costs=GPU)
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

    def accept_every_draft(logits, drafts, draft_probs, settings, randomness):
        generator = randomness.on(logits.device)
        return len(drafts), int(torch.multinomial(warp(logits, settings)[-1], 1, generator=generator))

    monkeypatch.setattr(decoding, "verify_drafts", accept_every_draft)
    wrong = empirical_two_token_distribution(model, prompt, skip_set, settings, 400)
    assert 0.5 * (wrong - exact).abs().sum().item() > 2 * tolerance
