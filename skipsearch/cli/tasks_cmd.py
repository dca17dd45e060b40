"""`skipsearch tasks`: the built-in tasks and how to point each at data; with a task name,
a summary of its prompts (count per category, the first prompt)."""

from __future__ import annotations

from skipsearch.search.tasks import TASK_SOURCES, load_task


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tasks",
        help="list the built-in tasks, or summarise one task's prompts",
        description="Without arguments: list the built-in tasks. With a task name and its options: "
        "load it (no model needed) and show how many prompts each category has.",
    )
    parser.add_argument("source", nargs="?", help="a task to summarise: " + ", ".join(TASK_SOURCES))
    parser.add_argument("--data", metavar="FILE", help="data file (specbench, datasets) or hub dataset name (datasets)")
    parser.add_argument("--category", metavar="NAME", help="keep only prompts of this category")
    parser.add_argument("--field", metavar="COLUMN", help="the text column (datasets)")
    parser.add_argument("--split", metavar="NAME", help="the dataset split (datasets; default train)")
    parser.add_argument("--category-field", metavar="COLUMN", help="the category column (datasets; default category)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.source is None:
        for source in TASK_SOURCES.values():
            print(f"{source.name}\n  {source.description}\n  usage: {source.usage}")
        print("In a study file these options are task.data, task.category, task.field, task.split, "
              "task.category_field.")
        return 0
    task = load_task(
        args.source,
        data=args.data,
        category=args.category,
        field=args.field,
        split=args.split,
        category_field=args.category_field,
    )
    print(f"{task.name}: {len(task.prompts)} prompts")
    for category, count in task.categories.items():
        print(f"  {category}: {count}")
    first = task.prompts[0]
    preview = first.text if len(first.text) <= 300 else first.text[:300] + "…"
    print(f"first prompt ({first.id}):\n{preview}")
    return 0
