"""The shared arguments (skipsearch.cli.options): --model, --dtype, --device, --device-map and
--attn-implementation in every command that loads a model; --profile | --skip-attention/--skip-mlp,
--max-draft-tokens, --confidence-threshold and --policy-costs in generate and bench. The same
options, help and rules everywhere, and what each command does with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from skipsearch.cli import build_parser, main
from skipsearch.cli.options import OPTIONS, draft_limits, model_options, parse_layers, skip_source
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError

from conftest import make_tokenizer

DEMO = str(Path(__file__).resolve().parent.parent / "studies" / "demo.yaml")
STANDALONE = {"generate": ["generate", "--prompt", "hi"], "bench": ["bench"],
              "profile validate": ["profile", "validate", "p.yaml", "--model", "m"]}
FROM_STUDY = {"search": ["search", DEMO], "compare": ["compare", DEMO], "report": ["report", DEMO]}
FLAGS = ["--dtype", "bfloat16", "--device-map", '{"model.layers": 0, "": "cpu"}', "--attn-implementation", "eager"]


def _actions(argv: list[str], dests=OPTIONS) -> dict:
    """The options' argparse actions in the sub-command that `argv` names."""
    parser = build_parser()
    for word in argv:
        choices = next((a.choices for a in parser._actions if a.choices and isinstance(a.choices, dict)), None)
        if not choices or word not in choices:
            break
        parser = choices[word]
    return {action.dest: action for action in parser._actions if action.dest in dests}


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


# ---------------------------------------------------------------------------- the skip and draft arguments

DECODING = {"generate": ["generate", "--prompt", "hi"], "bench": ["bench"]}
SHARED = ("model", "profile", "skip_attention", "skip_mlp", "max_draft_tokens", "confidence_threshold", "policy_costs")


def test_generate_and_bench_share_the_skip_draft_and_model_arguments():
    generate, bench = (_actions(argv, SHARED) for argv in DECODING.values())
    assert set(generate) == set(bench) == set(SHARED)
    for dest in SHARED:
        same = {(a.help, a.default, a.metavar, str(a.choices), a.type) for a in (generate[dest], bench[dest])}
        assert len(same) == 1, dest
    assert generate["model"].default == "smollm2-135m" and generate["policy_costs"].default == "here"
    validate = _actions(STANDALONE["profile validate"], ("model",))["model"]
    assert validate.default is None and "check that the profile fits it" in validate.help


LAYERS_MESSAGE = "takes distinct 0-based layer indices separated by commas, such as 3,5,7; got"
CONFLICT = "both say what the draft skips; give the profile alone, or leave out --profile and list the layers"
BAD_FLAGS = {
    "not a number": (["--skip-attention", "3,x"], f"--skip-attention {LAYERS_MESSAGE} '3,x'"),
    "negative": (["--skip-mlp", "-1"], f"--skip-mlp {LAYERS_MESSAGE} '-1'"),
    "twice": (["--skip-mlp", "2, 2"], f"--skip-mlp {LAYERS_MESSAGE} '2, 2'"),
    "profile and mlp": (["--profile", "p.yaml", "--skip-mlp", "3"], f"--profile and --skip-mlp {CONFLICT}"),
    "profile and attention": (["--skip-attention", "1", "--profile", "p.yaml"],
                              f"--profile and --skip-attention {CONFLICT}"),
    "profile and both": (["--profile", "p.yaml", "--skip-attention", "1", "--skip-mlp", "2"],
                         f"--profile and --skip-attention/--skip-mlp {CONFLICT}"),
    "profile and an empty list": (["--profile", "p.yaml", "--skip-mlp", ""], f"--profile and --skip-mlp {CONFLICT}"),
    "empty profile": (["--profile", ""], "--profile takes the path of a profile .yaml file; got ''"),
    "missing profile": (["--profile", "none.yaml"], "profile none.yaml does not exist"),
    "no draft tokens": (["--max-draft-tokens", "0"], "--max-draft-tokens takes a whole number >= 1; got '0'"),
    "draft tokens not a number": (["--max-draft-tokens", "x"], "--max-draft-tokens takes a whole number >= 1; got 'x'"),
    "threshold above one": (["--confidence-threshold", "1.5"],
                            "--confidence-threshold takes a probability in [0, 1]; got '1.5'"),
    "threshold nan": (["--confidence-threshold", "nan"], "--confidence-threshold takes a probability in [0, 1]; got"),
}


@pytest.mark.parametrize("case", BAD_FLAGS, ids=list(BAD_FLAGS))
def test_bench_and_generate_refuse_bad_skip_and_draft_flags_alike_before_loading(case, monkeypatch, tmp_path, capsys):
    from skipsearch.cli import bench_cmd, generate_cmd

    monkeypatch.chdir(tmp_path)
    loaded = []
    for module in (generate_cmd, bench_cmd):
        monkeypatch.setattr(module, "load_model", lambda *args, **kwargs: loaded.append(args))
    flags, message = BAD_FLAGS[case]
    lines = []
    for argv in DECODING.values():
        assert main(argv + flags) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and err.startswith(f"skipsearch: error: {message}"), err
        lines.append(err)
    assert lines[0] == lines[1] and loaded == []


@pytest.mark.parametrize("flag, text, message", [
    ("--skip-mlp", "1,4,9", "--skip-mlp takes layer indices 0..3 for this model (4 decoder layers); got 4,9"),
    ("--skip-attention", "4", "--skip-attention takes layer indices 0..3 for this model (4 decoder layers); got 4"),
])
def test_bench_and_generate_refuse_layers_the_model_lacks_alike(flag, text, message, tiny_model, monkeypatch,
                                                                capsys):
    from skipsearch.cli import bench_cmd, generate_cmd
    from skipsearch.engine.models import LoadedModel

    for module in (generate_cmd, bench_cmd):
        monkeypatch.setattr(module, "load_model",
                            lambda *args, **kwargs: LoadedModel(tiny_model, make_tokenizer(), "tiny", "test"))
    for argv in DECODING.values():
        assert main(argv + ["--prompts", "1"] * (argv == ["bench"]) + [flag, text]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"skipsearch: error: {message}\n"


def test_parse_layers():
    assert parse_layers("3,5,7", "--skip-mlp") == (3, 5, 7)
    assert parse_layers(" 7, 3 ,,", "--skip-mlp") == (7, 3)
    assert parse_layers("", "--skip-mlp") == ()
    with pytest.raises(SkipsearchError, match=r"^--early-exit-layers takes distinct 0-based layer indices separated "
                                              r"by commas, such as 3,5,7; got '4\.5'$"):
        parse_layers("4.5", "--early-exit-layers")


def test_the_skip_source_and_draft_limits(tmp_path):
    from skipsearch import DraftSettings, Profile, ProfileModel, save_profile

    parse = build_parser().parse_args
    plain = parse(["generate", "--prompt", "hi"])
    assert skip_source(plain) == SkipSet() and draft_limits(plain, SkipSet()) == (8, 0.8)
    lists = parse(["bench", "--skip-attention", "5,1", "--skip-mlp", "2", "--max-draft-tokens", "3"])
    assert skip_source(lists) == SkipSet(attention=(1, 5), mlp=(2,)) and draft_limits(lists) == (3, 0.8)
    save_profile(Profile(model=ProfileModel("m", "llama", 4, "sha256:" + "0" * 64), task="t",
                         skip=SkipSet(mlp=(1,)), draft=DraftSettings(6, 0.5)), tmp_path / "p.yaml")
    given = parse(["generate", "--prompt", "hi", "--profile", str(tmp_path / "p.yaml"), "--confidence-threshold", "0"])
    profile = skip_source(given)
    assert isinstance(profile, Profile) and profile.skip == SkipSet(mlp=(1,))
    assert draft_limits(given, profile) == (6, 0.0)  # a flag wins over the profile, the profile over the defaults
