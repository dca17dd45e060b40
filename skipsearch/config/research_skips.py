"""Skip sets in the form the research code keeps them: the `skip_layers.json` of SWIFT and Self-SD.

Read in both repositories (2026-12-04):
- SWIFT (github.com/hemingkx/SWIFT): `skip_layers.json` and `model/swift/utils.py`
  (`get_cache_configuration`) — entries named `f"{model_name}_{task_name}"` ("llama-2-13b_cnndm"),
  each `{"attention": [...], "mlp": [...]}`; the two lists go to `model.set_skip_layers`.
- Self-SD (github.com/dilab-zju/self-speculative-decoding): `skip_layers.json`, `searching.py`
  (`get_solution`) and `modeling_llama.py` (`set_skip_layers(attn_skip_layer_id_set=...,
  mlp_skip_layer_id_set=...)`) — entries named by model ("llama-2-13b"), the same two keys.

Both count decoder layers from 0, as skipsearch does, so the formats differ only in how an entry is
named. A file holds named entries; a bare `{"attention": [...], "mlp": [...]}` is read as one entry
named after the file. `read_skip_entries` checks a file and reports the first problem as one line;
`imported_profile` makes a version 3 profile of one entry for a loaded model; `render_skip_file`
writes a profile's skip set as an entry, added to (or replacing the same name in) an existing file.

This module knows nothing about searching or decoding, and nothing of the research code is used.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch

from skipsearch.config.profiles import DraftSettings, Profile, ProfileModel
from skipsearch.engine.drafting import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_MAX_DRAFT_TOKENS
from skipsearch.engine.models import model_fingerprint
from skipsearch.engine.skipping import SUBLAYER_KINDS, SkipSet
from skipsearch.errors import SkipsearchError
from skipsearch.version import __version__

FORMATS = ("swift", "selfsd")


def _entry(value: Any, source: str, name: str) -> SkipSet:
    where = f"{source}: entry {name!r}"
    if not isinstance(value, dict):
        raise SkipsearchError(f"{where}: expected a mapping with keys attention and mlp, got {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in SUBLAYER_KINDS)
    if unknown:
        raise SkipsearchError(f"{where}: unknown keys {unknown} (valid: attention, mlp)")
    missing = [kind for kind in SUBLAYER_KINDS if kind not in value]
    if missing:
        raise SkipsearchError(f"{where}: missing {' and '.join(missing)} "
                              "(both lists are required, as SWIFT reads them)")
    for kind in SUBLAYER_KINDS:
        ids = value[kind]
        if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise SkipsearchError(f"{where}: {kind} must be a list of integer layer ids, got {json.dumps(ids)[:60]}")
    try:
        return SkipSet(attention=tuple(value["attention"]), mlp=tuple(value["mlp"]))
    except SkipsearchError as exc:
        raise SkipsearchError(f"{where}: {exc}") from None


def read_skip_entries(text: str, source: str) -> dict[str, SkipSet]:
    """The entries of a research skip file, by name, in file order."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SkipsearchError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                              f"column {exc.colno})") from None
    if not isinstance(data, dict) or not data:
        raise SkipsearchError(f"{source}: expected a JSON object of entries, "
                              'each {"attention": [...], "mlp": [...]}')
    if set(data) & set(SUBLAYER_KINDS):  # one bare entry
        return {Path(source).stem: _entry(data, source, Path(source).stem)}
    return {str(name): _entry(value, source, str(name)) for name, value in data.items()}


def choose_entry(entries: dict[str, SkipSet], name: str | None, source: str) -> tuple[str, SkipSet]:
    if name is None:
        if len(entries) > 1:
            raise SkipsearchError(f"{source} holds {len(entries)} entries; choose one with --entry "
                                  f"({', '.join(entries)})")
        name = next(iter(entries))
    if name not in entries:
        raise SkipsearchError(f"{source} has no entry {name!r} (entries: {', '.join(entries)})")
    return name, entries[name]


def task_of_entry(name: str) -> str:
    """SWIFT names an entry `{model}_{task}`: the part after the last underscore; else the whole name."""
    return name.rsplit("_", 1)[-1] or name


def imported_profile(skip: SkipSet, model: torch.nn.Module, model_name: str, task: str, source: str,
                     entry: str) -> Profile:
    """A version 3 profile for `model` with the research skip set. It drafts as the research code did:
    layer skip only, no n-grams, with the engine's default draft length and confidence stop."""
    num_layers = model.config.num_hidden_layers
    try:
        skip.check_against(num_layers)
    except SkipsearchError as exc:
        raise SkipsearchError(f"{source}: entry {entry!r}: {exc}; was it searched on another model?") from None
    if not skip:
        raise SkipsearchError(f"{source}: entry {entry!r} skips no sublayer; there is nothing to draft with")
    return Profile(
        model=ProfileModel(name=model_name, architecture=model.config.model_type, num_hidden_layers=num_layers,
                           fingerprint=model_fingerprint(model)),
        task=task,
        skip=skip,
        draft=DraftSettings(max_draft_tokens=DEFAULT_MAX_DRAFT_TOKENS,
                            confidence_threshold=DEFAULT_CONFIDENCE_THRESHOLD, ngram=None),
        provenance={
            "tool_version": __version__,
            "imported_from": Path(source).name,
            "entry": entry,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )


def entry_name(profile: Profile, fmt: str) -> str:
    """SWIFT's `{model}_{task}` or Self-SD's `{model}`, the model named by the last part of its name or path."""
    if fmt not in FORMATS:
        raise SkipsearchError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    model = Path(profile.model.name.rstrip("/")).name or profile.model.name
    return f"{model}_{profile.task}" if fmt == "swift" else model


def render_skip_file(profile: Profile, fmt: str, existing: str | None = None, source: str = "") -> str:
    """The profile's skip set as a research skip file; with `existing` (the text of a file there already),
    its other entries are kept and an entry of the same name is replaced."""
    if not profile.skip:
        raise SkipsearchError("the profile skips no sublayer (it drafts n-grams only); there is no skip set to export")
    entries = read_skip_entries(existing, source) if existing is not None else {}
    entries[entry_name(profile, fmt)] = profile.skip
    # one entry per block with its lists on one line, as both repositories lay their files out
    blocks = [f"  {json.dumps(name)}: {{\n    \"attention\": {json.dumps(list(skip.attention))},\n"
              f"    \"mlp\": {json.dumps(list(skip.mlp))}\n  }}" for name, skip in entries.items()]
    return "{\n" + ",\n".join(blocks) + "\n}\n"
