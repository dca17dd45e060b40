"""`skipsearch profile import` / `export-skip`: SWIFT's and Self-SD's skip_layers.json to a profile and back
(`skipsearch.config.research_skips`), on the tiny random Llama of `model_dir` (4 layers)."""

from __future__ import annotations

import json

import pytest

from skipsearch.cli import main
from skipsearch.config.profiles import load_profile
from skipsearch.engine.models import model_fingerprint
from skipsearch.engine.skipping import SkipSet

from conftest import make_tiny_llama

# laid out as both repositories lay out their skip_layers.json
SWIFT_FILE = '{\n  "tiny_cnndm": {\n    "attention": [1, 2],\n    "mlp": [2]\n  },\n' \
             '  "other_gsm8k": {\n    "attention": [3],\n    "mlp": []\n  }\n}\n'


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("fmt", ["swift", "selfsd"])
def test_a_profile_goes_to_a_research_file_and_back(tmp_path, model_dir, fmt, capsys):
    source = tmp_path / "skip_layers.json"
    source.write_text(SWIFT_FILE)
    first = tmp_path / "first.yaml"
    assert _run(["profile", "import", str(source), "--entry", "tiny_cnndm", "--model", str(model_dir),
                 "-o", str(first)]) == 0
    profile = load_profile(first)
    assert profile.skip == SkipSet(attention=(1, 2), mlp=(2,))
    assert profile.task == "cnndm"  # SWIFT names entries MODEL_TASK
    assert profile.model.fingerprint == model_fingerprint(make_tiny_llama())
    assert profile.draft.ngram is None

    exported = tmp_path / f"{fmt}.json"
    assert _run(["profile", "export-skip", str(first), "--format", fmt, "-o", str(exported)]) == 0
    entries = json.loads(exported.read_text())
    name = f"{model_dir.name}_cnndm" if fmt == "swift" else model_dir.name
    assert entries == {name: {"attention": [1, 2], "mlp": [2]}}

    again = tmp_path / "again.yaml"
    assert _run(["profile", "import", str(exported), "--model", str(model_dir), "--task", "cnndm",
                 "-o", str(again)]) == 0
    assert load_profile(again).skip == profile.skip
    assert load_profile(again).task == profile.task
    capsys.readouterr()


def test_export_adds_to_an_existing_file_and_keeps_its_entries(tmp_path, model_dir):
    source = tmp_path / "skip_layers.json"
    source.write_text(SWIFT_FILE)
    profile = tmp_path / "p.yaml"
    assert _run(["profile", "import", str(source), "--entry", "other_gsm8k", "--model", str(model_dir),
                 "-o", str(profile)]) == 0
    assert _run(["profile", "export-skip", str(profile), "-o", str(source)]) == 0
    entries = json.loads(source.read_text())
    assert list(entries) == ["tiny_cnndm", "other_gsm8k", f"{model_dir.name}_gsm8k"]
    assert entries[f"{model_dir.name}_gsm8k"] == {"attention": [3], "mlp": []}


def test_a_bare_entry_prints_a_profile(tmp_path, model_dir, capsys):
    source = tmp_path / "mine.json"
    source.write_text('{"attention": [2], "mlp": [1, 2]}')
    assert _run(["profile", "import", str(source), "--model", str(model_dir)]) == 0
    assert "skipsearch_profile: 3" in capsys.readouterr().out


BAD_FILES = {
    "malformed JSON": ('{"a": {"attention": [1,', "not valid JSON"),
    "unknown key": ('{"a": {"attention": [1], "mlp": [], "attn_skip_layer_id_set": [1]}}',
                    "unknown keys ['attn_skip_layer_id_set']"),
    "missing key": ('{"a": {"attention": [1]}}', "missing mlp"),
    "non-integer id": ('{"a": {"attention": [1.5], "mlp": []}}', "attention must be a list of integer layer ids"),
    "string id": ('{"a": {"attention": ["3"], "mlp": []}}', "attention must be a list of integer layer ids"),
    "negative id": ('{"a": {"attention": [-1], "mlp": []}}', "must be >= 0"),
    "id beyond the model": ('{"a": {"attention": [4], "mlp": []}}', "out of range for a model with 4 decoder layers"),
    "nothing skipped": ('{"a": {"attention": [], "mlp": []}}', "skips no sublayer"),
    "not an object": ("[1, 2]", "expected a JSON object of entries"),
    "several entries, none chosen": (SWIFT_FILE, "holds 2 entries; choose one with --entry"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_skip_file_fails_with_one_line_and_writes_nothing(tmp_path, model_dir, case, capsys):
    text, message = BAD_FILES[case]
    source = tmp_path / "bad.json"
    source.write_text(text)
    output = tmp_path / "out.yaml"
    assert _run(["profile", "import", str(source), "--model", str(model_dir), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not output.exists()


def test_export_skip_refuses_a_bad_existing_file_and_leaves_it(tmp_path, model_dir, capsys):
    source = tmp_path / "skip_layers.json"
    source.write_text(SWIFT_FILE)
    profile = tmp_path / "p.yaml"
    assert _run(["profile", "import", str(source), "--entry", "tiny_cnndm", "--model", str(model_dir),
                 "-o", str(profile)]) == 0
    target = tmp_path / "broken.json"
    target.write_text("{not json")
    capsys.readouterr()
    assert _run(["profile", "export-skip", str(profile), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid JSON" in err
    assert target.read_text() == "{not json"
