"""The fallback's verdict outlives a `skipsearch generate` process: a losing policy pays for
proving itself slower once, and the next fresh processes decode plainly from their first token."""

import json

from skipsearch.cli import main

from conftest import make_tiny_llama, make_tokenizer


def _generate(folder, capsys, *flags):
    assert main(["generate", "--model", str(folder), "--prompt", "hello world hello", "--no-chat-template",
                 "--max-new-tokens", "40", "--device", "cpu", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)["stats"]


def test_a_fresh_process_remembers_that_drafting_lost(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    model = make_tiny_llama()
    model.generation_config.eos_token_id = None  # decode all 40 tokens
    model.save_pretrained(tmp_path / "tiny")
    make_tokenizer().save_pretrained(tmp_path / "tiny")
    everything = ["--skip-attention", "0,1,2,3", "--skip-mlp", "0,1,2,3", "--confidence-threshold", "0"]
    first = _generate(tmp_path / "tiny", capsys, *everything)
    assert first["fell_back"] and first["fallback_at_token"] > 0 and first["draft_steps"] > 0
    second = _generate(tmp_path / "tiny", capsys, *everything)
    assert second["fell_back"] and second["fallback_at_token"] == 0 and second["draft_steps"] == 0
    # another policy has a verdict of its own
    other = _generate(tmp_path / "tiny", capsys, "--skip-attention", "0,1,2,3", "--confidence-threshold", "0")
    assert other["draft_steps"] > 0
    assert len(list((tmp_path / "cache" / "fallback").glob("*.json"))) == 2
