import pytest

from skipsearch.cli import main
from skipsearch.experiments.compare import compare_methods
from skipsearch.search import runner

from conftest import study_config, tiny_loaded


@pytest.mark.slow
def test_every_method_runs_on_the_same_budget(tmp_path, isolated_cache):
    setup = runner.prepare(study_config(tmp_path), progress=False, loaded=tiny_loaded())
    comparison = compare_methods(setup, budget=6, seed=0)
    rows = comparison.rows
    # timings: both sides of the ratio measured, and the ratio is theirs
    assert comparison.proxy_seconds > 0 and comparison.full_forward_seconds > 0
    assert comparison.proxy_cost_ratio == comparison.proxy_seconds / comparison.full_forward_seconds
    assert [row.method for row in rows] == ["skipsearch", "swift", "selfsd", "greedy", "evenly-spaced", "early-exit",
                                            "clasp", "clasp-sublayers", "knapspec"]
    for row in rows:
        assert 1 <= row.evaluations <= 6, row
        # only the dynamic programs (and the default search's warm starts from them) run blocks alone
        assert (row.block_forwards_as_evaluations > 0) == (row.method in ("skipsearch", "clasp", "clasp-sublayers",
                                                                        "knapspec")), row
        assert 0 <= row.heldout_matchness <= 1 and 0 <= row.heldout_acceptance <= 1
        # every held-out prompt decoded losslessly with each method's set (the tiny model's tie flips allowed)
        assert (row.identical + row.tie_flips, row.errors) == (len(setup.heldout_refs), 0), row
    # every method scored from a clean memo: the ranking alone costs the default search 4
    assert rows[0].evaluations >= 4


def test_compare_rejects_a_bad_study_in_one_line(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text("search: {trials: 0}\n")
    assert main(["compare", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("skipsearch: error: ") and "trials" in err
