"""Profiles: the versioned YAML files that record which sublayers to skip for one model and task.

The dataclasses below are the schema of version 1; their field names are the YAML keys.
`parse_profile` checks a loaded mapping and reports the first problem as one line naming the
file, the field path and what is expected. `load_profile` and `save_profile` read and
atomically write files; `check_profile_for_model` refuses a profile made for another model.
`profile.schema.json`, next to this module, describes the same format for other runtimes.

This module knows nothing about searching, decoding or measuring: metrics and provenance are
recorded as given.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import numbers
import os
import re
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml

from .errors import SkipsearchError
from .models import model_fingerprint
from .skipping import SUBLAYER_KINDS, SkipSet

PROFILE_VERSION = 1
KNOWN_VERSIONS = (1,)
HEADER = "# skipsearch profile v1 — load with skipsearch or PyYAML\n"
FINGERPRINT_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ProfileModel:
    name: str  # what the user passed: hub id, path or embedded name
    architecture: str  # config.model_type
    num_hidden_layers: int
    fingerprint: str  # skipsearch.models.model_fingerprint of the model the profile was made for


@dataclass(frozen=True)
class DraftSettings:
    max_draft_tokens: int  # >= 1
    confidence_threshold: float  # in [0, 1]: stop drafting when the draft's top-1 probability is lower


@dataclass(frozen=True)
class ProfileMetrics:
    """Measured on held-out prompts of the task; None where not measured."""

    matchness: float | None = None  # in [0, 1]
    acceptance_rate: float | None = None  # in [0, 1]
    mean_accepted_tokens: float | None = None
    speedup: float | None = None  # wall-clock decoding after the prefill, against plain decoding on the same device
    predicted_speedup: float | None = None
    device: str | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class Profile:
    model: ProfileModel
    task: str
    skip: SkipSet
    draft: DraftSettings
    metrics: ProfileMetrics | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # str -> scalar or list of scalars
    skipsearch_profile: int = PROFILE_VERSION


def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _describe(value: Any) -> str:
    """A short one-line picture of a value for error messages; never a full repr of a container."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return (text if len(text) <= 40 else text[:36] + "...'") + " (a string)"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"the date {value.isoformat()} (put it in quotes to make it a string)"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _key_path(where: str, key: Any) -> str:
    name = key if isinstance(key, str) and re.fullmatch(r"[\w.-]{1,40}", key) else _describe(key)
    return f"{where}.{name}" if where else name


# numbers.* rather than int/float so that profiles built in Python from numpy values pass too;
# values are converted to plain int/float so that they can be written as YAML.
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _plain_scalar(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    return int(value) if _is_int(value) else float(value)


class _Checker:
    """Checks one loaded mapping, stopping at the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> NoReturn:
        raise SkipsearchError(f"{self.source}: {where}: {problem}" if where else f"{self.source}: {problem}")

    def expect(self, where: str, expected: str, value: Any) -> NoReturn:
        self.fail(where, f"expected {expected}, got {_describe(value)}")

    def mapping(self, value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            self.expect(where or "top level", "a mapping with keys " + ", ".join(required + optional), value)
        known = required + optional
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(_key_path(where, key), f"unknown key; {hint}(valid: {', '.join(known)})")
        for key in required:
            if key not in value:
                self.fail(_key_path(where, key), "required field is missing")
        return value

    def text(self, value: Any, where: str, pattern: re.Pattern | None = None, expected="a non-empty string") -> str:
        if not isinstance(value, str) or not value or (pattern and not pattern.fullmatch(value)):
            self.expect(where, expected, value)
        return value

    def integer(self, value: Any, where: str, minimum: int, expected: str) -> int:
        if not _is_int(value) or value < minimum:
            self.expect(where, expected, value)
        return int(value)

    def number(self, value: Any, where: str, maximum: float | None = None) -> float:
        expected = "a number in [0, 1]" if maximum == 1 else "a non-negative number"
        if not _is_finite_number(value) or value < 0 or (maximum is not None and value > maximum):
            self.expect(where, expected, value)
        return float(value)

    def version(self, data: dict) -> int:
        known = ", ".join(map(str, KNOWN_VERSIONS))
        if "skipsearch_profile" not in data:
            self.fail("skipsearch_profile", f"required field is missing (the schema version; known: {known}); "
                      "is this a skipsearch profile?")
        version = data["skipsearch_profile"]
        if not _is_int(version):
            self.expect("skipsearch_profile", f"an integer schema version (known: {known})", version)
        if version not in KNOWN_VERSIONS:
            self.fail("skipsearch_profile", f"version {_describe(version)} is not known to this skipsearch "
                      f"(known: {known}); upgrade skipsearch or export the profile as version {PROFILE_VERSION}")
        return version

    def model(self, value: Any) -> ProfileModel:
        data = self.mapping(value, "model", _field_names(ProfileModel))
        return ProfileModel(
            name=self.text(data["name"], "model.name"),
            architecture=self.text(data["architecture"], "model.architecture"),
            num_hidden_layers=self.integer(data["num_hidden_layers"], "model.num_hidden_layers", 1,
                                           "a positive integer"),
            fingerprint=self.text(data["fingerprint"], "model.fingerprint", FINGERPRINT_PATTERN,
                                  "'sha256:' followed by 64 lowercase hex digits"),
        )

    def skip(self, value: Any, num_layers: int) -> SkipSet:
        data = self.mapping(value, "skip", SUBLAYER_KINDS)
        indices = {}
        for kind in SUBLAYER_KINDS:
            items = data[kind]
            if not isinstance(items, list):
                self.expect(f"skip.{kind}", "a list of 0-based layer indices (may be empty: [])", items)
            seen: set[int] = set()
            for position, index in enumerate(items):
                where = f"skip.{kind}[{position}]"
                self.integer(index, where, 0, "a non-negative integer")
                if index >= num_layers:
                    self.fail(where, f"layer {index} is out of range for a model with {num_layers} decoder "
                              f"layers (valid: 0..{num_layers - 1})")
                if index in seen:
                    self.fail(where, f"layer {index} is listed twice")
                seen.add(index)
            indices[kind] = tuple(int(i) for i in items)
        return SkipSet(**indices)

    def draft(self, value: Any) -> DraftSettings:
        data = self.mapping(value, "draft", _field_names(DraftSettings))
        return DraftSettings(
            max_draft_tokens=self.integer(data["max_draft_tokens"], "draft.max_draft_tokens", 1,
                                          "an integer >= 1"),
            confidence_threshold=self.number(data["confidence_threshold"], "draft.confidence_threshold", 1),
        )

    def metrics(self, value: Any) -> ProfileMetrics | None:
        if value is None:
            return None
        data = self.mapping(value, "metrics", (), _field_names(ProfileMetrics))
        checked = {}
        for key, item in data.items():
            if item is not None and key in ("device", "dtype"):
                item = self.text(item, f"metrics.{key}")
            elif item is not None:
                item = self.number(item, f"metrics.{key}", 1 if key in ("matchness", "acceptance_rate") else None)
            checked[key] = item
        return ProfileMetrics(**checked)

    def provenance(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.expect("provenance", "a mapping of names to values", value)
        checked = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.expect(_key_path("provenance", key), "a string key", key)
            is_list = isinstance(item, (list, tuple))
            for position, scalar in enumerate(item if is_list else [item]):
                if not (scalar is None or isinstance(scalar, (str, bool)) or _is_finite_number(scalar)):
                    where = _key_path("provenance", key) + (f"[{position}]" if is_list else "")
                    self.expect(where, "a string, finite number, boolean, null or a list of those", scalar)
            checked[key] = [_plain_scalar(s) for s in item] if is_list else _plain_scalar(item)
        return checked


def parse_profile(data: Any, source: str = "<profile>") -> Profile:
    """Check a loaded mapping (e.g. from yaml.safe_load) and build the Profile it describes."""
    check = _Checker(source)
    if not isinstance(data, dict):
        check.expect("top level", "a mapping (a skipsearch profile)", data)
    version = check.version(data)
    check.mapping(data, "", ("skipsearch_profile", "model", "task", "skip", "draft"), ("metrics", "provenance"))
    model = check.model(data["model"])
    return Profile(
        skipsearch_profile=version,
        model=model,
        task=check.text(data["task"], "task"),
        skip=check.skip(data["skip"], model.num_hidden_layers),
        draft=check.draft(data["draft"]),
        metrics=check.metrics(data.get("metrics")),
        provenance=check.provenance(data.get("provenance")),
    )


def load_profile(path: str | os.PathLike) -> Profile:
    """Read and check a profile file; every problem is a one-line SkipsearchError."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError:
        raise SkipsearchError(f"{source} is a directory; give the path of a profile .yaml file") from None
    except FileNotFoundError:
        raise SkipsearchError(f"profile {source} does not exist") from None
    except OSError as exc:
        raise SkipsearchError(f"cannot read profile {source}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SkipsearchError(f"{source}: not UTF-8 text (bad byte at offset {exc.start}); "
                              "a profile is a UTF-8 YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = " ".join(str(exc.problem or exc.context or "").split())
        raise SkipsearchError(f"{source}: not valid YAML{where}: {reason}") from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        # PyYAML builds timestamps before checking them (`2024-13-45` raises ValueError) and
        # recurses once per nesting level.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())
        raise SkipsearchError(f"{source}: not valid YAML: {reason}") from None
    if data is None:
        raise SkipsearchError(f"{source}: the file is empty; expected a skipsearch profile mapping")
    return parse_profile(data, source)


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """The profile as plain YAML/JSON data, keys in file order; unmeasured metrics are left out."""
    data: dict[str, Any] = {
        "skipsearch_profile": profile.skipsearch_profile,
        "model": dataclasses.asdict(profile.model),
        "task": profile.task,
        "skip": {kind: list(getattr(profile.skip, kind)) for kind in SUBLAYER_KINDS},
        "draft": dataclasses.asdict(profile.draft),
    }
    if profile.metrics is not None:
        data["metrics"] = {k: v for k, v in dataclasses.asdict(profile.metrics).items() if v is not None}
    if profile.provenance:
        data["provenance"] = {k: list(v) if isinstance(v, (list, tuple)) else v
                              for k, v in profile.provenance.items()}
    return data


class _ProfileDumper(yaml.SafeDumper):
    """Block mappings, flow lists (`[5, 6, 7]`), readable non-ASCII text."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # PyYAML writes these line breaks raw inside single quotes, and reads them back as spaces.
    style = '"' if any(ch in data for ch in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_ProfileDumper.add_representer(str, _represent_str)
_ProfileDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def dump_profile(profile: Profile) -> str:
    """The profile as YAML text; refuses (SkipsearchError) a profile the loader would refuse."""
    # Writing the checked copy keeps numpy numbers and tuples out of the YAML.
    data = profile_to_dict(parse_profile(profile_to_dict(profile), source="profile to write"))
    body = yaml.dump(data, Dumper=_ProfileDumper, sort_keys=False, allow_unicode=True)
    return HEADER + body


def save_profile(profile: Profile, path: str | os.PathLike) -> None:
    """Write the profile atomically: readers see the old file or the new one, never a partial one."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise SkipsearchError(f"output folder {folder} does not exist; create it or choose another path")
    if target.is_dir():
        raise SkipsearchError(f"{target} is a directory; give a file path such as {target / 'profile.yaml'}")
    text = dump_profile(profile)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes the file private; a profile is meant to be shared
        os.replace(temp_name, target)
    except OSError as exc:
        raise SkipsearchError(f"cannot write profile {target}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def check_profile_for_model(profile: Profile, model: torch.nn.Module, fingerprint: str | None = None) -> None:
    """Refuse a profile made for another model: architecture, layer count and fingerprint must match."""
    expected = profile.model
    for key, got in [
        ("architecture", getattr(model.config, "model_type", None)),
        ("num_hidden_layers", getattr(model.config, "num_hidden_layers", None)),
        ("fingerprint", fingerprint if fingerprint is not None else model_fingerprint(model)),
    ]:
        want = getattr(expected, key)
        if got != want:
            # 23 characters of a fingerprint ("sha256:" and 16 hex digits) tell two apart.
            want, got = (f"{want[:23]}…", f"{str(got)[:23]}…") if key == "fingerprint" else (want, got)
            raise SkipsearchError(
                f"profile for {expected.name!r} does not fit the loaded model: {key} expected {want}, got {got}; "
                "search a profile for this model, or load the model the profile was made for"
            )


def profile_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of profile version 1, shipped as skipsearch/profile.schema.json."""
    return json.loads(resources.files("skipsearch").joinpath("profile.schema.json").read_text(encoding="utf-8"))
