"""skipsearch inside transformers' generate: `custom_generate=skipsearch.hf.self_speculative`, the
folder `skipsearch export-hf` writes, streaming, and the bench row.

Greedy output must be `generate(do_sample=False)`'s token for token (float32) with generate's own
logits processors and stopping criteria; sampled output must follow generate's distribution."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MaxLengthCriteria,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopKLogitsWarper,
)

from skipsearch import hf
from skipsearch.cli import main
from skipsearch.config.profiles import DraftSettings, Profile, ProfileModel, load_profile, save_profile
from skipsearch.engine import timing
from skipsearch.engine.decoding import DecodeStats
from skipsearch.engine.drafting import NgramSettings, PolicySettings, RelativeCosts
from skipsearch.engine.models import model_fingerprint
from skipsearch.engine.skipping import SkipSet, skipping
from skipsearch.errors import SkipsearchError
from skipsearch.experiments.bench import CUSTOM_GENERATE, BenchPrompt, BenchSettings, run_bench
from skipsearch.hf import self_speculative

from conftest import QWEN3_SLIDING, SLIDING_WINDOW, make_tiny, make_tokenizer, random_skip_sets, sharp_tiny_model

VARIANTS = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),  # a sliding window in every layer
    "qwen2": ("qwen2", {}),  # sliding layers from layer 2 on
    "qwen3": ("qwen3", {}),
    "qwen3-sliding": ("qwen3", QWEN3_SLIDING),
}
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# costs under which a skipped model that drafts well pays from the first round
CHEAP = RelativeCosts(verify=tuple(1.0 + 0.02 * n for n in range(20)), draft_step=0.2)


def profile_for(model, skip_set: SkipSet, max_draft_tokens: int = 3, confidence_threshold: float = 0.0,
                **draft) -> Profile:
    config = model.config
    return Profile(
        model=ProfileModel("tiny", config.model_type, config.num_hidden_layers, model_fingerprint(model)),
        task="test",
        skip=skip_set,
        draft=DraftSettings(max_draft_tokens=max_draft_tokens, confidence_threshold=confidence_threshold, **draft),
    )


def _ids(prompt: list[int]) -> torch.Tensor:
    return torch.tensor([prompt])


def _plain(model, prompt, **kwargs) -> list[int]:
    return model.generate(_ids(prompt), do_sample=False, **kwargs)[0].tolist()


def _ours(model, prompt, profile, **kwargs) -> list[int]:
    kwargs.setdefault("fallback", False)  # keep drafting: timings must not decide what is tested
    return model.generate(_ids(prompt), do_sample=False, custom_generate=self_speculative, skip_profile=profile,
                          **kwargs)[0].tolist()


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 128) for _ in range(rng.randint(SLIDING_WINDOW + 2, 2 * SLIDING_WINDOW + 2))]
            for _ in range(count)]


def _perfect_draft_model():
    """Its last MLP adds nothing, so skipping it drafts exactly the full model: every draft is accepted."""
    model = make_tiny("llama")
    model.model.layers[-1].mlp.down_proj.weight.zero_()
    return model, SkipSet(mlp=(3,))


# ---------------------------------------------------------------------------------------------
# greedy: generate(do_sample=False)'s output, token for token


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_equals_generate_on_every_family(name):
    family, overrides = VARIANTS[name]
    model = make_tiny(family, **overrides)
    model.generation_config.eos_token_id = None  # run every token
    skip_sets = [SkipSet(attention=(0,)), *random_skip_sets(4, 2, seed=7)]
    processors = [{}, {"repetition_penalty": 1.8}, {"bad_words_ids": [[5], [7, 9]], "no_repeat_ngram_size": 2}]
    for i, prompt in enumerate(_prompts(2, seed=3)):
        for extra in processors:
            expected = _plain(model, prompt, max_new_tokens=10, **extra)
            for skip_set in skip_sets:
                profile = profile_for(model, skip_set, max_draft_tokens=1 + i * 3)
                assert _ours(model, prompt, profile, max_new_tokens=10, **extra) == expected, (skip_set, extra)


def test_greedy_with_the_profile_s_policy_n_gram_and_layer_skip_drafts(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path))
    model = make_tiny("qwen2")
    model.generation_config.eos_token_id = None
    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]  # n-gram proposals from the start
    cheap = RelativeCosts(verify=(1.0, 1.02, 1.04, 1.06, 1.08, 1.1, 1.12, 1.14), draft_step=0.2)
    profile = profile_for(model, SkipSet(mlp=(3,)), max_draft_tokens=3, ngram=NgramSettings(min_n=1, max_n=3),
                          policy=PolicySettings(), costs=cheap)
    for extra in ({}, {"repetition_penalty": 1.3}):
        stats = DecodeStats()
        # the profile's cheap costs: the policy drafts
        got = _ours(model, prompt, profile, max_new_tokens=16, skip_stats=stats, policy_costs="profile", **extra)
        assert got == _plain(model, prompt, max_new_tokens=16, **extra)
        assert stats.rounds > 0 and stats.ngram_drafted_tokens + stats.drafted_tokens > 0
    # by default it decides with this device's costs, timed once into the cache
    assert _ours(model, prompt, profile, max_new_tokens=16) == _plain(model, prompt, max_new_tokens=16)
    assert len(list((tmp_path / "costs").glob("*.json"))) == 1
    # costs that make drafting hopeless: every step plain
    dear = RelativeCosts(verify=(1.0,) + (9.0,) * 7, draft_step=0.9)
    stats = DecodeStats()
    assert _ours(model, prompt, profile, max_new_tokens=16, skip_stats=stats, policy_costs=dear) == _plain(
        model, prompt, max_new_tokens=16)
    assert stats.rounds == 0
    with pytest.raises(SkipsearchError, match="policy_costs"):
        _ours(model, prompt, profile, max_new_tokens=4, policy_costs="elsewhere")


def test_max_length_and_an_eos_inside_an_accepted_draft_stop_where_generate_stops():
    model, skip_set = _perfect_draft_model()
    prompt = [9, 4, 11]
    profile = profile_for(model, skip_set, max_draft_tokens=6)
    model.generation_config.eos_token_id = None
    free_run = _plain(model, prompt, max_new_tokens=24)[len(prompt):]
    assert _ours(model, prompt, profile, max_length=len(prompt) + 9) == _plain(model, prompt,
                                                                                max_length=len(prompt) + 9)
    checked = 0
    for position in (3, 8, 13):
        eos = free_run[position]
        if eos in free_run[:position]:
            continue
        # every EOS id counts: one that never comes and the one that does
        model.generation_config.eos_token_id = [127 if eos != 127 else 126, eos]
        expected = _plain(model, prompt, max_new_tokens=24)
        assert expected[-1] == eos and len(expected) == len(prompt) + position + 1
        stats = DecodeStats()
        assert _ours(model, prompt, profile, max_new_tokens=24, skip_stats=stats, policy_costs=CHEAP) == expected
        assert stats.accepted_tokens > 0
        checked += 1
    assert checked


class StopAtLength(StoppingCriteria):
    def __init__(self, length: int):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


class StopAfterToken(StoppingCriteria):
    def __init__(self, token: int, prompt_length: int):
        self.token, self.prompt_length = token, prompt_length

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, self.prompt_length:] == self.token).any(-1)


def test_custom_stopping_criteria_stop_inside_an_accepted_draft():
    model, skip_set = _perfect_draft_model()
    model.generation_config.eos_token_id = None
    prompt = [3, 8, 21, 5]
    profile = profile_for(model, skip_set, max_draft_tokens=8)
    free_run = _plain(model, prompt, max_new_tokens=20)[len(prompt):]
    for criteria in (StopAtLength(len(prompt) + 7), StopAfterToken(free_run[5], len(prompt))):
        kwargs = {"max_new_tokens": 20, "stopping_criteria": StoppingCriteriaList([criteria])}
        expected = _plain(model, prompt, **kwargs)
        assert len(expected) < len(prompt) + 20
        stats = DecodeStats()
        assert _ours(model, prompt, profile, skip_stats=stats, policy_costs=CHEAP, **kwargs) == expected
        assert stats.accepted_tokens > 0


def test_return_dict_with_scores_and_logits_as_generate():
    model = make_tiny("llama")
    model.generation_config.eos_token_id = None
    prompt = [4, 5, 6, 7, 8]
    profile = profile_for(model, SkipSet(attention=(2,)), max_draft_tokens=4)
    kwargs = {"max_new_tokens": 8, "return_dict_in_generate": True, "output_scores": True, "output_logits": True,
              "repetition_penalty": 1.5}
    expected = model.generate(_ids(prompt), do_sample=False, **kwargs)
    got = model.generate(_ids(prompt), do_sample=False, custom_generate=self_speculative, skip_profile=profile,
                         fallback=False, **kwargs)
    assert type(got) is type(expected)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) == 8 and len(got.logits) == 8
    for ours, theirs in zip(got.scores + got.logits, expected.scores + expected.logits, strict=True):
        assert ours.shape == theirs.shape == (1, 128)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert got.cache.get_seq_length() == expected.cache.get_seq_length() == len(prompt) + 7


@pytest.mark.integration
def test_greedy_equals_generate_on_smollm(smollm):
    model, tokenizer = smollm.model, smollm.tokenizer
    profile = load_profile(REPO / "reports" / "humaneval-smollm2.profile.yaml")
    messages = [{"role": "user", "content": "def fibonacci(n):"}]
    prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    for i, skip_set in enumerate([profile.skip, *random_skip_sets(30, 2, seed=5)]):
        thin = SkipSet(attention=skip_set.attention[::4], mlp=skip_set.mlp[::6])  # so drafts get accepted
        extra = {"repetition_penalty": 1.2} if i == 1 else {}
        mine = dataclasses.replace(profile, skip=thin, draft=dataclasses.replace(profile.draft, max_draft_tokens=3))
        assert _ours(model, prompt, mine, max_new_tokens=8, **extra) == _plain(model, prompt, max_new_tokens=8,
                                                                                **extra), thin


# ---------------------------------------------------------------------------------------------
# sampling: generate's distribution


def _processors() -> LogitsProcessorList:
    """What generate builds from repetition_penalty=1.3, temperature=0.8, top_k=5, in its order."""
    return LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.8),
                                TopKLogitsWarper(5)])


def _exact(model, prompt) -> torch.Tensor:
    """P(t1, t2) of the model under those processors."""
    processors = _processors()
    with torch.inference_mode():
        ids = _ids(prompt)
        p1 = processors(ids, model(ids).logits[:, -1].float()).softmax(-1)[0]
        vocab = p1.shape[0]
        rows = [processors(_ids(prompt + [t]), model(_ids(prompt + [t])).logits[:, -1].float()) for t in range(vocab)]
        p2 = torch.cat(rows).softmax(-1)
    return p1[:, None] * p2


@pytest.mark.slow
def test_sampling_follows_generate_s_distribution():
    model = sharp_tiny_model()
    model.generation_config.eos_token_id = None
    prompt = [1, 4, 2]
    skip_set = SkipSet(attention=(1,), mlp=(0,))
    exact = _exact(model, prompt)
    with skipping(model, skip_set):
        draft_only = _exact(model, prompt)  # what accepting every draft would give
    # one token from the prefill, the second from a draft-and-verify round (accepted or resampled)
    profile = profile_for(model, skip_set, max_draft_tokens=1)
    samples = 600
    counts = torch.zeros(6, 6)
    for seed in range(samples):
        torch.manual_seed(seed)
        out = model.generate(_ids(prompt), do_sample=True, repetition_penalty=1.3, temperature=0.8, top_k=5,
                             max_new_tokens=3, custom_generate=self_speculative, skip_profile=profile, fallback=False)
        counts[out[0, 3], out[0, 4]] += 1
    empirical = counts / samples
    # by chance the total variation of 600 draws over these 36 cells is ~0.03; accepting every
    # draft instead measured 0.16
    tolerance = 0.07
    assert 0.5 * (empirical - exact).abs().sum().item() < tolerance
    assert 0.5 * (empirical - draft_only).abs().sum().item() > 2 * tolerance
    # a fixed seed gives a fixed sample, as with generate
    again = []
    for _ in range(2):
        torch.manual_seed(11)
        again.append(model.generate(_ids(prompt), do_sample=True, top_k=5, max_new_tokens=8,
                                    custom_generate=self_speculative, skip_profile=profile).tolist())
    assert again[0] == again[1]


def test_custom_generate_waits_for_the_model_s_devices_once_a_round_for_the_guard_only(monkeypatch):
    """As in the decoder: one synchronised clock read a round for the guard (and one before the
    first), on the model's devices; none without a guard. (Before: two a drafting round.)"""
    waits = []
    real = timing.synchronize
    monkeypatch.setattr(timing, "synchronize", lambda devices: (waits.append(frozenset(devices)), real(devices)))
    model, skip_set = _perfect_draft_model()
    model.generation_config.eos_token_id = None
    profile = profile_for(model, skip_set, max_draft_tokens=3)
    stats = DecodeStats()
    # long enough for the guard's 8 rounds to judge, and so for its 2 plain probe steps
    _ours(model, [5, 6, 7, 8], profile, max_new_tokens=40, skip_stats=stats, policy_costs=CHEAP, fallback=True)
    assert stats.rounds >= 8 and stats.plain_steps >= 2
    assert len(waits) == 1 + stats.rounds + stats.plain_steps
    assert set(waits) == {frozenset({torch.device("cpu")})}
    waits.clear()
    _ours(model, [5, 6, 7, 8], profile, max_new_tokens=20, policy_costs=CHEAP)
    assert waits == []


# ---------------------------------------------------------------------------------------------
# streaming


class RecordingStreamer:
    def __init__(self):
        self.events: list = []

    def put(self, value):
        self.events.append(value.tolist())

    def end(self):
        self.events.append("end")


def test_a_streamer_gets_the_prompt_then_the_committed_tokens_then_end():
    model, skip_set = _perfect_draft_model()
    model.generation_config.eos_token_id = None
    prompt = [7, 3, 9]
    streamer = RecordingStreamer()
    out = _ours(model, prompt, profile_for(model, skip_set, max_draft_tokens=4), max_new_tokens=12,
                streamer=streamer, policy_costs=CHEAP)
    assert streamer.events[0] == [prompt] and streamer.events[-1] == "end"
    assert streamer.events.count("end") == 1
    chunks = streamer.events[1:-1]
    assert [token for chunk in chunks for token in chunk] == out[len(prompt):]
    assert any(len(chunk) > 1 for chunk in chunks)  # whole accepted drafts at once


def test_text_iterator_streamer_in_a_thread():
    model = make_tiny("llama", vocab_size=9)
    model.generation_config.eos_token_id = None
    tokenizer = make_tokenizer()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    profile = profile_for(model, SkipSet(mlp=(3,)), max_draft_tokens=3)
    result = {}

    def run():
        result["ids"] = _ours(model, [1, 7, 8], profile, max_new_tokens=10, streamer=streamer)

    thread = threading.Thread(target=run)
    thread.start()
    text = "".join(streamer)
    thread.join(timeout=60)
    assert text.strip() == tokenizer.decode(result["ids"][3:], skip_special_tokens=True).strip()


def test_a_failing_call_still_ends_the_streamer(tmp_path):
    model = make_tiny("llama")
    streamer = RecordingStreamer()
    with pytest.raises(SkipsearchError):
        _ours(model, [5, 6], tmp_path / "missing.yaml", max_new_tokens=4, streamer=streamer)
    assert streamer.events == [[[5, 6]], "end"]


def test_a_streamer_passed_as_an_argument_is_used_without_generate_s_frame():
    """Where transformers passes the streamer on (it does to its own decoding methods), that one is
    streamed to and ended; here no `generate` frame exists to read one from."""
    model, skip_set = _perfect_draft_model()
    prompt = [7, 3, 9]
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id, config.max_length, config.do_sample = None, len(prompt) + 8, False
    streamer = RecordingStreamer()
    out = self_speculative(model, _ids(prompt), LogitsProcessorList(),
                           StoppingCriteriaList([MaxLengthCriteria(len(prompt) + 8)]), config, streamer=streamer,
                           skip_profile=profile_for(model, skip_set), fallback=False, policy_costs=CHEAP)
    assert streamer.events[-1] == "end" and streamer.events.count("end") == 1
    assert [token for chunk in streamer.events[:-1] for token in chunk] == out[0, len(prompt):].tolist()


def _read_while_generating(model, streamer, generate) -> tuple[str, dict]:
    """Run `generate()` in a thread while this one reads `streamer` as a consumer does; the
    streamer's timeout turns an `end()` that never comes into a failure instead of a hang."""
    result = {}

    def run():
        try:
            result["ids"] = generate()
        except Exception as error:  # the consumer's side is what is checked
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = "".join(streamer)  # queue.Empty after the timeout if the streamer is never ended
    thread.join(timeout=30)
    assert not thread.is_alive()
    return text, result


def test_a_call_that_fails_while_decoding_still_ends_a_text_iterator_streamer():
    model = make_tiny("llama", vocab_size=9)
    model.generation_config.eos_token_id = None
    passes = {"n": 0}

    def fail_at_the_fourth_pass(module, args, output):
        passes["n"] += 1
        if passes["n"] == 4:
            raise RuntimeError("the device went away")

    model.lm_head.register_forward_hook(fail_at_the_fourth_pass)
    streamer = TextIteratorStreamer(make_tokenizer(), skip_prompt=True, timeout=10)
    profile = profile_for(model, SkipSet(mlp=(3,)), max_draft_tokens=3)
    _, result = _read_while_generating(model, streamer, lambda: _ours(model, [1, 7, 8], profile, max_new_tokens=20,
                                                                      streamer=streamer))
    assert passes["n"] == 4 and "the device went away" in str(result.get("error"))


def test_the_streamer_is_found_however_deep_generate_calls_the_method():
    """transformers 5.24 drops the streamer for a callable, so it is read from `generate`'s frame:
    helpers put between them (here eight frames) must not hide it."""
    model = make_tiny("llama", vocab_size=9)
    model.generation_config.eos_token_id = None
    tokenizer = make_tokenizer()
    profile = profile_for(model, SkipSet(mlp=(3,)), max_draft_tokens=3)

    def through(depth, *args, **kwargs):
        return through(depth - 1, *args, **kwargs) if depth else self_speculative(*args, **kwargs)

    @functools.wraps(self_speculative)  # generate reads the method's own keywords from its signature
    def deeper(*args, **kwargs):
        return through(8, *args, **kwargs)

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=10)
    text, result = _read_while_generating(model, streamer, lambda: model.generate(
        _ids([1, 7, 8]), do_sample=False, max_new_tokens=10, custom_generate=deeper, skip_profile=profile,
        fallback=False, streamer=streamer)[0].tolist())
    assert text.strip() == tokenizer.decode(result["ids"][3:]).strip()


# ---------------------------------------------------------------------------------------------
# bad input: one clear error


def _one_line(message: str, *fragments: str) -> None:
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_profile_for_another_model_is_refused():
    model = make_tiny("llama")
    other = profile_for(make_tiny("llama", seed=1), SkipSet(mlp=(1,)))
    with pytest.raises(SkipsearchError) as error:
        _ours(model, [5, 6, 7], other, max_new_tokens=4)
    _one_line(str(error.value), "does not fit the loaded model", "fingerprint")


def test_a_malformed_profile_is_refused(tmp_path):
    model = make_tiny("llama")
    path = tmp_path / "bad.yaml"
    save_profile(profile_for(model, SkipSet(mlp=(1,))), path)
    path.write_text(path.read_text().replace("mlp: [1]", "mlp: [1, 9]"))
    with pytest.raises(SkipsearchError) as error:
        _ours(model, [5, 6, 7], path, max_new_tokens=4)
    _one_line(str(error.value), "bad.yaml", "skip.mlp[1]", "out of range")
    with pytest.raises(SkipsearchError) as error:
        _ours(model, [5, 6, 7], 42, max_new_tokens=4)
    _one_line(str(error.value), "skip_profile")


def test_without_a_profile_it_drafts_n_grams_and_plain_drafts_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path))
    model = make_tiny("llama")
    model.generation_config.eos_token_id = None
    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]
    expected = _plain(model, prompt, max_new_tokens=16)
    stats = DecodeStats()
    assert _ours(model, prompt, None, max_new_tokens=16, skip_stats=stats, policy_costs=CHEAP) == expected
    assert stats.ngram_rounds > 0 and stats.layer_skip_rounds == 0
    stats = DecodeStats()
    assert _ours(model, prompt, None, max_new_tokens=16, skip_stats=stats, plain=True) == expected
    assert stats.rounds == 0 and stats.plain_steps == 15


def test_batch_size_two_and_beam_search_are_refused():
    model = make_tiny("llama")
    profile = profile_for(model, SkipSet(mlp=(1,)))
    with pytest.raises(SkipsearchError) as error:
        model.generate(torch.tensor([[5, 6], [7, 8]]), custom_generate=self_speculative, skip_profile=profile,
                       max_new_tokens=4)
    _one_line(str(error.value), "batch size 2", "one sequence")
    with pytest.raises(SkipsearchError) as error:
        model.generate(_ids([5, 6]), num_beams=2, custom_generate=self_speculative, skip_profile=profile,
                       max_new_tokens=4)
    _one_line(str(error.value), "num_beams=2")


def test_the_profile_is_loaded_and_checked_once(tmp_path, monkeypatch):
    model = make_tiny("llama")
    path = tmp_path / "p.yaml"
    save_profile(profile_for(model, SkipSet(mlp=(1,))), path)
    calls = {"fingerprint": 0, "load": 0}

    def counting(name, function):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(hf, "model_fingerprint", counting("fingerprint", hf.model_fingerprint))
    monkeypatch.setattr(hf, "load_profile", counting("load", hf.load_profile))
    for _ in range(3):
        _ours(model, [5, 6, 7], path, max_new_tokens=3)
    assert calls == {"fingerprint": 1, "load": 1}


# ---------------------------------------------------------------------------------------------
# the exported folder


SUBPROCESS = """
import sys
import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
model.generation_config.eos_token_id = None
ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
plain = model.generate(ids, do_sample=False, max_new_tokens=10)
ours = model.generate(ids, do_sample=False, max_new_tokens=10, custom_generate=sys.argv[2],
                      trust_remote_code=True, fallback=False)
print("identical" if torch.equal(plain, ours) else f"different: {plain.tolist()} {ours.tolist()}")
"""


@pytest.mark.slow
def test_the_exported_folder_runs_in_a_fresh_process(tmp_path, capsys):
    model = make_tiny("llama")
    model.save_pretrained(tmp_path / "model")
    save_profile(profile_for(model, SkipSet(attention=(2,)), max_draft_tokens=3), tmp_path / "p.yaml")
    folder = tmp_path / "export"
    assert main(["export-hf", str(tmp_path / "p.yaml"), str(folder)]) == 0
    assert "custom_generate" in capsys.readouterr().out
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\n") and "  - custom_generate\n" in readme.split("---")[1]
    assert (folder / "custom_generate" / "requirements.txt").read_text().startswith("skipsearch>=")
    assert load_profile(folder / "skip_profile.yaml") == load_profile(tmp_path / "p.yaml")

    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SUBPROCESS))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # only the folder and the installed packages
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "model"), str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "identical", done.stdout


def test_export_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    model = make_tiny("llama")
    good = tmp_path / "p.yaml"
    save_profile(profile_for(model, SkipSet(mlp=(1,))), good)
    bad = tmp_path / "bad.yaml"
    bad.write_text("skipsearch_profile: 2\nmodel: nope\n")

    assert main(["export-hf", str(bad), str(tmp_path / "new")]) == 2
    _one_line(capsys.readouterr().err.strip(), "skipsearch: error:", "bad.yaml")
    assert not (tmp_path / "new").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "config.json").write_text("{}")
    assert main(["export-hf", str(good), str(occupied)]) == 2
    _one_line(capsys.readouterr().err.strip(), "not empty", "--force")
    assert sorted(p.name for p in occupied.iterdir()) == ["config.json"]

    # --force writes the export beside the files already there (a model's own folder)
    assert main(["export-hf", str(good), str(occupied), "--force"]) == 0
    assert (occupied / "config.json").read_text() == "{}"
    assert (occupied / "custom_generate" / "generate.py").is_file()
    assert not [p for p in occupied.rglob("*.tmp")]


def test_the_exported_generate_embeds_the_profile(tmp_path):
    model = make_tiny("llama")
    profile = profile_for(model, SkipSet(mlp=(1,)))
    save_profile(profile, tmp_path / "p.yaml")
    assert main(["export-hf", str(tmp_path / "p.yaml"), str(tmp_path / "out")]) == 0
    namespace: dict = {}
    exec((tmp_path / "out" / "custom_generate" / "generate.py").read_text(), namespace)
    assert hf._embedded(namespace["PROFILE_YAML"]) == profile
    assert callable(namespace["generate"])


# ---------------------------------------------------------------------------------------------
# the bench row


def test_the_bench_has_a_custom_generate_row_only_with_a_profile():
    model = make_tiny("llama")
    model.generation_config.eos_token_id = None
    profile = profile_for(model, SkipSet(mlp=(3,)), max_draft_tokens=3)
    prompts = [BenchPrompt("a", [5, 6, 7, 8]), BenchPrompt("b", [9, 10, 11])]
    common = {"max_new_tokens": 6, "skip_set": profile.skip, "max_draft_tokens": 3, "confidence_threshold": 0.0,
              "early_exit_layers": (), "prompt_lookup_num_tokens": (), "ngram": None, "cost_repeats": 0,
              "warmup_tokens": 2}
    with_profile = run_bench(model, prompts, BenchSettings(**common, profile=profile))
    rows = {r.method: r for r in with_profile.rows}
    row = rows[CUSTOM_GENERATE]
    assert (row.identical, row.errors, row.new_tokens) == (2, 0, 12)
    # every token after the prefill's came from a plain step or a verify round (that generate and
    # skipsearch's decoder run the same rounds is test_drafting's
    # test_decoder_custom_generate_and_replay_count_the_same_rounds, with the guard off)
    runs = [run for run in with_profile.runs if run.method == CUSTOM_GENERATE]
    assert all(run.stats.plain_steps + run.stats.rounds + run.stats.accepted_tokens == 5 for run in runs)
    assert row.plain_steps == sum(run.stats.plain_steps for run in runs)
    assert CUSTOM_GENERATE not in [r.method for r in run_bench(model, prompts, BenchSettings(**common)).rows]
