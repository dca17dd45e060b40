import copy
import dataclasses
import datetime
import math
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from skipsearch import (
    DraftSettings,
    Profile,
    ProfileMetrics,
    ProfileModel,
    SkipsearchError,
    SkipSet,
    check_profile_for_model,
    load_profile,
    model_fingerprint,
    parse_profile,
    profile_schema,
    save_profile,
)
from skipsearch.cli import main
from skipsearch.config import profiles
from skipsearch.engine.drafting import AcceptanceCounts, NgramSettings, PolicySettings, Priors, RelativeCosts
from skipsearch.engine.models import LoadedModel

from conftest import make_tiny_llama

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_FINGERPRINT = "sha256:" + "ab" * 32
PRIORS = Priors(layer_skip=AcceptanceCounts((30, 12), (20, 18)),
                ngram=((1, AcceptanceCounts((5,), (15,))), (3, AcceptanceCounts((9, 8.5), (1, 0.5)))))
POLICY_DRAFT = DraftSettings(max_draft_tokens=8, confidence_threshold=0.8, ngram=NgramSettings(2, 4, 10),
                             policy=PolicySettings(ngram_prior=0.5, layer_skip_prior=0.7, prior_weight=4.0, margin=1.1),
                             costs=RelativeCosts(verify=(1.0, 1.7, 2.2), draft_step=0.85), priors=PRIORS)
SKIP_ONLY_DRAFT = DraftSettings(max_draft_tokens=8, confidence_threshold=0.8)
VERSION_1_TEXT = f"""skipsearch_profile: 1
model: {{name: tiny, architecture: llama, num_hidden_layers: 4, fingerprint: "{FAKE_FINGERPRINT}"}}
task: humaneval
skip: {{attention: [1, 2], mlp: [2]}}
draft: {{max_draft_tokens: 8, confidence_threshold: 0.8}}
"""


def make_profile(fingerprint=FAKE_FINGERPRINT, num_layers=4, **changes) -> Profile:
    fields = dict(
        model=ProfileModel(name="tiny", architecture="llama", num_hidden_layers=num_layers, fingerprint=fingerprint),
        task="humaneval",
        skip=SkipSet(attention=(1, 2), mlp=(2,)),
        draft=POLICY_DRAFT,
        metrics=ProfileMetrics(matchness=0.81, acceptance_rate=0.74, mean_accepted_tokens=2.9, speedup=1.12,
                               predicted_speedup=1.15, device="cpu (2 threads)", dtype="float32"),
        provenance={"tool_version": "0.1.0", "study": "tiny-humaneval", "trial": 17, "seed": 0,
                    "date": "2025-01-31", "command": ["skipsearch", "search"], "note": None},
    )
    fields.update(changes)
    return Profile(**fields)


def valid_mapping() -> dict:
    return profiles.profile_to_dict(make_profile())


def version_2_mapping() -> dict:
    """A valid version 2 mapping: its policy with the four keys version 2 knew, costs, no priors."""
    data = valid_mapping()
    data["skipsearch_profile"] = 2
    data["draft"]["policy"] = {key: data["draft"]["policy"][key] for key in profiles.V2_POLICY_KEYS}
    del data["draft"]["priors"]
    return data


def _in_version_2(change):
    def changed(data):
        data.clear()
        data.update(version_2_mapping())
        change(data)
    return changed


def write(tmp_path: Path, content: str | bytes, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def assert_one_line(message: str, *fragments: str) -> None:
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_through_text_and_file(tmp_path):
    profile = make_profile()
    text = profiles.dump_profile(profile)
    assert text.startswith("# skipsearch profile v3")
    assert "attention: [1, 2]" in text and "verify: [1.0, 1.7, 2.2]" in text
    assert "  - match: 3\n      accepted: [9, 8.5]\n      rejected: [1, 0.5]\n" in text
    assert list(yaml.safe_load(text)) == ["skipsearch_profile", "model", "task", "skip", "draft", "metrics",
                                          "provenance"]
    assert parse_profile(yaml.safe_load(text)) == profile
    save_profile(profile, tmp_path / "p.yaml")
    assert load_profile(tmp_path / "p.yaml") == profile


def test_optional_sections_and_empty_skip_lists_round_trip(tmp_path):
    profile = make_profile(skip=SkipSet(), metrics=None, provenance={})  # n-gram only
    save_profile(profile, tmp_path / "p.yaml")
    data = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert "metrics" not in data and "provenance" not in data
    assert data["skip"] == {"attention": [], "mlp": []}
    assert load_profile(tmp_path / "p.yaml") == profile


def test_a_skip_only_policy_writes_null_sections_and_they_may_be_left_out(tmp_path):
    profile = make_profile(draft=SKIP_ONLY_DRAFT)
    save_profile(profile, tmp_path / "p.yaml")
    data = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert data["draft"] == {"max_draft_tokens": 8, "confidence_threshold": 0.8, "ngram": None}
    assert load_profile(tmp_path / "p.yaml") == profile
    data["draft"].update(policy=None, costs=None, priors=None)
    assert parse_profile(data) == profile


def test_in_version_3_a_profile_needs_no_policy_and_in_version_2_n_grams_needed_one(tmp_path):
    # the runtime always decides by its policy now; version 2 files kept their rule
    no_policy = dataclasses.replace(POLICY_DRAFT, policy=None, costs=None)
    save_profile(make_profile(draft=no_policy), tmp_path / "p.yaml")
    assert load_profile(tmp_path / "p.yaml") == make_profile(draft=no_policy)
    data = version_2_mapping()
    data["draft"].update(policy=None, costs=None)
    with pytest.raises(SkipsearchError, match=r"^<profile>: draft\.ngram: never used"):
        parse_profile(data)


def test_version_1_and_2_files_load_and_are_written_as_version_3_as_the_runtime_reads_them(tmp_path):
    profile = load_profile(write(tmp_path, VERSION_1_TEXT, "v1.yaml"))
    assert profile == make_profile(draft=SKIP_ONLY_DRAFT, metrics=None, provenance={}, skipsearch_profile=1)
    # a version 1 or 2 file without n-gram settings drafts n-grams with the defaults now
    assert profiles.decode_fields(profile)["ngram"] == NgramSettings()
    save_profile(profile, tmp_path / "v3.yaml")
    written = yaml.safe_load((tmp_path / "v3.yaml").read_text())
    assert written["skipsearch_profile"] == 3 and written["draft"]["ngram"] == dataclasses.asdict(NgramSettings())
    assert profiles.decode_fields(load_profile(tmp_path / "v3.yaml"))["ngram"] == NgramSettings()
    v2 = parse_profile(version_2_mapping())
    assert v2.skipsearch_profile == 2 and v2.draft.priors is None and v2.draft.policy.margin == 1.1
    # in version 3 null turns n-gram drafting off
    assert profiles.decode_fields(make_profile(draft=dataclasses.replace(POLICY_DRAFT, ngram=None)))["ngram"] is None


def test_version_1_with_an_empty_skip_set_loads_and_drafts_n_grams(tmp_path):
    # version 1 accepted it (it decoded plainly then); the runtime drafts n-grams with it now
    path = write(tmp_path, VERSION_1_TEXT.replace("[1, 2], mlp: [2]", "[], mlp: []"))
    profile = load_profile(path)
    assert not profile.skip and profile.draft.ngram is None
    save_profile(profile, tmp_path / "out.yaml")
    assert load_profile(tmp_path / "out.yaml").draft.ngram == NgramSettings()


def test_policy_costs_from_the_profile_need_costs_in_it():
    assert profiles.decode_fields(make_profile(), "profile")["costs"] == POLICY_DRAFT.costs
    assert profiles.decode_fields(make_profile())["costs"] == "here"
    with pytest.raises(SkipsearchError, match="stores no costs"):
        profiles.decode_fields(make_profile(draft=SKIP_ONLY_DRAFT), "profile")


def test_partial_metrics_and_null_sections_are_accepted():
    data = valid_mapping()
    data["metrics"] = {"speedup": 1.3, "matchness": None}
    assert parse_profile(data).metrics == ProfileMetrics(speedup=1.3)
    data["metrics"] = None
    data["provenance"] = None
    parsed = parse_profile(data)
    assert parsed.metrics is None and parsed.provenance == {}


def test_unsorted_indices_and_integral_numbers_are_normalised():
    data = valid_mapping()
    data["skip"]["attention"] = [3, 0]
    data["draft"]["confidence_threshold"] = 1
    parsed = parse_profile(data)
    assert parsed.skip.attention == (0, 3)
    assert parsed.draft.confidence_threshold == 1.0 and isinstance(parsed.draft.confidence_threshold, float)


def test_numpy_values_are_written_as_plain_yaml():
    np = pytest.importorskip("numpy")
    profile = make_profile(
        draft=DraftSettings(max_draft_tokens=np.int64(4), confidence_threshold=np.float64(0.5),
                            ngram=NgramSettings(np.int64(1), np.int64(3), np.int64(6)), policy=PolicySettings(),
                            costs=RelativeCosts(verify=(np.float64(1.0), np.float32(1.5)), draft_step=np.float64(0.5))),
        metrics=ProfileMetrics(speedup=np.float32(1.5)),
        provenance={"seed": np.int64(3), "scores": (np.float64(0.25),)},
    )
    data = yaml.safe_load(profiles.dump_profile(profile))
    assert data["draft"] == {"max_draft_tokens": 4, "confidence_threshold": 0.5,
                             "ngram": {"min_n": 1, "max_n": 3, "max_tokens": 6},
                             "policy": dataclasses.asdict(PolicySettings()),
                             "costs": {"verify": [1.0, 1.5], "draft_step": 0.5}}
    assert data["provenance"] == {"seed": 3, "scores": [0.25]}


# --- rejected mappings ------------------------------------------------------------------------


def _set(path, value):
    def change(data):
        *parents, last = path
        target = data
        for key in parents:
            target = target[key]
        target[last] = value
    return change


def _delete(path):
    def change(data):
        *parents, last = path
        target = data
        for key in parents:
            target = target[key]
        del target[last]
    return change


# (change, fragments the one-line message must hold, whether the JSON Schema can tell too)
REJECTED = {
    "unknown version": (_set(["skipsearch_profile"], 4), ["skipsearch_profile:", "known: 1, 2, 3"], True),
    "version as text": (_set(["skipsearch_profile"], "1"), ["skipsearch_profile:", "integer"], True),
    "version as bool": (_set(["skipsearch_profile"], True), ["skipsearch_profile:", "boolean"], True),
    "no version": (_delete(["skipsearch_profile"]), ["skipsearch_profile:", "missing"], True),
    "no task": (_delete(["task"]), ["task: required field is missing"], True),
    "no fingerprint": (_delete(["model", "fingerprint"]), ["model.fingerprint: required field is missing"], True),
    "no skip.mlp": (_delete(["skip", "mlp"]), ["skip.mlp: required field is missing"], True),
    "no draft": (_delete(["draft"]), ["draft: required field is missing"], True),
    "no confidence": (_delete(["draft", "confidence_threshold"]), ["draft.confidence_threshold:"], True),
    "typo top": (lambda d: d.update(tsk=d.pop("task")), ["tsk: unknown key", "did you mean 'task'"], True),
    "typo skip": (_set(["skip", "atention"], [1]), ["skip.atention: unknown key", "did you mean 'attention'"],
                  True),
    "typo metrics": (_set(["metrics", "speed_up"], 1.0), ["metrics.speed_up", "did you mean 'speedup'"], True),
    "unknown model key": (_set(["model", "revision"], "main"), ["model.revision: unknown key", "valid:"], True),
    "non-string key": (_set(["skip", 1], [1]), ["skip.1: unknown key"], True),
    "task as number": (_set(["task"], 5), ["task: expected a non-empty string, got 5"], True),
    "empty task": (_set(["task"], ""), ["task: expected a non-empty string"], True),
    "task as date": (_set(["task"], datetime.date(2024, 5, 1)), ["task:", "quotes"], True),
    "name as list": (_set(["model", "name"], ["a"]), ["model.name:", "list"], True),
    "layers as bool": (_set(["model", "num_hidden_layers"], True), ["model.num_hidden_layers:", "boolean"], True),
    "zero layers": (_set(["model", "num_hidden_layers"], 0), ["model.num_hidden_layers:", "positive"], True),
    "bad fingerprint": (_set(["model", "fingerprint"], "md5:abc"), ["model.fingerprint:", "sha256"], True),
    "negative index": (_set(["skip", "attention"], [1, 2, -3]),
                       ["skip.attention[2]: expected a non-negative integer, got -3"], True),
    "duplicate index": (_set(["skip", "mlp"], [2, 2]), ["skip.mlp[1]:", "twice"], True),
    "float index": (_set(["skip", "mlp"], [1.5]), ["skip.mlp[0]:", "1.5"], True),
    "integral float index": (_set(["skip", "mlp"], [1.0]), ["skip.mlp[0]:", "integer"], False),
    "bool index": (_set(["skip", "mlp"], [True]), ["skip.mlp[0]:", "boolean"], True),
    "text index": (_set(["skip", "mlp"], ["1"]), ["skip.mlp[0]:", "string"], True),
    "index out of range": (_set(["skip", "attention"], [0, 4]), ["skip.attention[1]:", "out of range", "0..3"],
                           False),
    "skip as text": (_set(["skip", "attention"], "1,2"), ["skip.attention:", "list"], True),
    "skip as null": (_set(["skip", "attention"], None), ["skip.attention:", "null"], True),
    "skip as list": (_set(["skip"], [1, 2]), ["skip:", "mapping"], True),
    "threshold above 1": (_set(["draft", "confidence_threshold"], 1.5), ["draft.confidence_threshold:", "[0, 1]"],
                          True),
    "threshold below 0": (_set(["draft", "confidence_threshold"], -0.1), ["draft.confidence_threshold:"], True),
    "threshold nan": (_set(["draft", "confidence_threshold"], math.nan), ["draft.confidence_threshold:", "nan"],
                      False),  # JSON has no NaN; jsonschema lets it through every bound
    "threshold bool": (_set(["draft", "confidence_threshold"], True), ["draft.confidence_threshold:"], True),
    "zero draft tokens": (_set(["draft", "max_draft_tokens"], 0), ["draft.max_draft_tokens:", ">= 1"], True),
    "float draft tokens": (_set(["draft", "max_draft_tokens"], 2.5), ["draft.max_draft_tokens:"], True),
    "matchness above 1": (_set(["metrics", "matchness"], 1.2), ["metrics.matchness:", "[0, 1]"], True),
    "speedup as text": (_set(["metrics", "speedup"], "fast"), ["metrics.speedup:", "'fast'"], True),
    "negative speedup": (_set(["metrics", "speedup"], -1.0), ["metrics.speedup:", "non-negative"], True),
    "device as number": (_set(["metrics", "device"], 0), ["metrics.device:"], True),
    "metrics as list": (_set(["metrics"], [1]), ["metrics:", "mapping"], True),
    "provenance as list": (_set(["provenance"], ["a"]), ["provenance:", "mapping"], True),
    "provenance nested mapping": (_set(["provenance", "sampler"], {"name": "tpe"}), ["provenance.sampler:"], True),
    "provenance nested list": (_set(["provenance", "command"], ["a", ["b"]]), ["provenance.command[1]:"], True),
    "provenance non-string key": (_set(["provenance", 3], "x"), ["provenance.3:", "string key"], True),
    # version 2: n-gram drafting, the policy and its costs
    "ngram as list": (_set(["draft", "ngram"], [2, 4]), ["draft.ngram: expected a mapping with keys min_n, max_n, "
                                                         "max_tokens, or null for no n-gram drafting"], True),
    "policy as text": (_set(["draft", "policy"], "auto"), ["draft.policy:", "or null for the runtime's defaults"],
                       True),
    "ngram typo": (_set(["draft", "ngram", "max_token"], 3), ["draft.ngram.max_token: unknown key",
                                                               "did you mean 'max_tokens'"], True),
    "no ngram max_n": (_delete(["draft", "ngram", "max_n"]), ["draft.ngram.max_n: required field is missing"], True),
    "zero min_n": (_set(["draft", "ngram", "min_n"], 0), ["draft.ngram.min_n: expected an integer >= 1, got 0"],
                   True),
    "float max_tokens": (_set(["draft", "ngram", "max_tokens"], 2.5), ["draft.ngram.max_tokens:", "2.5"], True),
    "min_n above max_n": (_set(["draft", "ngram", "min_n"], 5), ["draft.ngram: need 1 <= min_n <= max_n",
                                                                 "min_n=5, max_n=4"], False),
    "unused ngram": (_in_version_2(lambda d: d["draft"].update(policy=None, costs=None)),
                     ["draft.ngram: never used: without draft.policy the skip set drafts every round",
                      "set ngram to null"], True),
    "policy typo": (_set(["draft", "policy", "margn"], 1.0), ["draft.policy.margn", "did you mean 'margin'"], True),
    "prior of 1": (_set(["draft", "policy", "ngram_prior"], 1.0), ["draft.policy.ngram_prior:",
                                                                   "expected a number in [0, 1), got 1.0"], True),
    "negative prior": (_set(["draft", "policy", "layer_skip_prior"], -0.1), ["draft.policy.layer_skip_prior:"],
                       True),
    "zero margin": (_set(["draft", "policy", "margin"], 0), ["draft.policy.margin: expected a number > 0"], True),
    "prior weight as text": (_set(["draft", "policy", "prior_weight"], "4"), ["draft.policy.prior_weight:",
                                                                              "string"], True),
    "policy without costs": (_in_version_2(_set(["draft", "costs"], None)),
                             ["draft.costs: required when draft.policy is set"], True),
    "costs without policy": (_in_version_2(lambda d: d["draft"].update(ngram=None, policy=None)),
                             ["draft.costs: only a policy uses costs"], True),
    "one verify cost": (_set(["draft", "costs", "verify"], [1.0]), ["draft.costs.verify:", "at least 2 costs"],
                        True),
    "verify as number": (_set(["draft", "costs", "verify"], 1.7), ["draft.costs.verify:", "list"], True),
    "verify not relative": (_set(["draft", "costs", "verify"], [2.0, 3.4]), ["draft.costs.verify[0]: expected 1",
                                                                              "relative to one plain step", "2.0"],
                            True),
    "zero verify cost": (_set(["draft", "costs", "verify"], [1, 0]), ["draft.costs.verify[1]:", "> 0"], True),
    "negative draft step": (_set(["draft", "costs", "draft_step"], -0.5), ["draft.costs.draft_step:", "> 0"], True),
    "infinite draft step": (_set(["draft", "costs", "draft_step"], math.inf), ["draft.costs.draft_step:", "inf"],
                            False),  # JSON has no infinity; jsonschema lets it through a lower bound
    "drafts nothing": (lambda d: d.update(skip={"attention": [], "mlp": []}, draft={**d["draft"], "ngram": None}),
                       ["skip: the profile drafts nothing", "skip at least one sublayer or set draft.ngram"], True),
    "version 1 with ngram": (_set(["skipsearch_profile"], 1), ["draft.ngram: not part of a version 1 profile",
                                                               "set skipsearch_profile: 2"], True),
    "version 1 with costs": (lambda d: d.update(skipsearch_profile=1, draft={"max_draft_tokens": 8,
                                                                              "confidence_threshold": 0.8,
                                                                              "costs": None}),
                             ["draft.costs: not part of a version 1 profile"], True),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected_mappings_name_the_field(case):
    change, fragments, _ = REJECTED[case]
    data = valid_mapping()
    change(data)
    with pytest.raises(SkipsearchError) as info:
        parse_profile(data, source="profile.yaml")
    assert_one_line(str(info.value), "profile.yaml: ", *fragments)


@pytest.mark.parametrize("data", [None, [], "skipsearch_profile: 1", 3])
def test_top_level_must_be_a_mapping(data):
    with pytest.raises(SkipsearchError, match=r"^p\.yaml: top level: expected a mapping"):
        parse_profile(data, source="p.yaml")


def test_unknown_version_is_reported_before_other_problems():
    with pytest.raises(SkipsearchError, match=r"version 4 is not known .*known: 1, 2, 3"):
        parse_profile({"skipsearch_profile": 4, "whatever": "comes in v4"})


# --- reading files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("", ["the file is empty"]),
        ("# only a comment\n", ["the file is empty"]),
        ("skip: [1, 2\n", ["not valid YAML at line 2, column 1"]),
        ("a: b: c\n", ["not valid YAML at line 1, column 5"]),
        ("a: 1\n---\nb: 2\n", ["not valid YAML"]),
        ("a: 2024-13-45\n", ["not valid YAML", "month"]),
        ("a: !!python/object:os.system x\n", ["not valid YAML at line 1"]),
        ("[" * 3000 + "]" * 3000, ["not valid YAML"]),
        ("- 1\n- 2\n", ["top level: expected a mapping"]),
        (b"skipsearch_profile: 1\n\xff\xfe\n", ["not UTF-8"]),
        (b"\x00\x01\x02", ["not valid YAML"]),
    ],
)
def test_unreadable_files_give_one_line(tmp_path, content, fragments):
    path = write(tmp_path, content)
    with pytest.raises(SkipsearchError) as info:
        load_profile(path)
    assert_one_line(str(info.value), str(path), *fragments)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SkipsearchError, match="does not exist"):
        load_profile(tmp_path / "nope.yaml")
    with pytest.raises(SkipsearchError, match="is a directory"):
        load_profile(tmp_path)


def test_field_errors_from_a_file_name_the_file(tmp_path):
    data = valid_mapping()
    data["skip"]["attention"] = [1, 2, -3]
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(SkipsearchError) as info:
        load_profile(path)
    assert str(info.value) == f"{path}: skip.attention[2]: expected a non-negative integer, got -3"


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + profiles.dump_profile(make_profile()).encode())
    assert load_profile(path) == make_profile()


# --- writing files ----------------------------------------------------------------------------


def _no_temp_files(folder: Path) -> bool:
    return [p.name for p in folder.iterdir()] == ["p.yaml"]


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("old")
    save_profile(make_profile(), path)
    assert load_profile(path) == make_profile()
    assert _no_temp_files(tmp_path)
    assert (path.stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "p.yaml"
    path.write_text("old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(SkipsearchError, match="cannot write profile .*No space left on device"):
        save_profile(make_profile(), path)
    assert path.read_text() == "old"
    assert _no_temp_files(tmp_path)


def test_interrupted_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("old")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_profile(make_profile(), path)
    assert path.read_text() == "old"
    assert _no_temp_files(tmp_path)


def test_failing_dumper_writes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("old")

    def fail(*args, **kwargs):
        raise SkipsearchError("dumper failed")

    monkeypatch.setattr(profiles, "dump_profile", fail)
    with pytest.raises(SkipsearchError, match="dumper failed"):
        save_profile(make_profile(), path)
    assert path.read_text() == "old"
    assert _no_temp_files(tmp_path)


def test_save_refuses_missing_folder_directory_and_invalid_profile(tmp_path):
    with pytest.raises(SkipsearchError, match="output folder .*missing does not exist; create it"):
        save_profile(make_profile(), tmp_path / "missing" / "p.yaml")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(SkipsearchError, match="is a directory"):
        save_profile(make_profile(), tmp_path)
    with pytest.raises(SkipsearchError, match=r"skip.attention\[0\]: layer 9 is out of range"):
        save_profile(make_profile(skip=SkipSet(attention=(9,))), tmp_path / "p.yaml")
    assert list(tmp_path.iterdir()) == []


# --- matching the live model ------------------------------------------------------------------


def test_profile_for_the_same_model_is_accepted(tiny_model):
    fingerprint = model_fingerprint(tiny_model)
    profile = make_profile(fingerprint=fingerprint)
    check_profile_for_model(profile, tiny_model)
    check_profile_for_model(profile, tiny_model, fingerprint=fingerprint)


def test_profile_for_other_weights_is_refused(tiny_model):
    profile = make_profile(fingerprint=model_fingerprint(tiny_model))
    with pytest.raises(SkipsearchError) as info:
        check_profile_for_model(profile, make_tiny_llama(seed=1))
    assert_one_line(str(info.value), "fingerprint expected", "got sha256:", "search a profile for this model",
                    "load the model the profile was made for")


def test_profile_for_another_layer_count_or_architecture_is_refused(tiny_model):
    fingerprint = model_fingerprint(tiny_model)
    with pytest.raises(SkipsearchError) as info:
        check_profile_for_model(make_profile(fingerprint=fingerprint, num_layers=6), tiny_model)
    assert_one_line(str(info.value), "num_hidden_layers expected 6, got 4", "search a profile for this model")
    other = make_profile(model=ProfileModel("q", "qwen2", 4, fingerprint))
    with pytest.raises(SkipsearchError) as info:
        check_profile_for_model(other, tiny_model)
    assert_one_line(str(info.value), "architecture expected qwen2, got llama")


# --- JSON Schema ------------------------------------------------------------------------------


def test_schema_is_valid_2020_12_and_ships_in_the_package():
    schema = profile_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    assert (REPO_ROOT / "skipsearch" / "config" / "profile.schema.json").is_file()


@pytest.mark.parametrize(
    "profile",
    [
        make_profile(),
        make_profile(skip=SkipSet(), metrics=None, provenance={}),
        make_profile(metrics=ProfileMetrics(speedup=0.9), provenance={"seeds": [1, 2, 3], "ok": True}),
        make_profile(draft=SKIP_ONLY_DRAFT),
        make_profile(draft=dataclasses.replace(POLICY_DRAFT, ngram=None)),
        make_profile(skip=SkipSet(), draft=dataclasses.replace(POLICY_DRAFT, policy=None, costs=None)),
    ],
)
def test_schema_accepts_what_the_loader_accepts(profile):
    data = yaml.safe_load(profiles.dump_profile(profile))
    assert parse_profile(data) == profile
    jsonschema.validate(data, profile_schema(), cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("text", [VERSION_1_TEXT, VERSION_1_TEXT.replace("[1, 2], mlp: [2]", "[], mlp: []")])
def test_schema_accepts_the_version_1_files_the_loader_accepts(text):
    data = yaml.safe_load(text)
    parse_profile(data)
    jsonschema.validate(data, profile_schema(), cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("case", [case for case, (_, _, schema_can_tell) in REJECTED.items() if schema_can_tell])
def test_schema_rejects_what_the_loader_rejects(case):
    change, _, _ = REJECTED[case]
    data = valid_mapping()
    change(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, profile_schema(), cls=jsonschema.Draft202012Validator)


# --- plain PyYAML reader documented in docs/profiles.md -----------------------------------------

def docs_snippet(after: str) -> str:
    """The first python code block in docs/profiles.md after the line holding `after`."""
    page = (REPO_ROOT / "docs" / "profiles.md").read_text(encoding="utf-8")
    return page[page.index(after):].split("```python\n", 1)[1].split("```", 1)[0]


PLAIN_READER = docs_snippet("Another runtime can read a profile with PyYAML alone")


def test_plain_pyyaml_reader_from_the_readme(tmp_path):
    save_profile(make_profile(), tmp_path / "p.yaml")
    namespace = {"path": str(tmp_path / "p.yaml")}
    exec(PLAIN_READER, namespace)
    assert namespace["skip_attention"] == {1, 2} and namespace["skip_mlp"] == {2}
    assert namespace["max_draft_tokens"] == 8 and namespace["confidence_threshold"] == 0.8
    assert (namespace["min_n"], namespace["max_n"], namespace["ngram_max_tokens"]) == (2, 4, 10)
    assert namespace["policy"]["margin"] == 1.1 and namespace["costs"]["verify"] == [1.0, 1.7, 2.2]


@pytest.mark.parametrize("text", [VERSION_1_TEXT, None])
def test_plain_pyyaml_reader_reads_skip_only_policies(tmp_path, text):
    path = write(tmp_path, text) if text else tmp_path / "p.yaml"
    if text is None:
        save_profile(make_profile(draft=SKIP_ONLY_DRAFT), path)
    namespace = {"path": str(path)}
    exec(PLAIN_READER, namespace)
    assert namespace["skip_attention"] == {1, 2} and namespace["max_draft_tokens"] == 8
    assert namespace["ngram"] is None and namespace["policy"] is None and namespace["costs"] is None


def test_plain_pyyaml_reader_refuses_an_unknown_version(tmp_path):
    path = write(tmp_path, VERSION_1_TEXT.replace("skipsearch_profile: 1", "skipsearch_profile: 4"))
    with pytest.raises(ValueError, match="unsupported skipsearch profile version 4"):
        exec(PLAIN_READER, {"path": str(path)})


# --- CLI --------------------------------------------------------------------------------------


def test_cli_validate_ok(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    save_profile(make_profile(), path)
    assert main(["profile", "validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: {path} (model tiny, task humaneval, 2 attention + 1 MLP sublayers skipped + n-gram drafting)\n"
    assert err == ""
    save_profile(make_profile(draft=SKIP_ONLY_DRAFT), path)
    assert main(["profile", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out == f"OK: {path} (model tiny, task humaneval, 2 attention + 1 MLP sublayers skipped)\n"


def _fake_loader(model, calls=None):
    def load(name, **options):
        if calls is not None:
            calls.append(options)
        return LoadedModel(model=model, tokenizer=None, name=name, source="memory")
    return load


def test_cli_validate_against_a_model(tmp_path, capsys, monkeypatch, tiny_model):
    from skipsearch.cli import profile_cmd

    path = tmp_path / "p.yaml"
    save_profile(make_profile(fingerprint=model_fingerprint(tiny_model)), path)
    calls = []
    monkeypatch.setattr(profile_cmd, "load_model", _fake_loader(tiny_model, calls))
    assert main(["profile", "validate", str(path), "--model", "tiny", "--device", "cpu"]) == 0
    assert "fits the loaded model tiny" in capsys.readouterr().out
    assert main(["profile", "validate", str(path), "--model", "tiny", "--dtype", "bfloat16", "--device-map",
                 '{"": "cpu"}', "--attn-implementation", "eager"]) == 0
    assert calls == [{"dtype": "auto", "device": "cpu", "device_map": None, "attn_implementation": None},
                     {"dtype": "bfloat16", "device": "auto", "device_map": {"": "cpu"}, "attn_implementation": "eager"}]
    capsys.readouterr()

    monkeypatch.setattr(profile_cmd, "load_model", _fake_loader(make_tiny_llama(seed=1)))
    assert main(["profile", "validate", str(path), "--model", "other"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("skipsearch: error: ")
    assert "fingerprint expected" in err


BAD_FILES = {
    "empty": "",
    "invalid yaml": "skip: [1, 2\n",
    "wrong version": "skipsearch_profile: 7\n",
    "bad index": yaml.safe_dump({**valid_mapping(), "skip": {"attention": [-1], "mlp": []}}),
    "not utf-8": b"\xff\xfe\x00",
    "list": "- 1\n",
}


@pytest.mark.parametrize("case", list(BAD_FILES))
@pytest.mark.parametrize("action", ["validate", "show"])
def test_cli_bad_files_give_one_error_line_and_exit_2(tmp_path, capsys, case, action):
    path = write(tmp_path, BAD_FILES[case])
    assert main(["profile", action, str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"skipsearch: error: {path}")
    assert "Traceback" not in err


def test_cli_missing_file_exits_2(tmp_path, capsys):
    assert main(["profile", "validate", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith("skipsearch: error: profile ")


@pytest.mark.slow
def test_cli_as_a_process_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "skipsearch_profile: 1\nmodel: {}\ntask: t\nskip: {}\ndraft: {}\n", name="bad.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "skipsearch", "profile", "validate", str(path)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"skipsearch: error: {path}: model.name: required field is missing"]


def test_cli_show(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    save_profile(make_profile(), path)
    assert main(["profile", "show", str(path)]) == 0
    out = capsys.readouterr().out
    for fragment in ["(skipsearch profile v3)", "model:     tiny (llama, 4 layers, sha256:abab",
                     "task:      humaneval", "3 of 8 sublayers (layer", "attention: 1, 2", "mlp:       2",
                     "draft:     layer skip up to 8 tokens", "< 0.8",
                     "n-gram:    up to 10 tokens, the most frequent continuation of the context's last 4 down "
                     "to 2 tokens",
                     "runtime:   each round a plain step or a draft, chosen by Thompson sampling with this device's "
                     "costs",
                     "layer-skip evidence: 50 drafts, accepted by position 0.60 / 0.40",
                     "n-gram evidence, 1-token match: 20 drafts, accepted by position 0.25",
                     "n-gram evidence, 3-token match: 10 drafts, accepted by position 0.90 / 0.94",
                     "matchness: 0.81", "device: cpu (2 threads)", "tool_version: 0.1.0",
                     "command: ['skipsearch', 'search']",
                     "metrics measured in float32 on cpu (2 threads); the profile is usable in any dtype"]:
        assert fragment in out


def test_cli_show_says_what_the_metrics_were_measured_in(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    save_profile(make_profile(metrics=ProfileMetrics(speedup=1.4, device="NVIDIA H200 (cuda:0)", dtype="bfloat16")),
                 path)
    assert main(["profile", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "metrics measured in bfloat16 on NVIDIA H200 (cuda:0); the profile is usable in any dtype\n" in out
    save_profile(make_profile(metrics=ProfileMetrics(matchness=0.8), draft=SKIP_ONLY_DRAFT), path)
    assert main(["profile", "show", str(path)]) == 0
    assert "metrics measured in an unrecorded dtype on an unrecorded device;" in capsys.readouterr().out


def test_cli_show_without_metrics_or_provenance(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    save_profile(make_profile(skip=SkipSet(), metrics=None, provenance={}), path)
    assert main(["profile", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "attention: none" in out and "metrics:   none recorded" in out and "provenance: none recorded" in out
    assert "0 of 8 sublayers: n-gram only" in out and "draft:" not in out  # the skipped model never drafts
    assert "runtime:   each round a plain step or a draft" in out


def test_cli_show_a_profile_without_n_grams_and_a_version_1_file(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    save_profile(make_profile(draft=SKIP_ONLY_DRAFT), path)
    assert main(["profile", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "n-gram:    off\n" in out and "evidence: none (the runtime's default priors)" in out
    assert main(["profile", "show", str(write(tmp_path, VERSION_1_TEXT, "v1.yaml"))]) == 0
    out = capsys.readouterr().out
    assert "(skipsearch profile v1)" in out
    assert "(the runtime's default: this version's null meant the search's choice)" in out


# --- the embedded SmolLM2 ---------------------------------------------------------------------


@pytest.mark.integration
def test_profile_against_embedded_smollm(smollm, tmp_path, capsys, monkeypatch):
    from skipsearch.cli import profile_cmd

    fingerprint = model_fingerprint(smollm.model)
    profile = make_profile(
        model=ProfileModel(name="smollm2-135m", architecture="llama", num_hidden_layers=30, fingerprint=fingerprint),
        skip=SkipSet(attention=(5, 6, 7, 9), mlp=(7, 23)),
    )
    path = tmp_path / "smollm.yaml"
    save_profile(profile, path)
    check_profile_for_model(load_profile(path), smollm.model, fingerprint=fingerprint)
    monkeypatch.setattr(profile_cmd, "load_model", lambda name, **options: smollm)
    assert main(["profile", "validate", str(path), "--model", "smollm2-135m"]) == 0
    assert ("4 attention + 2 MLP sublayers skipped + n-gram drafting; fits the loaded model smollm2-135m"
            in capsys.readouterr().out)

    wrong = copy.deepcopy(profiles.profile_to_dict(profile))
    wrong["model"]["fingerprint"] = "sha256:" + "0" * 64
    with pytest.raises(SkipsearchError, match="fingerprint expected sha256:0000"):
        check_profile_for_model(parse_profile(wrong), smollm.model, fingerprint=fingerprint)
