"""A search in bfloat16 through the command line, on the tiny model: it completes, exports a
profile measured in bfloat16, and reports how its held-out outputs compare with plain decoding
(identical, tie flips, errors), instead of aborting at the first difference as it once did.
test_precision.py checks the tie-flip accounting itself."""

import pytest
import yaml

from skipsearch.cli import main
from skipsearch.config.profiles import load_profile

from conftest import toy_task_file


@pytest.mark.slow
def test_a_bfloat16_search_completes_and_reports_the_lossless_check(tmp_path, capsys, model_dir, isolated_cache):
    study = tmp_path / "bf16.yaml"
    study.write_text(yaml.safe_dump({
        "name": "bf16-demo",
        "model": {"name": str(model_dir), "device": "cpu"},
        "task": {"source": "specbench", "data": str(toy_task_file(tmp_path)), "search_prompts": 3,
                 "heldout_prompts": 1, "reference_tokens": 10, "chat_template": False},
        "search": {"objective": "speedup", "trials": 4, "skip_budget": 2, "rescore_top": 2},
        "draft": {"max_draft_tokens": 3},
        "output": {"profile": str(tmp_path / "bf16.profile.yaml"), "report": str(tmp_path / "bf16.html")},
    }))
    assert main(["search", str(study), "--dtype", "bfloat16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("lossless check"))
    assert line.startswith("lossless check (bfloat16, 2 candidates x 1 held-out prompts against plain decoding): ")
    counts = dict((kind, int(number)) for number, kind in
                  (part.split(" ", 1) for part in line.split(": ", 1)[1].split(", ")))
    assert counts["errors"] == 0 and counts["identical"] + counts["tie flips"] == 2
    assert any(line.startswith("drafting policy: ") and "held-out rounds" in line for line in out.splitlines())
    profile = load_profile(tmp_path / "bf16.profile.yaml")
    assert profile.metrics.dtype == "bfloat16"
    assert (tmp_path / "bf16.html").is_file()
