"""The bad input catalogue: each case is one line on stderr naming the problem and the fix,
exit code 2, no traceback, and nothing written or changed (no .db, profile or report)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config

from skipsearch import DraftSettings, Profile, ProfileModel, SkipSet, model_fingerprint, save_profile
from skipsearch.cli import main
from skipsearch.errors import SkipsearchError
from skipsearch.search.storages import check_storage, redact

from conftest import make_tiny_llama

SECRET = "hunter2"


@pytest.fixture
def work(tmp_path, model_dir, monkeypatch):
    """A valid study in a fresh current directory; the cache lives outside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    rng = random.Random(0)
    with open(tmp_path / "task.jsonl", "w") as out:
        for i in range(8):
            text = " ".join(rng.choice(["hello", "world"]) for _ in range(3 + i))
            out.write(json.dumps({"question_id": i, "category": "toy", "turns": [text]}) + "\n")
    study = {
        "model": {"name": str(model_dir)},
        "task": {"source": "specbench", "data": "task.jsonl", "search_prompts": 3, "heldout_prompts": 2,
                 "reference_tokens": 8, "chat_template": False},
        "search": {"trials": 2, "skip_budget": 2, "heartbeat_interval": 1},
        "draft": {"max_draft_tokens": 3},
    }
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(study))
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "gpt2").mkdir()
    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "config.json").write_text('{"model_type": "no-such-family"}')
    other = make_tiny_llama(seed=1)
    save_profile(Profile(model=ProfileModel(str(model_dir), "llama", 4, model_fingerprint(other)), task="toy",
                         skip=SkipSet(attention=(1,)), draft=DraftSettings(3, 0.8)), tmp_path / "other.profile.yaml")
    return tmp_path


def _edit(work: Path, **sections) -> None:
    study = yaml.safe_load((work / "toy.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            study.setdefault(section, {}).update(values)
        else:
            study[section] = values
    (work / "toy.yaml").write_text(yaml.safe_dump(study))


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside main
        return exc.code


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


CASES = {
    # name: (edits to toy.yaml, extra arguments, what the line must say)
    "unknown model name": ({"model": {"name": "no-such-model"}}, [],
                           "unknown model 'no-such-model': use an embedded name"),
    "missing model path": ({"model": {"name": "./models/none"}}, [], "model path ./models/none does not exist"),
    "unsupported architecture": ({"model": {"name": "gpt2"}}, [],
                                 "unsupported architecture 'gpt2'; skipsearch supports llama"),
    "unknown architecture": ({"model": {"name": "alien"}}, [], "skipsearch supports llama, mistral, qwen2, qwen3"),
    "unknown key": ({"search": {"trails": 3}}, [], "toy.yaml: search.trails: unknown key; did you mean 'trials'?"),
    "wrong type": ({"search": {"trials": "many"}}, [], "search.trials: expected an integer >= 1, got 'many'"),
    "zero trials": ({"search": {"trials": 0}}, [], "search.trials: expected an integer >= 1, got 0"),
    "zero trials flag": ({}, ["--trials", "0"], "search.trials: expected an integer >= 1, got 0"),
    "trials not a number": ({}, ["--trials", "x"], "argument --trials: invalid int value: 'x'"),
    "budget above one": ({"search": {"skip_budget": 1.5}}, [], "search.skip_budget: expected a fraction in (0, 1)"),
    "budget zero": ({"search": {"skip_budget": 0}}, [], "search.skip_budget: expected a fraction in (0, 1)"),
    "budget flag": ({}, ["--skip-budget", "1.0"], "--skip-budget: expected a fraction in (0, 1)"),
    "budget above eligible": ({"search": {"skip_budget": 5}}, [],
                              "search.skip_budget: 5 sublayers is more than the 4 eligible ones; use at most 4"),
    "heartbeat zero": ({"search": {"heartbeat_interval": 0}}, [],
                       "search.heartbeat_interval: expected an integer >= 1"),
    "empty task": ({"task": {"data": "empty.jsonl"}}, [], "task specbench has no prompts"),
    "unknown category": ({}, ["--category", "chat"], "category 'chat' is not in task.jsonl"),
    "empty category": ({}, ["--category", ""], "task.category: expected a non-empty string or null, got ''"),
    "storage scheme typo": ({}, ["--storage", "sqlit:///toy.db"], "unknown scheme 'sqlit'; did you mean sqlite://?"),
    "postgres spelled short": ({}, ["--storage", f"postgres://me:{SECRET}@127.0.0.1:1/db"],
                               "unknown scheme 'postgres'; did you mean postgresql://?"),
    "unreachable server": ({}, ["--storage", f"postgresql://me:{SECRET}@127.0.0.1:1/db"],
                           "cannot reach the study storage postgresql://me:***@127.0.0.1:1/db"),
    "not a URL": ({}, ["--storage", "toy.db"], "storage: expected a storage: sqlite:///FILE.db, postgresql://"),
    "storage folder missing": ({}, ["--storage", "sqlite:///runs/toy.db"], "folder runs does not exist"),
    "journal folder missing": ({}, ["--storage", "runs/toy.log"], "folder runs does not exist"),
    "storage in the config": ({"storage": "sqlite:/toy.db"}, [], "storage: expected a storage: sqlite:///FILE.db"),
    "profile for another model": ({}, ["--warm-start", "other.profile.yaml"],
                                  "warm start other.profile.yaml: profile for"),
    "output folder missing": ({}, ["--output", "out/p.yaml"], "output folder out does not exist"),
    "report folder missing": ({"output": {"report": "out/r.html"}}, [], "output folder out does not exist"),
    "workers zero": ({}, ["--workers", "0"], "--workers: expected an integer >= 1, got 0"),
    "unknown dtype": ({"model": {"dtype": "fp16"}}, [],
                      "model.dtype: expected one of auto | float32 | bfloat16 | float16"),
    "dtype flag": ({}, ["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
    "device and device map": ({}, ["--device", "cpu", "--device-map", "auto"],
                              "model.device_map: device 'cpu' and device_map 'auto' both say where the model goes"),
    "device map not JSON": ({}, ["--device-map", "{lm_head: 0}"], "--device-map: not valid JSON"),
    "device map module typo": ({"model": {"device_map": {"model.layer": "cpu", "": "cpu"}}}, [],
                               "device_map: 'model.layer' is not a module of"),
    "device map missing modules": ({}, ["--device-map", '{"model.layers": "cpu"}'],
                                   "device_map gives no device to model.embed_tokens.weight and 2 more"),
    "attention typo": ({"model": {"attn_implementation": "spda"}}, [],
                       "model.attn_implementation: expected null or one of eager | sdpa | flash_attention_2, got "
                       "'spda' (did you mean 'sdpa'?)"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(work, capsys, case):
    edits, arguments, expected = CASES[case]
    _edit(work, **edits)
    before = _snapshot(work)
    assert _run(["search", "toy.yaml", "--no-progress", *arguments]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skipsearch: error: "), captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err and SECRET not in captured.err
    assert captured.out == ""
    assert _snapshot(work) == before


def test_report_of_a_missing_study_writes_nothing(work, capsys):
    before = _snapshot(work)
    for storage in ("sqlite:///toy.db", "toy.log"):
        assert _run(["report", "toy.yaml", "--storage", storage]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"no study toy in {storage}; run skipsearch search STUDY.yaml first" in lines[0]
    assert _snapshot(work) == before


def test_redact_hides_passwords():
    assert redact(f"postgresql://me:{SECRET}@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("postgresql://me@db/x") == "postgresql://me@db/x"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40).filter(lambda text: "://" not in text))
def test_any_text_that_is_no_url_is_a_file_storage_or_one_line(text):
    """Texts without a scheme never reach a server: they are SQLite or journal files, or refused in one line."""
    try:
        check_storage(text)
    except SkipsearchError as exc:
        assert "\n" not in str(exc)
    else:
        assert text.endswith(".log")


def test_first_line_quotes_a_library_error_in_one_line():
    from skipsearch.errors import first_line

    assert first_line(OSError("\n  disk full  \nTraceback ...")) == "disk full"
    assert first_line(ValueError("")) == "ValueError" and first_line(KeyError()) == "KeyError"
