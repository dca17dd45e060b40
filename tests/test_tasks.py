"""Tasks: built-in sources on files the tests write, errors, the prompt split and formatting."""

from __future__ import annotations

import json

import pytest

from skipsearch.errors import SkipsearchError
from skipsearch.search.tasks import (
    HUMANEVAL_INSTRUCTION,
    TASK_SOURCES,
    Prompt,
    Task,
    check_prompt_fits,
    format_prompt,
    load_task,
    split_prompts,
)

from conftest import make_tokenizer

SPECBENCH_RECORDS = [
    {"question_id": 1, "category": "summarization", "turns": ["Summarise this text.", "Shorter."]},
    {"question_id": 2, "category": "math_reasoning", "turns": ["What is 2 + 2?"]},
    {"question_id": 3, "category": "summarization", "turns": ["Summarise that text."]},
]
ROWS = {"question": ["one", "two", "three"], "topic": ["a", "b", "a"], "n": [1, 2, 3]}


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def specbench_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "question.jsonl", SPECBENCH_RECORDS)


# ---------------------------------------------------------------------------- sources


def test_every_source_is_named_and_described():
    assert list(TASK_SOURCES) == ["humaneval", "specbench", "datasets"]
    assert all(source.name == name and source.description and source.usage for name, source in TASK_SOURCES.items())


def test_humaneval_loads_164_prompts():
    task = load_task("humaneval")
    assert task.name == "humaneval" and len(task.prompts) == 164
    first = task.prompts[0]
    assert first.id == "HumanEval/0" and first.category is None
    assert first.text.startswith("Complete the following Python function:\n\n```python\n")
    assert first.text.endswith("```") and "def has_close_elements" in first.text
    assert len({p.id for p in task.prompts}) == 164


def test_humaneval_reads_another_file_in_its_format(tmp_path):
    path = write_jsonl(tmp_path / "he.jsonl", [{"task_id": "X/0", "prompt": "def f():\n"}])
    task = load_task("humaneval", data=path)
    assert task.prompts == [Prompt("X/0", HUMANEVAL_INSTRUCTION.format(prompt="def f():\n"))]


def test_specbench_uses_first_turn_and_filters_category(specbench_file):
    task = load_task("specbench", data=specbench_file)
    assert [p.id for p in task.prompts] == ["1", "2", "3"]
    assert task.prompts[0].text == "Summarise this text."
    assert task.categories == {"math_reasoning": 1, "summarization": 2}
    summaries = load_task("specbench", data=specbench_file, category="summarization")
    assert summaries.name == "specbench/summarization"
    assert [p.id for p in summaries.prompts] == ["1", "3"]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_datasets_reads_local_files_with_a_named_field(tmp_path, suffix):
    import datasets

    path = tmp_path / f"rows.{suffix}"
    table = datasets.Dataset.from_dict(ROWS)
    {"jsonl": table.to_json, "csv": table.to_csv, "parquet": table.to_parquet}[suffix](str(path))
    task = load_task("datasets", data=str(path), field="question")
    assert [p.text for p in task.prompts] == ["one", "two", "three"]
    assert task.name == "rows"
    only_a = load_task("datasets", data=str(path), field="question", category="a", category_field="topic")
    assert [(p.text, p.category) for p in only_a.prompts] == [("one", "a"), ("three", "a")]


def test_datasets_guesses_the_text_column_and_takes_first_turn(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"turns": ["hi", "again"]}, {"turns": ["yo"]}])
    assert [p.text for p in load_task("datasets", data=path).prompts] == ["hi", "yo"]


# ---------------------------------------------------------------------------- errors


def test_unknown_task_suggests_and_lists_known():
    with pytest.raises(SkipsearchError, match=r"unknown task 'humaneva'; did you mean 'humaneval'\? "
                                              r"known tasks: humaneval, specbench, datasets"):
        load_task("humaneva")


def test_missing_data_file(tmp_path):
    with pytest.raises(SkipsearchError, match="does not exist"):
        load_task("specbench", data=str(tmp_path / "nope.jsonl"))
    with pytest.raises(SkipsearchError, match="does not exist"):
        load_task("datasets", data=str(tmp_path / "nope.csv"))
    with pytest.raises(SkipsearchError, match="needs a data file"):
        load_task("specbench")


def test_empty_file_is_an_empty_task(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SkipsearchError, match="task specbench has no prompts"):
        load_task("specbench", data=str(empty))


def test_missing_category_lists_existing_ones(specbench_file):
    with pytest.raises(SkipsearchError) as info:
        load_task("specbench", data=specbench_file, category="coding")
    message = str(info.value)
    assert "'coding'" in message and "math_reasoning, summarization" in message and "\n" not in message


def test_missing_field_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(SkipsearchError, match=r"field 'prompt' is not a column .*columns: question, answer"):
        load_task("datasets", data=path, field="prompt")
    no_guess = write_jsonl(tmp_path / "other.jsonl", [{"body": "q"}])
    with pytest.raises(SkipsearchError, match=r"--field \(columns: body\)"):
        load_task("datasets", data=no_guess)


def test_records_without_turns_name_the_line(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [SPECBENCH_RECORDS[0], {"question_id": 9, "prompt": "x"}])
    with pytest.raises(SkipsearchError, match=r"q\.jsonl:2: a Spec-Bench record needs 'turns'"):
        load_task("specbench", data=path)


def test_bad_json_and_options_a_source_does_not_take(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"turns": ["a"]}\nnot json\n')
    with pytest.raises(SkipsearchError, match=r"bad\.jsonl:2: not valid JSON"):
        load_task("specbench", data=str(path))
    with pytest.raises(SkipsearchError, match="task humaneval does not take category"):
        load_task("humaneval", category="x")


def test_datasets_unknown_split_is_wrapped(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "q"}])
    with pytest.raises(SkipsearchError, match=r"cannot load dataset .*split 'test'"):
        load_task("datasets", data=path, split="test")


# ---------------------------------------------------------------------------- split


def make_task(n: int) -> Task:
    return Task("t", [Prompt(str(i), f"prompt {i}") for i in range(n)])


def test_split_is_seeded_and_disjoint():
    task = make_task(50)
    search, heldout = split_prompts(task, 8, 4, seed=0)
    assert (search, heldout) == split_prompts(task, 8, 4, seed=0)
    assert (search, heldout) != split_prompts(task, 8, 4, seed=1)
    assert len(search) == 8 and len(heldout) == 4
    assert not {p.id for p in search} & {p.id for p in heldout}
    # Held-out prompts do not depend on how many search prompts are asked for.
    bigger_search, same_heldout = split_prompts(task, 12, 4, seed=0)
    assert same_heldout == heldout and bigger_search[:8] == search


def test_split_does_not_touch_global_rng():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    split_prompts(make_task(20), 5, 5, seed=7)
    assert random.random() == expected


def test_split_too_small_says_how_many():
    with pytest.raises(SkipsearchError, match="task t has 5 prompts, fewer than the 4 search \\+ 2 held-out"):
        split_prompts(make_task(5), 4, 2, seed=0)


# ---------------------------------------------------------------------------- tokens


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def test_format_prompt_plain_encode_adds_bos():
    tokenizer = make_tokenizer()
    assert format_prompt(tokenizer, "hello world") == [1, 7, 8]
    assert format_prompt(make_tokenizer(CHAT_TEMPLATE), "hello world", use_chat_template=False) == [1, 7, 8]


def test_format_prompt_applies_chat_template():
    ids = format_prompt(make_tokenizer(CHAT_TEMPLATE), "hello world")
    # <|im_start|> user hello world <|im_end|> <|im_start|> assistant; no BOS added twice
    assert ids == [3, 5, 7, 8, 4, 3, 6]


def test_check_prompt_fits():
    check_prompt_fits([1] * 10, 20, 10, "p1")
    check_prompt_fits([1] * 10, None, 10_000, "p1")
    with pytest.raises(SkipsearchError,
                       match="prompt p1 has 10 tokens; with 11 new tokens that is 21, more than the model's 20"):
        check_prompt_fits([1] * 10, 20, 11, "p1")


@pytest.mark.integration
def test_smollm_chat_template_is_applied(smollm):
    tokenizer = smollm.tokenizer
    ids = format_prompt(tokenizer, "Say hello.")
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids).rstrip().endswith("<|im_start|>assistant")
    check_prompt_fits(ids, smollm.model.config.max_position_embeddings, 48, "hello")
