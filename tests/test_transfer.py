from dataclasses import replace

import optuna
import pytest

from skipsearch.errors import SkipsearchError
from skipsearch.experiments.transfer import (
    TransferTask,
    check_same_model,
    exported_profile,
    measure_transfer,
    profile_path,
)
from skipsearch.reporting import data as reports
from skipsearch.search import runner

from conftest import study_config, tiny_loaded


def _task(tmp_path, name, loaded):
    folder = tmp_path / name
    folder.mkdir()
    config = replace(study_config(folder), name=name)
    setup = runner.prepare(config, progress=False, loaded=loaded)
    study = runner.open_configured_study(config, optuna.storages.InMemoryStorage())
    runner.prepare_study(setup, study, progress=False)
    runner.run_search(setup, study, progress=False)
    measurement = runner.rescore(setup, study, top=1, progress=False)[0]
    return TransferTask(setup, study, runner.build_profile(setup, measurement, study, "memory", "test"))


@pytest.mark.slow
def test_every_profile_is_measured_on_every_task_and_kept_in_the_studies(tmp_path, isolated_cache):
    loaded = tiny_loaded()
    tasks = [_task(tmp_path, "a", loaded), _task(tmp_path, "b", loaded)]
    # a second task label for the same toy prompts
    config = tasks[1].setup.config
    tasks[1].setup.config = replace(config, task=replace(config.task, category="other"))
    rows = measure_transfer(tasks, progress=False)
    assert len(rows) == 4
    assert {(r["profile_study"], r["eval_task"]) for r in rows} == {
        (s, t.setup.task_name) for s in ("a", "b") for t in tasks}
    for row in rows:
        assert 0 <= row["acceptance_rate"] <= 1 and row["decode_speedup"] > 0
    for task in tasks:
        assert len(task.study.user_attrs["transfer"]) == 2
    matrix = reports.gather_report_data([t.study for t in tasks], {}, [], []).transfer
    assert len(matrix.profile_tasks) == 2 and len(matrix.eval_tasks) == 2
    # each measurement lands in its own cell: searched-on task's row, evaluated-on task's column
    for row in rows:
        i, j = matrix.profile_tasks.index(row["profile_task"]), matrix.eval_tasks.index(row["eval_task"])
        assert (matrix.acceptance[i][j], matrix.decode_speedup[i][j]) == (row["acceptance_rate"], row["decode_speedup"])


@pytest.mark.slow
def test_profiles_of_another_model_do_not_transfer(tmp_path, isolated_cache):
    loaded = tiny_loaded()
    tasks = [_task(tmp_path, "a", loaded), _task(tmp_path, "b", loaded)]
    profile = tasks[1].profile
    tasks[1].profile = replace(profile, model=replace(profile.model, fingerprint="sha256:" + "0" * 64))
    with pytest.raises(SkipsearchError, match="one model"):
        check_same_model(tasks)


def test_a_study_finds_its_exported_profile_or_names_the_missing_one(tmp_path):
    config = study_config(tmp_path)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name=config.name)
    assert profile_path(study, config) == tmp_path / "toy.profile.yaml"  # the config's, before any export
    with pytest.raises(SkipsearchError, match="no exported profile"):
        exported_profile(study, config)
    study.set_user_attr("exported_profile", str(tmp_path / "elsewhere.yaml"))
    assert profile_path(study, config) == tmp_path / "elsewhere.yaml"
