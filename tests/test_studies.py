"""Study configs: shipped files validate, every problem is reported at once, overrides, budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from skipsearch.cli import main
from skipsearch.config.studies import (
    StudyConfig,
    apply_overrides,
    default_storage_url,
    load_study,
    output_paths,
    parse_skip_budget,
    parse_study,
    resolve_skip_budget,
    study_to_dict,
)
from skipsearch.errors import SkipsearchError

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))


def write(tmp_path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_validate_and_round_trip(path):
    cfg = load_study(path)
    assert parse_study(study_to_dict(cfg), str(path)) == cfg
    assert parse_study(yaml.safe_load(yaml.safe_dump(study_to_dict(cfg))), str(path)) == cfg
    assert path.read_text().startswith("# ")
    assert f"skipsearch search studies/{path.name}" in path.read_text()


def test_studies_ship_the_expected_files():
    assert {p.name for p in STUDIES} >= {
        "humaneval.yaml", "specbench-summarization.yaml", "specbench-math_reasoning.yaml", "demo.yaml"
    }
    demo = load_study(STUDIES[[p.name for p in STUDIES].index("demo.yaml")])
    assert (demo.task.search_prompts, demo.task.heldout_prompts, demo.task.reference_tokens) == (4, 2, 32)
    assert (demo.search.trials, demo.search.objective, demo.task.source) == (40, "speedup", "humaneval")


def test_defaults_just_work_and_name_comes_from_the_file(tmp_path):
    cfg = load_study(write(tmp_path, "{}\n", "my-study.yaml"))
    assert cfg.name == "my-study"
    assert cfg.model.name == "smollm2-135m" and cfg.task.source == "humaneval"
    assert cfg.search.skip_budget == 0.2 and cfg.search.warm_start == ()
    assert default_storage_url(cfg, tmp_path / "my-study.yaml") == f"sqlite:///{tmp_path.resolve()}/my-study.db"
    assert output_paths(cfg) == (Path("reports/my-study.profile.yaml"), Path("reports/my-study.html"))


BROKEN = """\
name: "bad name!"
model:
  dtype: fp32
task:
  source: specbench
  search_prompts: 0
search:
  trails: 10
  sampler: tp
  skip_budget: 1.5
  seed: true
draft:
  confidence_threshold: 1.2
storage: not-a-url
colour: blue
"""


def test_a_broken_config_reports_every_problem_at_once(tmp_path):
    path = write(tmp_path, BROKEN)
    with pytest.raises(SkipsearchError) as info:
        load_study(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"10 problems in {path}:"
    body = "\n".join(lines[1:])
    assert all(line.startswith(f"{path}: ") for line in lines[1:])
    for expected in (
        "name: expected a study name matching",
        "model.dtype: expected one of auto | float32 | bfloat16 | float16, got 'fp32'",
        "task.search_prompts: expected an integer >= 1, got 0",
        "search.trails: unknown key; did you mean 'trials'?",
        "search.sampler: expected one of tpe | gp | nsga2 | random, got 'tp' (did you mean 'tpe'?)",
        "search.skip_budget: expected a fraction in (0, 1) of the eligible sublayers or an integer count >= 1, got 1.5",
        "search.seed: expected an integer in [0, 4294967295], got True",
        "draft.confidence_threshold: expected a number in [0, 1], got 1.2",
        "storage: expected a storage: sqlite:///FILE.db",
        "colour: unknown key",
    ):
        assert expected in body


def test_model_loading_options_default_and_validate(tmp_path):
    cfg = parse_study({"name": "x"}, "x.yaml")
    assert (cfg.model.dtype, cfg.model.device_map, cfg.model.attn_implementation) == ("auto", None, None)
    for device_map in ("auto", "sequential", "cuda:1", {"model.embed_tokens": 0, "model.layers": "cpu", "": "disk"}):
        model = {"dtype": "bfloat16", "device_map": device_map, "attn_implementation": "sdpa"}
        cfg = parse_study({"name": "x", "model": model}, "x.yaml")
        assert cfg.model.device_map == device_map and parse_study(study_to_dict(cfg), "x.yaml") == cfg
    broken = {"name": "x", "model": {"dtype": "bf16", "device_map": {"model.layers": "gpu"},
                                     "attn_implementation": "flash"}}
    with pytest.raises(SkipsearchError) as info:
        parse_study(broken, "s.yaml")
    message = str(info.value)
    assert message.startswith("3 problems in s.yaml:")
    assert "model.dtype: expected one of auto | float32 | bfloat16 | float16, got 'bf16'" in message
    assert "model.device_map: expected null, one of auto | balanced | balanced_low_0 | sequential" in message
    assert "got {'model.layers': 'gpu'}" in message
    assert "model.attn_implementation: expected null or one of eager | sdpa | flash_attention_2, got 'flash'" in message
    for device_map in ("gpu", {}, {"lm_head": -1}, {"lm_head": True}, {3: "cpu"}, ["auto"]):
        with pytest.raises(SkipsearchError, match="model.device_map: expected"):
            parse_study({"name": "x", "model": {"device_map": device_map}}, "s.yaml")


def test_a_device_map_needs_device_auto():
    with pytest.raises(SkipsearchError) as info:
        parse_study({"name": "x", "model": {"device": "cpu", "device_map": "auto"}}, "s.yaml")
    assert str(info.value) == ("s.yaml: model.device_map: device 'cpu' and device_map 'auto' both say where the model "
                               "goes; give one of them (keep device auto with a device map)")


def test_cross_field_task_options(tmp_path):
    with pytest.raises(SkipsearchError) as info:
        parse_study({"name": "x", "task": {"source": "specbench", "field": "text"}}, "s.yaml")
    message = str(info.value)
    assert "2 problems in s.yaml:" in message
    assert "task.data: source specbench needs a Spec-Bench .jsonl file" in message
    assert "task.field: source specbench does not take field" in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- a\n- b\n", r"top level: expected a mapping with keys name, model, .*got \['a', 'b'\]"),
        ("", r"top level: expected a mapping"),
        ("name: [unclosed\n", r"line 2, column 1: not valid YAML"),
        ("model: {name: x\n  dtype: : :\n", r"not valid YAML"),
        ("search:\n  trials: 2024-13-45\n", r"not valid YAML: ValueError"),
        ("model: 3\n",
         r"model: expected a mapping with keys name, dtype, device, device_map, attn_implementation, got 3"),
        ("search:\n  trials: 10.0\n", r"search.trials: expected an integer >= 1, got 10.0"),
    ],
)
def test_problems_with_the_file_itself(tmp_path, text, match):
    with pytest.raises(SkipsearchError, match=match):
        load_study(write(tmp_path, text))


def test_missing_study_file(tmp_path):
    with pytest.raises(SkipsearchError, match="study file .*nope.yaml does not exist"):
        load_study(tmp_path / "nope.yaml")


def test_overrides_are_validated_again():
    cfg = parse_study({"name": "x"}, "x.yaml")
    changed = apply_overrides(
        cfg, trials=7, sampler="random", skip_budget=5, seed=3, storage="sqlite:///tmp/x.db", output_profile="p.yaml"
    )
    assert (changed.search.trials, changed.search.sampler, changed.search.skip_budget) == (7, "random", 5)
    assert changed.storage == "sqlite:///tmp/x.db" and changed.output.profile == "p.yaml"
    assert changed.model == cfg.model
    loaded_as = apply_overrides(cfg, dtype="bfloat16", device_map={"": 0}, attn_implementation="eager")
    assert (loaded_as.model.dtype, loaded_as.model.device_map, loaded_as.model.attn_implementation) == (
        "bfloat16", {"": 0}, "eager")
    with pytest.raises(SkipsearchError, match="model.device_map: device 'cpu' and device_map 'auto'"):
        apply_overrides(cfg, device="cpu", device_map="auto")
    assert apply_overrides(cfg) == cfg
    assert apply_overrides(cfg, data="q.jsonl").task.data == "q.jsonl"
    with pytest.raises(SkipsearchError) as info:
        apply_overrides(cfg, trials=0, objective="fast")
    assert "search.trials" in str(info.value) and "search.objective" in str(info.value)
    with pytest.raises(SkipsearchError, match="task.category: source humaneval does not take category"):
        apply_overrides(cfg, category="qa")


def test_skip_budget_from_the_command_line():
    assert parse_skip_budget("0.3") == 0.3 and parse_skip_budget("11") == 11
    for bad in ("0", "1.0", "-2", "lots"):
        with pytest.raises(SkipsearchError, match="--skip-budget"):
            parse_skip_budget(bad)


def test_resolve_skip_budget():
    assert resolve_skip_budget(0.2, 56) == 11  # int(0.2 * 56), as SWIFT rounds
    assert resolve_skip_budget(0.01, 56) == 1  # never zero
    assert resolve_skip_budget(56, 56) == 56
    with pytest.raises(SkipsearchError, match="57 sublayers is more than the 56 eligible ones"):
        resolve_skip_budget(57, 56)
    with pytest.raises(SkipsearchError, match="search.skip_budget: expected"):
        resolve_skip_budget(True, 56)
    with pytest.raises(SkipsearchError, match="0 eligible sublayers"):
        resolve_skip_budget(0.5, 0)


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", *map(str, STUDIES)]) == 0
    out = capsys.readouterr().out
    assert all(f"OK: {p}" in out for p in STUDIES)
    bad = write(tmp_path, BROKEN, "bad.yaml")
    assert main(["validate", str(STUDIES[0]), str(bad), str(tmp_path / "missing.yaml")]) == 2
    captured = capsys.readouterr()
    assert f"OK: {STUDIES[0]}" in captured.out
    assert "10 problems in" in captured.err and "search.trails" in captured.err
    assert "missing.yaml does not exist" in captured.err
    assert "2 of 3 study files have problems" in captured.err


def test_cli_validate_tasks_checks_prompts(tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text('{"question_id": 1, "category": "qa", "turns": ["a?"]}\n')
    study = write(tmp_path, f"task:\n  source: specbench\n  data: {data}\n")
    assert main(["validate", str(study)]) == 0
    assert main(["validate", "--tasks", str(study)]) == 2
    assert "has 1 prompts, fewer than the 8 search + 4 held-out" in capsys.readouterr().err


def test_cli_tasks_lists_and_summarises(tmp_path, capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "humaneval" in out and "specbench" in out and "--data FILE" in out and "--field" in out
    assert main(["tasks", "humaneval"]) == 0
    assert "humaneval: 164 prompts" in capsys.readouterr().out
    assert main(["tasks", "humanevl"]) == 2
    assert "did you mean 'humaneval'" in capsys.readouterr().err


def test_study_config_fields_are_the_yaml_keys():
    keys = study_to_dict(parse_study({"name": "x"}, "x.yaml"))
    assert list(keys) == [f.name for f in __import__("dataclasses").fields(StudyConfig)]
    assert list(keys["search"]) == [
        "objective", "sampler", "trials", "skip_budget", "seed", "keep_first", "keep_last", "warm_start",
        "draft_cache", "rescore_top",
        "heartbeat_interval",
    ]
