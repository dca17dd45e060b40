"""What the runtime learned outlives a `skipsearch generate` process: a drafter that loses is
shown to lose once, and the next fresh process starts from that evidence."""

import json

from skipsearch import DraftSettings, Profile, ProfileModel, SkipSet, model_fingerprint, save_profile
from skipsearch.cli import main
from skipsearch.engine.drafting import AcceptanceCounts, PolicyMemory, Priors
from skipsearch.engine.verdicts import load_memory, save_memory

from conftest import make_tiny_llama, make_tokenizer


def _generate(folder, capsys, *flags):
    assert main(["generate", "--model", str(folder), "--prompt", "hello world hello", "--no-chat-template",
                 "--max-new-tokens", "40", "--device", "cpu", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)["stats"]


def test_a_fresh_process_starts_from_what_the_last_one_learned(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    model = make_tiny_llama()
    model.generation_config.eos_token_id = None  # decode all 40 tokens
    model.save_pretrained(tmp_path / "tiny")
    make_tokenizer().save_pretrained(tmp_path / "tiny")
    # a profile whose priors claim that skipping everything drafts well: the first call follows
    # them and sees the drafts rejected
    claimed = Priors(layer_skip=AcceptanceCounts((90.0,) * 8, (10.0,) * 8))
    save_profile(Profile(model=ProfileModel(str(tmp_path / "tiny"), "llama", 4, model_fingerprint(model)),
                         task="toy", skip=SkipSet(attention=(0, 1, 2, 3), mlp=(0, 1, 2, 3)),
                         draft=DraftSettings(8, 0.0, priors=claimed)), tmp_path / "all.profile.yaml")
    everything = ["--profile", str(tmp_path / "all.profile.yaml"), "--no-fallback"]
    _generate(tmp_path / "tiny", capsys, *everything)
    memories = list((tmp_path / "cache" / "policy").glob("*.json"))
    assert len(memories) == 1
    kept = json.loads(memories[0].read_text())
    assert sum(kept["layer_skip"]["rejected"]) > 0  # what the first call saw of the skip set's drafts

    def layer_skip_rounds_after(accepted: float, rejected: float) -> int:
        """A fresh process's layer-skip rounds when the kept evidence says the drafts are
        accepted (or rejected) overwhelmingly at every position: only a process that reads the
        file decides by it, whatever its own draws."""
        kept["layer_skip"] = {"accepted": [accepted] * 8, "rejected": [rejected] * 8}
        memories[0].write_text(json.dumps(kept))
        stats = _generate(tmp_path / "tiny", capsys, *everything)
        return stats["rounds"] - stats["ngram_rounds"] - stats["ngram_layer_skip_rounds"]

    assert layer_skip_rounds_after(accepted=0.0, rejected=10_000.0) == 0
    assert layer_skip_rounds_after(accepted=10_000.0, rejected=0.0) > 0
    # another profile keeps a memory of its own; --plain keeps none
    _generate(tmp_path / "tiny", capsys, "--skip-attention", "0,1,2,3", "--confidence-threshold", "0")
    _generate(tmp_path / "tiny", capsys, "--plain")
    assert len(list((tmp_path / "cache" / "policy").glob("*.json"))) == 2


def test_an_unreadable_memory_is_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path))
    memory = PolicyMemory()
    memory.ngram = {2: AcceptanceCounts((3.0,), (1.0,))}
    memory.explore_allowance = 0.4
    save_memory("k", memory)
    assert load_memory("k").to_dict() == memory.to_dict()
    # a memory written before it carried the exploring allowance opens calls with a whole step's worth
    (tmp_path / "policy" / "k.json").write_text('{"layer_skip": null, "ngram": {}}')
    assert load_memory("k").explore_allowance is None
    (tmp_path / "policy" / "k.json").write_text("{not json")
    assert load_memory("k").to_dict() == PolicyMemory().to_dict()
