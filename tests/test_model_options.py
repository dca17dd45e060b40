"""--dtype, --device, --device-map and --attn-implementation: the same options, help and rules in
every command that loads a model, and what each command does with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from skipsearch.cli import build_parser, main
from skipsearch.cli.model_options import OPTIONS, model_options
from skipsearch.errors import SkipsearchError

DEMO = str(Path(__file__).resolve().parent.parent / "studies" / "demo.yaml")
STANDALONE = {"generate": ["generate", "--prompt", "hi"], "bench": ["bench"],
              "profile validate": ["profile", "validate", "p.yaml", "--model", "m"]}
FROM_STUDY = {"search": ["search", DEMO], "compare": ["compare", DEMO], "report": ["report", DEMO]}
FLAGS = ["--dtype", "bfloat16", "--device-map", '{"model.layers": 0, "": "cpu"}', "--attn-implementation", "eager"]


def _actions(argv: list[str]) -> dict:
    """The options' argparse actions in the sub-command that `argv` names."""
    parser = build_parser()
    for word in argv:
        choices = next((a.choices for a in parser._actions if a.choices and isinstance(a.choices, dict)), None)
        if not choices or word not in choices:
            break
        parser = choices[word]
    return {action.dest: action for action in parser._actions if action.dest in OPTIONS}


@pytest.mark.parametrize("command", [*STANDALONE, *FROM_STUDY])
def test_every_command_that_loads_a_model_takes_the_options(command):
    argv = {**STANDALONE, **FROM_STUDY}[command]
    args = build_parser().parse_args(argv + FLAGS)
    assert model_options(args) == {"dtype": "bfloat16", "device": "auto" if command in STANDALONE else None,
                                   "device_map": {"model.layers": 0, "": "cpu"}, "attn_implementation": "eager"}
    defaults = model_options(build_parser().parse_args(argv))
    if command in STANDALONE:
        assert defaults == {"dtype": "auto", "device": "auto", "device_map": None, "attn_implementation": None}
    else:  # left out: the study's model section decides
        assert defaults == dict.fromkeys(OPTIONS)


def test_the_help_is_the_same_everywhere():
    standalone = [_actions(argv) for argv in STANDALONE.values()]
    from_study = [_actions(argv) for argv in FROM_STUDY.values()]
    for group in (standalone, from_study):
        assert all(set(actions) == set(OPTIONS) for actions in group)
        for option in OPTIONS:
            assert len({actions[option].help for actions in group}) == 1
            assert len({str(actions[option].choices) for actions in group}) == 1
    assert "auto = bfloat16 on a CUDA GPU that supports it, else float16 on CUDA, float32 on CPU (default auto)" in \
        standalone[0]["dtype"].help
    assert "(default: the study's model.dtype)" in from_study[0]["dtype"].help


@pytest.mark.parametrize("text, message", [
    ("{model.layers: 0}", "--device-map: not valid JSON (Expecting property name enclosed in double quotes at "
                          "character 1); write it like"),
    ("gpu", "--device-map: expected null, one of auto | balanced | balanced_low_0 | sequential, one device"),
    ('{"lm_head": "gpu"}', "--device-map: expected"),
    ("{}", "--device-map: expected"),
])
def test_a_bad_device_map_is_one_line(capsys, text, message):
    assert main(["generate", "--prompt", "hi", "--device-map", text]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(f"skipsearch: error: {message}")


@pytest.mark.parametrize("flag, value", [("--dtype", "fp16"), ("--attn-implementation", "flash")])
def test_bad_choices_are_one_line(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(["bench", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"invalid choice: '{value}'" in err


@pytest.mark.parametrize("argv", [["generate", "--prompt", "hi"], ["bench"],
                                  ["profile", "validate", "p.yaml", "--model", "m"]])
def test_the_options_reach_load_model(argv, monkeypatch, tmp_path, capsys):
    from skipsearch import DraftSettings, Profile, ProfileModel, SkipSet, save_profile
    from skipsearch.cli import bench_cmd, generate_cmd, profile_cmd

    monkeypatch.chdir(tmp_path)
    save_profile(Profile(model=ProfileModel("m", "llama", 4, "sha256:" + "0" * 64), task="t",
                         skip=SkipSet(attention=(1,)), draft=DraftSettings(8, 0.8)), tmp_path / "p.yaml")
    seen = []

    def load(name, **options):
        seen.append(options)
        raise SkipsearchError("stop here")

    for module in (generate_cmd, bench_cmd, profile_cmd):
        monkeypatch.setattr(module, "load_model", load)
    assert main(argv + FLAGS + ["--device", "auto"]) == 2
    assert seen == [{"dtype": "bfloat16", "device": "auto", "device_map": {"model.layers": 0, "": "cpu"},
                     "attn_implementation": "eager"}]


def test_a_flag_overrides_the_study(monkeypatch):
    from skipsearch.cli.search_cmd import configured

    args = build_parser().parse_args(["search", DEMO, "--dtype", "bfloat16"])
    config, _ = configured(args)
    assert (config.model.dtype, config.model.device, config.model.device_map) == ("bfloat16", "auto", None)
    assert configured(build_parser().parse_args(["search", DEMO]))[0].model.dtype == "auto"  # demo.yaml's default
    args = build_parser().parse_args(["compare", DEMO, "--device", "cpu", "--device-map", "auto"])
    with pytest.raises(SkipsearchError, match="model.device_map: device 'cpu' and device_map 'auto' both say"):
        configured(args)
