"""Profiles: the versioned YAML files that record one model's drafting policy for one task.

A profile names the sublayers to skip while drafting (the skip set; empty for n-gram drafting
only), the draft settings and the n-gram drafter's, and the acceptance evidence the search
measured, with counts (`draft.priors`): what does not depend on the device. The runtime
(`skipsearch.engine.drafting`) decides each round with its own device's costs, starting from
these priors. The dataclasses below are the schema of version 3; their field names are the YAML
keys. Versions 1 and 2 still load: their `ngram: null` meant the search had switched n-gram
drafting off, and the runtime now drafts n-grams with its defaults there (in version 3 null turns
it off); version 2's policy settings load as the runtime's, its costs are kept for `policy_costs
"profile"`. Files are always written as version 3.

`parse_profile` checks a loaded mapping and reports the first problem as one line naming the
file, the field path and what is expected. `load_profile` and `save_profile` read and
atomically write files; `check_profile_for_model` refuses a profile made for another model;
`decode_fields` turns the drafting policy into the decoder's settings.
`profile.schema.json`, next to this module, describes the versions for other runtimes.

This module knows nothing about searching, decoding or measuring: metrics, costs and
provenance are recorded as given.
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
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml

from skipsearch.engine.decoding import DecodeSettings
from skipsearch.engine.drafting import AcceptanceCounts, NgramSettings, PolicySettings, Priors, RelativeCosts
from skipsearch.engine.models import model_fingerprint
from skipsearch.engine.skipping import SUBLAYER_KINDS, SkipSet
from skipsearch.errors import SkipsearchError
from skipsearch.files import write_atomic

PROFILE_VERSION = 3
KNOWN_VERSIONS = (1, 2, 3)
HEADER = f"# skipsearch profile v{PROFILE_VERSION} — load with skipsearch or PyYAML\n"
FINGERPRINT_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ProfileModel:
    name: str  # what the user passed: hub id, path or embedded name
    architecture: str  # config.model_type
    num_hidden_layers: int
    fingerprint: str  # skipsearch.engine.models.model_fingerprint of the model the profile was made for


@dataclass(frozen=True)
class DraftSettings:
    # the layer-skip drafter: the model with the skip set left out
    max_draft_tokens: int  # >= 1
    confidence_threshold: float  # in [0, 1]: stop drafting when the draft's top-1 probability is lower
    ngram: NgramSettings | None = None  # None: no n-gram drafting (version 3; see the module docstring)
    policy: PolicySettings | None = None  # None: the runtime's defaults
    # relative to one plain step, measured on metrics.device; the runtime times its own
    costs: RelativeCosts | None = None
    priors: Priors | None = None  # acceptance evidence with counts (version 3)


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
    skipsearch_profile: int = PROFILE_VERSION  # the version read; files are written as PROFILE_VERSION


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


# (what the message says is expected, the test) for a finite number
NON_NEGATIVE = ("a non-negative number", lambda v: v >= 0)
UNIT_INTERVAL = ("a number in [0, 1]", lambda v: 0 <= v <= 1)
BELOW_ONE = ("a number in [0, 1)", lambda v: 0 <= v < 1)
POSITIVE = ("a number > 0", lambda v: v > 0)
# draft keys that version 1 did not have, and those version 3 added
V2_DRAFT_KEYS = ("ngram", "policy", "costs")
V3_DRAFT_KEYS = ("priors",)
# policy keys of version 2, required there; version 3 may add the others
V2_POLICY_KEYS = ("ngram_prior", "layer_skip_prior", "prior_weight", "margin")


class _Checker:
    """Checks one loaded mapping, stopping at the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> NoReturn:
        raise SkipsearchError(f"{self.source}: {where}: {problem}" if where else f"{self.source}: {problem}")

    def expect(self, where: str, expected: str, value: Any) -> NoReturn:
        self.fail(where, f"expected {expected}, got {_describe(value)}")

    def mapping(self, value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = (),
                null_means: str = "") -> dict:
        if not isinstance(value, dict):
            expected = "a mapping with keys " + ", ".join(required + optional)
            self.expect(where or "top level", expected + (f", or null for {null_means}" if null_means else ""), value)
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

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.expect(where, "true or false", value)
        return value

    def number(self, value: Any, where: str, bounds: tuple[str, Any] = NON_NEGATIVE) -> float:
        expected, within = bounds
        if not _is_finite_number(value) or not within(value):
            self.expect(where, expected, value)
        return float(value)

    def build(self, cls, where: str, **fields: Any):
        """The dataclass, its own cross-field checks reported at `where`."""
        try:
            return cls(**fields)
        except SkipsearchError as exc:
            # the dataclasses label their messages with their own name; the field path replaces it
            self.fail(where, str(exc).split(": ", 1)[-1])

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

    def draft(self, value: Any, version: int) -> DraftSettings:
        if version == 1 and isinstance(value, dict):
            for key in V2_DRAFT_KEYS:
                if key in value:
                    self.fail(f"draft.{key}", "not part of a version 1 profile; set skipsearch_profile: 2 to use it")
        if version == 2 and isinstance(value, dict) and "priors" in value:
            self.fail("draft.priors", "not part of a version 2 profile; set skipsearch_profile: 3 to use it")
        data = self.mapping(value, "draft", ("max_draft_tokens", "confidence_threshold"),
                            (V2_DRAFT_KEYS if version >= 2 else ()) + (V3_DRAFT_KEYS if version >= 3 else ()))
        draft = DraftSettings(
            max_draft_tokens=self.integer(data["max_draft_tokens"], "draft.max_draft_tokens", 1,
                                          "an integer >= 1"),
            confidence_threshold=self.number(data["confidence_threshold"], "draft.confidence_threshold",
                                             UNIT_INTERVAL),
            ngram=self.ngram(data.get("ngram")),
            policy=self.policy(data.get("policy"), version),
            costs=self.costs(data.get("costs")),
            priors=self.priors(data.get("priors")),
        )
        if version >= 3:
            return draft
        if draft.policy is None and draft.costs is not None:
            self.fail("draft.costs", "only a policy uses costs; set draft.policy too, or set costs to null")
        if draft.policy is not None and draft.costs is None:
            self.fail("draft.costs", "required when draft.policy is set (the policy weighs its options by "
                      "these costs); give the measured costs or set policy to null")
        return draft

    def ngram(self, value: Any) -> NgramSettings | None:
        if value is None:
            return None
        data = self.mapping(value, "draft.ngram", _field_names(NgramSettings), null_means="no n-gram drafting")
        return self.build(NgramSettings, "draft.ngram", **{
            key: self.integer(data[key], f"draft.ngram.{key}", 1, "an integer >= 1") for key in data
        })

    def policy(self, value: Any, version: int) -> PolicySettings | None:
        if value is None:
            return None
        # version 2 requires its four keys; version 3 takes any of the runtime's settings
        data = self.mapping(value, "draft.policy", V2_POLICY_KEYS if version == 2 else (),
                            () if version == 2 else _field_names(PolicySettings), null_means="the runtime's defaults")
        bounds = {"ngram_prior": BELOW_ONE, "layer_skip_prior": BELOW_ONE, "prior_weight": POSITIVE,
                  "margin": POSITIVE, "discount": ("a number in (0, 1]", lambda v: 0 < v <= 1),
                  "prior_cap": POSITIVE, "explore_cost": BELOW_ONE}
        return self.build(PolicySettings, "draft.policy", **{
            key: (self.integer(data[key], f"draft.policy.{key}", 0, "an integer >= 0") if key == "seed"
                  else self.boolean(data[key], f"draft.policy.{key}") if key == "explore"
                  else self.number(data[key], f"draft.policy.{key}", bounds[key])) for key in data
        })

    def counts(self, value: Any, where: str, extra: tuple[str, ...] = ()) -> AcceptanceCounts:
        data = self.mapping(value, where, ("accepted", "rejected") + extra)
        lists = {}
        for key in ("accepted", "rejected"):
            if not isinstance(data[key], list):
                self.expect(f"{where}.{key}", "a list of counts by draft position", data[key])
            lists[key] = tuple(self.number(c, f"{where}.{key}[{i}]") for i, c in enumerate(data[key]))
        if len(lists["accepted"]) != len(lists["rejected"]):
            self.fail(where, f"accepted and rejected need one count per draft position each, got "
                      f"{len(lists['accepted'])} and {len(lists['rejected'])}")
        return AcceptanceCounts(lists["accepted"], lists["rejected"])

    def priors(self, value: Any) -> Priors | None:
        if value is None:
            return None
        data = self.mapping(value, "draft.priors", (), ("layer_skip", "ngram"), null_means="no evidence")
        layer_skip = data.get("layer_skip")
        ngram = data.get("ngram") or []
        if not isinstance(ngram, list):
            self.expect("draft.priors.ngram", "a list of {match, accepted, rejected}", ngram)
        by_match = {}
        for position, item in enumerate(ngram):
            where = f"draft.priors.ngram[{position}]"
            counts = self.counts(item, where, ("match",))
            match = self.integer(item["match"], f"{where}.match", 1, "an integer >= 1")
            if match in by_match:
                self.fail(f"{where}.match", f"match length {match} is listed twice")
            by_match[match] = counts
        return Priors(layer_skip=None if layer_skip is None else self.counts(layer_skip, "draft.priors.layer_skip"),
                      ngram=tuple(sorted(by_match.items())))

    def costs(self, value: Any) -> RelativeCosts | None:
        if value is None:
            return None
        data = self.mapping(value, "draft.costs", _field_names(RelativeCosts), null_means="no policy")
        verify = data["verify"]
        # choose() drafts at most len(verify) - 1 tokens, so one cost would never let it draft
        if not isinstance(verify, list) or len(verify) < 2:
            self.expect("draft.costs.verify", "a list of at least 2 costs (index n-1: verifying n tokens)", verify)
        costs = [self.number(cost, f"draft.costs.verify[{n}]", POSITIVE) for n, cost in enumerate(verify)]
        if costs[0] != 1:
            self.fail("draft.costs.verify[0]", f"expected 1 (costs are relative to one plain step, which is "
                      f"verifying one token), got {_describe(verify[0])}")
        return self.build(RelativeCosts, "draft.costs", verify=tuple(costs),
                          draft_step=self.number(data["draft_step"], "draft.costs.draft_step", POSITIVE))

    def metrics(self, value: Any) -> ProfileMetrics | None:
        if value is None:
            return None
        data = self.mapping(value, "metrics", (), _field_names(ProfileMetrics))
        checked = {}
        for key, item in data.items():
            if item is not None and key in ("device", "dtype"):
                item = self.text(item, f"metrics.{key}")
            elif item is not None:
                item = self.number(item, f"metrics.{key}",
                                   UNIT_INTERVAL if key in ("matchness", "acceptance_rate") else NON_NEGATIVE)
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
    task = check.text(data["task"], "task")
    skip = check.skip(data["skip"], model.num_hidden_layers)
    draft = check.draft(data["draft"], version)
    # Version 1 files with an empty skip set loaded before version 2 and still do (they draft n-grams).
    if version >= 3 and not skip and draft.ngram is None:
        check.fail("skip", "the profile drafts nothing: the skip set is empty and draft.ngram is null; "
                   "skip at least one sublayer or set draft.ngram")
    if version == 2 and not skip and draft.ngram is None:
        check.fail("skip", "the policy drafts nothing: the skip set is empty and draft.ngram is null; "
                   "skip at least one sublayer or set draft.ngram")
    if version == 2 and skip and draft.ngram is not None and draft.policy is None:
        check.fail("draft.ngram", "never used: without draft.policy the skip set drafts every round; "
                   "add a policy and its costs, or set ngram to null")
    return Profile(
        skipsearch_profile=version,
        model=model,
        task=task,
        skip=skip,
        draft=draft,
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
    """The profile as plain YAML/JSON data of version 3, keys in file order; unmeasured metrics are left out.
    What was read as version 1 or 2 is written as version 3 as the runtime reads it (`decode_fields`):
    without n-gram settings, with the default ones."""
    draft = profile.draft
    data: dict[str, Any] = {
        "skipsearch_profile": PROFILE_VERSION,
        "model": dataclasses.asdict(profile.model),
        "task": profile.task,
        "skip": {kind: list(getattr(profile.skip, kind)) for kind in SUBLAYER_KINDS},
        "draft": {"max_draft_tokens": draft.max_draft_tokens, "confidence_threshold": draft.confidence_threshold,
                  "ngram": None if draft.ngram is None else dataclasses.asdict(draft.ngram)},
    }
    if profile.skipsearch_profile < 3 and draft.ngram is None:
        data["draft"]["ngram"] = dataclasses.asdict(NgramSettings())
    if draft.policy is not None:
        data["draft"]["policy"] = dataclasses.asdict(draft.policy)
    if draft.costs is not None:
        data["draft"]["costs"] = {"verify": list(draft.costs.verify), "draft_step": draft.costs.draft_step}
    if draft.priors is not None:
        data["draft"]["priors"] = priors_to_dict(draft.priors)
    if profile.metrics is not None:
        data["metrics"] = {k: v for k, v in dataclasses.asdict(profile.metrics).items() if v is not None}
    if profile.provenance:
        data["provenance"] = {k: list(v) if isinstance(v, (list, tuple)) else v
                              for k, v in profile.provenance.items()}
    return data


def priors_to_dict(priors: Priors) -> dict[str, Any]:
    def counts(c: AcceptanceCounts) -> dict[str, list]:
        return {"accepted": [_count(v) for v in c.accepted], "rejected": [_count(v) for v in c.rejected]}

    return {"layer_skip": None if priors.layer_skip is None else counts(priors.layer_skip),
            "ngram": [{"match": n, **counts(c)} for n, c in priors.ngram]}


def _count(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(float(value), 3)


class _ProfileDumper(yaml.SafeDumper):
    """Block mappings, flow lists (`[5, 6, 7]`), readable non-ASCII text."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # PyYAML writes these line breaks raw inside single quotes, and reads them back as spaces.
    style = '"' if any(ch in data for ch in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_ProfileDumper.add_representer(str, _represent_str)
# lists of scalars in flow style; lists of mappings (the n-gram priors) one item a block
_ProfileDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                         flow_style=not any(isinstance(i, dict) for i in data))
)


def dump_profile(profile: Profile) -> str:
    """The profile as YAML text; refuses (SkipsearchError) a profile the loader would refuse."""
    # Writing the checked copy keeps numpy numbers and tuples out of the YAML.
    data = profile_to_dict(parse_profile(profile_to_dict(profile), source="profile to write"))
    body = yaml.dump(data, Dumper=_ProfileDumper, sort_keys=False, allow_unicode=True)
    return HEADER + body


def save_profile(profile: Profile, path: str | os.PathLike) -> None:
    """Write the profile atomically: readers see the old file or the new one, never a partial one."""
    write_atomic(path, dump_profile(profile), what="profile")


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


def decode_fields(profile: Profile, costs: str = "here") -> dict[str, Any]:
    """The profile as `decoding.DecodeSettings` fields: `max_draft_tokens`, `confidence_threshold`,
    `ngram`, `policy`, `priors` and `costs` — "here" (the runtime times this device's) or
    "profile" (those stored, where the search ran; a profile without them is refused). Every
    runtime that decodes with a profile reads it through this one function.

    A version 1 or 2 profile without n-gram settings drafts n-grams with the defaults: its null
    was the search's choice on a few prompts, not the user's."""
    draft = profile.draft
    ngram = draft.ngram
    if ngram is None and profile.skipsearch_profile < 3:
        ngram = NgramSettings()
    if costs == "profile":
        if draft.costs is None:
            raise SkipsearchError("the profile stores no costs to decide with; use this device's (policy costs "
                                  "'here')")
        chosen: Any = draft.costs
    elif costs == "here":
        chosen = "here"
    else:
        raise SkipsearchError(f'policy_costs: expected "here" or "profile", got {costs!r}')
    return {"max_draft_tokens": draft.max_draft_tokens, "confidence_threshold": draft.confidence_threshold,
            "ngram": ngram, "policy": draft.policy or PolicySettings(), "priors": draft.priors, "costs": chosen}


def decode_settings_for(profile: Profile, policy_costs: str = "here", **overrides: Any) -> DecodeSettings:
    """The decoder's settings for a profile (`decode_fields`), with `overrides` (e.g. max_new_tokens)."""
    return DecodeSettings(**{**decode_fields(profile, policy_costs), **overrides})


def profile_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of profile versions 1-3, shipped as skipsearch/config/profile.schema.json."""
    return json.loads(resources.files("skipsearch.config").joinpath("profile.schema.json").read_text(encoding="utf-8"))
