"""A runtime's drafting policy decides with its own device's costs, timed once and cached."""

import json

import pytest

from skipsearch.cli import main
from skipsearch.config.profiles import DraftSettings, Profile, ProfileModel, save_profile
from skipsearch.engine import device_costs
from skipsearch.engine.drafting import NgramSettings, PolicySettings, RelativeCosts
from skipsearch.engine.models import model_fingerprint
from skipsearch.engine.skipping import SkipSet

from conftest import make_tiny_llama, make_tokenizer


@pytest.fixture
def timings(monkeypatch, tmp_path):
    """Counts the real cost measurements costs_here makes, with the cache in tmp_path."""
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    calls = []
    real = device_costs.measure_costs

    def counted(model, **kwargs):
        calls.append(kwargs)
        return real(model, **kwargs)

    monkeypatch.setattr(device_costs, "measure_costs", counted)
    return calls


def test_context_buckets_are_powers_of_two():
    assert [device_costs.context_bucket(n) for n in (1, 64, 65, 300, 1024)] == [64, 64, 128, 512, 1024]


def test_costs_are_timed_once_per_bucket_and_read_back(timings, tmp_path):
    model = make_tiny_llama()
    first = device_costs.costs_here(model, 40, verify_tokens=5, repeats=1)
    again = device_costs.costs_here(model, 60, verify_tokens=5, repeats=1)  # same bucket (64)
    assert len(timings) == 1 and timings[0]["context_tokens"] == 64 and timings[0]["max_verify_tokens"] == 5
    assert again == first and len(first.verify) == 5
    device_costs.costs_here(model, 100, verify_tokens=5, repeats=1)  # bucket 128
    device_costs.costs_here(model, 40, verify_tokens=7, repeats=1)  # longer passes
    assert [t["context_tokens"] for t in timings] == [64, 128, 64]


def test_an_unreadable_entry_is_timed_again(timings, tmp_path, caplog):
    model = make_tiny_llama()
    device_costs.costs_here(model, 10, verify_tokens=3, repeats=1)
    (entry,) = (tmp_path / "cache" / "costs").glob("*.json")
    entry.write_text("{not json")
    costs = device_costs.costs_here(model, 10, verify_tokens=3, repeats=1)
    assert len(timings) == 2 and "ignoring unreadable device costs" in caplog.text
    assert json.loads(entry.read_text())["verify"] == costs.verify


def _policy_profile(folder, model):
    # costs under which drafting looks free: deciding by them, the policy would draft every round
    free = RelativeCosts(verify=(1.0,) + (0.01,) * 18, draft_step=0.01)
    profile = Profile(
        model=ProfileModel(name=str(folder), architecture="llama", num_hidden_layers=4,
                           fingerprint=model_fingerprint(model)),
        task="custom", skip=SkipSet(attention=(1,)),
        draft=DraftSettings(max_draft_tokens=4, confidence_threshold=0.0, ngram=NgramSettings(1, 3, 6),
                            policy=PolicySettings(), costs=free))
    path = folder / "policy.profile.yaml"
    save_profile(profile, path)
    return path


@pytest.mark.parametrize("source", ["here", "profile"])
def test_generate_decides_with_this_devices_costs_unless_told_otherwise(timings, tmp_path, capsys, source):
    model = make_tiny_llama()
    model.generation_config.eos_token_id = None
    model.save_pretrained(tmp_path / "tiny")
    make_tokenizer().save_pretrained(tmp_path / "tiny")
    profile = _policy_profile(tmp_path / "tiny", model)
    assert main(["generate", "--model", str(tmp_path / "tiny"), "--profile", str(profile), "--prompt",
                 "hello world hello world", "--no-chat-template", "--max-new-tokens", "24", "--device", "cpu",
                 "--no-fallback", "--json", "--policy-costs", source]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    if source == "profile":  # free drafting: a draft every round but the last, which has no room
        assert not timings and stats["plain_steps"] <= 1 and stats["rounds"] > 0
    else:  # the draft longest round (4 skip + 6 n-gram tokens) plus the pending token
        assert len(timings) == 1 and timings[0]["max_verify_tokens"] == 11
        assert len(list((tmp_path / "cache" / "costs").glob("*.json"))) == 1
