"""Study configs: the dataclasses below *are* the schema of `studies/*.yaml`.

Each YAML key equals a field name; each field's rule (type, bounds, choices) is declared
next to it, and its doc is the comment right under it. `parse_study` checks every value and
reports all problems at once, one per line; only `SkipsearchError` ever leaves this module
for bad input. Checks that need a model (the skip budget's upper bound) or data files live
where those are known: `resolve_skip_budget` here, task loading in `tasks`.

This module knows nothing about models, prompts, scoring or Optuna beyond names and URLs;
the model options' choices and rules come from `models`, which loads with them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from skipsearch.engine.drafting import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_MAX_DRAFT_TOKENS
from skipsearch.engine.models import (
    ATTN_IMPLEMENTATIONS,
    DEVICE_MAP_EXPECTED,
    DTYPE_CHOICES,
    check_placement,
    is_device_map,
)
from skipsearch.errors import SkipsearchError

OBJECTIVES = ("matchness", "speedup", "pareto")
SAMPLERS = ("tpe", "gp", "nsga2", "random")
# whose KV cache a draft reads: the full model's (skipsearch's runtime, custom_generate) or its own
# (an engine's draft model from `skipsearch export-draft`)
DRAFT_CACHES = ("shared", "own")
TASK_SOURCES = ("humaneval", "specbench", "datasets")
NAME_PATTERN = r"[A-Za-z0-9_.-]+"
DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"
MAX_SEED = 2**32 - 1  # numpy-seeded samplers refuse larger seeds
JOURNAL_SUFFIX = ".log"  # a storage that is a file path ending so is an Optuna journal file


@dataclass(frozen=True)
class _Rule:
    expected: str  # what a valid value looks like, for "expected …, got X"
    accept: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda value: value
    choices: tuple[str, ...] = ()  # for "did you mean" on enum values


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _int(minimum: int, maximum: int | None = None) -> _Rule:
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    return _Rule(expected, lambda v: _is_int(v) and v >= minimum and (maximum is None or v <= maximum))


def _choice(options: tuple[str, ...]) -> _Rule:
    return _Rule(f"one of {' | '.join(options)}", lambda v: isinstance(v, str) and v in options, choices=options)


def _optional_choice(options: tuple[str, ...]) -> _Rule:
    return _Rule(f"null or one of {' | '.join(options)}", lambda v: v is None or (isinstance(v, str) and v in options),
                 choices=options)


def _pattern(pattern: str, expected: str) -> _Rule:
    return _Rule(expected, lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None)


def _text(expected: str = "a non-empty string") -> _Rule:
    return _Rule(expected, lambda v: isinstance(v, str) and v.strip() != "")


def _optional_text(expected: str = "a non-empty string or null", must_contain: str = "") -> _Rule:
    return _Rule(expected, lambda v: v is None or (isinstance(v, str) and v.strip() != "" and must_contain in v))


def _is_storage(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() != ""
                             and ("://" in value or value.endswith(JOURNAL_SUFFIX)))


def _is_skip_budget(value: Any) -> bool:
    if _is_int(value):
        return value >= 1
    return isinstance(value, float) and 0.0 < value < 1.0


SKIP_BUDGET_EXPECTED = "a fraction in (0, 1) of the eligible sublayers or an integer count >= 1"
BOOL = _Rule("true or false", lambda v: isinstance(v, bool))
PROBABILITY = _Rule("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1, convert=float)
SKIP_BUDGET = _Rule(SKIP_BUDGET_EXPECTED, _is_skip_budget)
DEVICE_MAP = _Rule(DEVICE_MAP_EXPECTED, is_device_map, convert=lambda v: dict(v) if isinstance(v, Mapping) else v)
PATHS = _Rule(
    "a list of file paths",
    lambda v: v is None or (isinstance(v, list) and all(isinstance(p, str) and p.strip() for p in v)),
    convert=lambda v: tuple(v or ()),
)


def _f(default: Any, rule: _Rule) -> Any:
    return field(default=default, metadata={"rule": rule})


def _section(cls: type) -> Any:
    return field(default_factory=cls, metadata={"section": cls})


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("smollm2-135m", _text("a model name: embedded name, hub id, folder or .gguf"))
    # embedded name (see `skipsearch models`), Hugging Face hub id, local folder or .gguf file
    dtype: str = _f("auto", _choice(DTYPE_CHOICES))
    # weights' dtype while searching; auto = bfloat16 on a CUDA GPU that supports it, else
    # float16 on CUDA, float32 on CPU
    device: str = _f("auto", _pattern(DEVICE_PATTERN, "auto | cpu | cuda | cuda:N"))
    # auto = cuda when available, else cpu
    device_map: str | dict | None = _f(None, DEVICE_MAP)
    # null = the whole model on `device`; auto, balanced, balanced_low_0 or sequential = accelerate
    # spreads it over the GPUs (and CPU and disk when they are full); or a mapping of module name
    # (model.layers.0, lm_head, "" for the rest) to device; needs device auto
    attn_implementation: str | None = _f(None, _optional_choice(ATTN_IMPLEMENTATIONS))
    # null = transformers' default (sdpa where it can)


@dataclass(frozen=True)
class TaskConfig:
    source: str = _f("humaneval", _choice(TASK_SOURCES))
    # a built-in task (see `skipsearch tasks`)
    data: str | None = _f(None, _optional_text())
    # a file (specbench, datasets) or a hub dataset name (datasets); relative to the current directory
    category: str | None = _f(None, _optional_text())
    # keep only prompts of this category (specbench, datasets)
    category_field: str | None = _f(None, _optional_text())
    # the column holding categories (datasets; default "category")
    field: str | None = _f(None, _optional_text())
    # the text column (datasets; default: the first of prompt, question, instruction, input, text, turns)
    split: str | None = _f(None, _optional_text())
    # the dataset split (datasets; default "train")
    search_prompts: int = _f(8, _int(1))
    # prompts the search scores each candidate on
    heldout_prompts: int = _f(4, _int(1))
    # other prompts, for re-scoring the best candidates and the profile's metrics
    reference_tokens: int = _f(48, _int(1))
    # tokens of the full model's greedy continuation scored per prompt
    chat_template: bool = _f(True, BOOL)
    # wrap each prompt in the tokenizer's chat template when it has one


@dataclass(frozen=True)
class SearchConfig:
    objective: str = _f("speedup", _choice(OBJECTIVES))
    # matchness = share of positions the draft predicts right; speedup = predicted speedup
    # from matchness and measured sublayer costs; pareto = both matchness and cost
    sampler: str = _f("tpe", _choice(SAMPLERS))
    # the Optuna sampler
    trials: int = _f(100, _int(1))
    # candidates evaluated (in total, when several processes share the study)
    skip_budget: float | int = _f(0.2, SKIP_BUDGET)
    # how many sublayers a candidate skips: a fraction of the eligible ones, or a count
    seed: int = _f(0, _int(0, MAX_SEED))
    # seeds the sampler and the prompt split
    keep_first: int = _f(1, _int(0))
    # decoder layers at the bottom that are never skipped
    keep_last: int = _f(1, _int(0))
    # decoder layers at the top that are never skipped
    warm_start: tuple[str, ...] = _f((), PATHS)
    # profile files whose skip sets are evaluated first
    draft_cache: str = _f("shared", _choice(DRAFT_CACHES))
    # shared: score drafts as skipsearch's runtime runs them, on the full model's KV cache; own:
    # as an engine runs the exported draft model (`skipsearch export-draft`), on a cache of its own
    rescore_top: int = _f(3, _int(1))
    # best candidates re-scored by the real self-speculative decoder on held-out prompts
    heartbeat_interval: int = _f(10, _int(1))
    # seconds between heartbeats of a running trial; a trial silent for 3 intervals (its worker
    # was killed or lost) is failed and run again by another worker


@dataclass(frozen=True)
class DraftConfig:
    max_draft_tokens: int = _f(DEFAULT_MAX_DRAFT_TOKENS, _int(1))
    # most tokens drafted before the full model verifies; the search picks the best length up to it
    confidence_threshold: float = _f(DEFAULT_CONFIDENCE_THRESHOLD, PROBABILITY)
    # stop drafting when the draft's top-1 probability falls below this; the search tries it
    # beside 0, 0.3, 0.5, 0.7, 0.8 and 0.9 and keeps the best for each skip set


@dataclass(frozen=True)
class OutputConfig:
    profile: str | None = _f(None, _optional_text())
    # null = reports/<name>.profile.yaml (relative to the current directory)
    report: str | None = _f(None, _optional_text())
    # null = reports/<name>.html


@dataclass(frozen=True)
class StudyConfig:
    name: str = _f(None, _pattern(NAME_PATTERN, f"a study name matching {NAME_PATTERN}"))
    # the Optuna study name; defaults to the file's name without .yaml
    model: ModelConfig = _section(ModelConfig)
    task: TaskConfig = _section(TaskConfig)
    search: SearchConfig = _section(SearchConfig)
    draft: DraftConfig = _section(DraftConfig)
    storage: str | None = _f(None, _Rule("a storage: sqlite:///FILE.db, postgresql://USER:PASSWORD@HOST:PORT/DB, "
                                         f"a journal file ending in {JOURNAL_SUFFIX}, or null", _is_storage))
    # null = a SQLite file next to the study file: <study dir>/<name>.db; a journal file path is
    # relative to the current directory
    output: OutputConfig = _section(OutputConfig)


# ---------------------------------------------------------------------------- parsing

_show = reprlib.Repr()
_show.maxstring, _show.maxother, _show.maxlist, _show.maxdict, _show.maxlevel = 60, 60, 4, 4, 2


def _keys_hint(key: Any, known: list[str]) -> str:
    hint = difflib.get_close_matches(key, known, n=1) if isinstance(key, str) else []
    did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
    return f"{did_you_mean}valid keys: {', '.join(known)}"


def _parse_section(cls: type, data: Any, path: str, errors: list[str]) -> Any:
    """An instance of `cls` from a mapping, appending one message per problem to `errors`."""
    known = [f.name for f in dataclasses.fields(cls)]
    if data is None and path:
        data = {}  # an empty section (`draft:`) means all defaults
    if not isinstance(data, Mapping):
        errors.append(f"{path or 'top level'}: expected a mapping with keys {', '.join(known)}, got {_show.repr(data)}")
        return None
    count = len(errors)
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in known:
            errors.append(f"{prefix}{_show.repr(key) if not isinstance(key, str) else key}: unknown key; "
                          f"{_keys_hint(key, known)}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if "section" in f.metadata:
            values[f.name] = _parse_section(f.metadata["section"], value, prefix + f.name, errors)
            continue
        rule: _Rule = f.metadata["rule"]
        if rule.accept(value):
            values[f.name] = rule.convert(value)
            continue
        hint = difflib.get_close_matches(value, rule.choices, n=1) if rule.choices and isinstance(value, str) else []
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        errors.append(f"{prefix}{f.name}: expected {rule.expected}, got {_show.repr(value)}{did_you_mean}")
    if len(errors) > count:
        return None
    if cls is StudyConfig and "name" not in values:
        errors.append(f"name: required, {dataclasses.fields(cls)[0].metadata['rule'].expected}")
        return None
    return cls(**values)


def _check_model(model: ModelConfig, errors: list[str]) -> None:
    """Options that exclude each other."""
    try:
        check_placement(model.device, model.device_map)
    except SkipsearchError as exc:
        errors.append(f"model.device_map: {exc}")


def _check_task(task: TaskConfig, errors: list[str]) -> None:
    """Options that only some task sources take."""
    if task.source in ("specbench", "datasets") and task.data is None:
        what = "a Spec-Bench .jsonl file" if task.source == "specbench" else "a hub dataset name or a local file"
        errors.append(f"task.data: source {task.source} needs {what}, got null")
    takes = {"humaneval": ("data",), "specbench": ("data", "category")}
    for option in ("category", "category_field", "field", "split"):
        if option not in takes.get(task.source, (option,)) and getattr(task, option) is not None:
            users = [source for source in TASK_SOURCES if option in takes.get(source, (option,))]
            errors.append(f"task.{option}: source {task.source} does not take {option} (used by {', '.join(users)}), "
                          f"got {_show.repr(getattr(task, option))}")


def parse_study(data: Any, source: str) -> StudyConfig:
    """A validated StudyConfig from parsed YAML, or one SkipsearchError listing every problem
    (one line when there is one).

    `source` names the file in messages; its stem is the study name when `name` is absent.
    """
    errors: list[str] = []
    if isinstance(data, Mapping) and "name" not in data:
        stem = Path(source).stem
        if re.fullmatch(NAME_PATTERN, stem):
            data = {"name": stem, **data}
    cfg = _parse_section(StudyConfig, data, "", errors)
    if cfg is not None:
        _check_model(cfg.model, errors)
        _check_task(cfg.task, errors)
    if len(errors) == 1:
        raise SkipsearchError(f"{source}: {errors[0]}")
    if errors:
        lines = [f"{len(errors)} problems in {source}:"] + [f"{source}: {error}" for error in errors]
        raise SkipsearchError("\n".join(lines))
    return cfg


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file (YAML, read with yaml.safe_load)."""
    path = Path(path)
    if not path.exists():
        raise SkipsearchError(f"study file {path} does not exist")
    if not path.is_file():
        raise SkipsearchError(f"study file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SkipsearchError(f"cannot read study file {path}: {exc}") from exc
    return parse_study(_load_yaml(text, str(path)), str(path))


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise SkipsearchError(f"{source}: {where}not valid YAML: {problem}") from exc
    except RecursionError as exc:
        raise SkipsearchError(f"{source}: not valid YAML: nested too deeply") from exc
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # e.g. an impossible date like 2024-13-45, or nesting deeper than the parser's stack
        raise SkipsearchError(f"{source}: not valid YAML: {type(exc).__name__}: {str(exc)[:120]}") from exc


def study_to_dict(cfg: StudyConfig) -> dict:
    """Plain YAML-ready data; `parse_study(study_to_dict(cfg), …) == cfg`."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    return plain(dataclasses.asdict(cfg))


def apply_overrides(
    cfg: StudyConfig,
    *,
    trials: Any = None,
    sampler: Any = None,
    objective: Any = None,
    skip_budget: Any = None,
    storage: Any = None,
    seed: Any = None,
    draft_cache: Any = None,
    data: Any = None,
    category: Any = None,
    heldout_prompts: Any = None,
    output_profile: Any = None,
    dtype: Any = None,
    device: Any = None,
    device_map: Any = None,
    attn_implementation: Any = None,
) -> StudyConfig:
    """The study with command-line values (None = not given) replaced, validated again."""
    search_changes = {"trials": trials, "sampler": sampler, "objective": objective, "skip_budget": skip_budget,
                      "seed": seed, "draft_cache": draft_cache}
    task_changes = {"data": data, "category": category, "heldout_prompts": heldout_prompts}
    model_changes = {"dtype": dtype, "device": device, "device_map": device_map,
                     "attn_implementation": attn_implementation}
    search_changes = {k: v for k, v in search_changes.items() if v is not None}
    task_changes = {k: v for k, v in task_changes.items() if v is not None}
    model_changes = {k: v for k, v in model_changes.items() if v is not None}
    changed = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, **model_changes),
        search=dataclasses.replace(cfg.search, **search_changes),
        task=dataclasses.replace(cfg.task, **task_changes),
        storage=cfg.storage if storage is None else storage,
        output=cfg.output if output_profile is None else dataclasses.replace(cfg.output, profile=output_profile),
    )
    return parse_study(study_to_dict(changed), f"study {cfg.name} with command-line overrides")


def parse_skip_budget(text: str) -> float | int:
    """A command-line skip budget: "0.3" is a fraction, "11" a count."""
    try:
        value: float | int = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise SkipsearchError(f"--skip-budget: expected {SKIP_BUDGET_EXPECTED}, got {text!r}") from None
    if not _is_skip_budget(value):
        raise SkipsearchError(f"--skip-budget: expected {SKIP_BUDGET_EXPECTED}, got {text!r}")
    return value


# ---------------------------------------------------------------------------- derived values


def resolve_skip_budget(budget: float | int, n_eligible: int) -> int:
    """The number of sublayers to skip: int(fraction × eligible), at least 1; or the count itself."""
    if not _is_int(n_eligible) or n_eligible < 1:
        raise SkipsearchError(f"the model has {n_eligible} eligible sublayers; lower keep_first/keep_last")
    if not _is_skip_budget(budget):
        raise SkipsearchError(f"search.skip_budget: expected {SKIP_BUDGET_EXPECTED}, got {budget!r}")
    if _is_int(budget):
        if budget > n_eligible:
            raise SkipsearchError(
                f"search.skip_budget: {budget} sublayers is more than the {n_eligible} eligible ones; "
                f"use at most {n_eligible} or a fraction"
            )
        return budget
    return max(1, int(budget * n_eligible))


def default_storage_url(cfg: StudyConfig, study_path: str | Path) -> str:
    """`storage`, else a SQLite file next to the study file: sqlite:///<abs dir>/<name>.db."""
    if cfg.storage is not None:
        return cfg.storage
    return f"sqlite:///{Path(study_path).resolve().parent / (cfg.name + '.db')}"


def output_paths(cfg: StudyConfig) -> tuple[Path, Path]:
    """(profile, report) paths; the defaults are under reports/ of the current directory."""
    profile = Path(cfg.output.profile) if cfg.output.profile else Path("reports") / f"{cfg.name}.profile.yaml"
    report = Path(cfg.output.report) if cfg.output.report else Path("reports") / f"{cfg.name}.html"
    return profile, report
