"""`skipsearch validate`: check study files without loading a model.

Prints `OK: path` per valid file; otherwise every problem of every file (a config's
problems are collected into one multi-line message) and exit code 2. With `--tasks` it also
loads each study's prompts (reads data files; hub datasets need the network) and checks
there are enough for the search and held-out prompts.
"""

from __future__ import annotations

import sys

from skipsearch.config.studies import load_study
from skipsearch.errors import SkipsearchError
from skipsearch.search.tasks import load_task, split_prompts


def register(subparsers) -> None:
    parser = subparsers.add_parser("validate", help="check study files without loading a model")
    parser.add_argument("studies", nargs="+", metavar="STUDY.yaml", help="study files to check")
    parser.add_argument(
        "--tasks", action="store_true", help="also load each study's prompts and check there are enough"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    failed = 0
    for path in args.studies:
        try:
            cfg = load_study(path)
            if args.tasks:
                task = load_task(
                    cfg.task.source,
                    data=cfg.task.data,
                    category=cfg.task.category,
                    field=cfg.task.field,
                    split=cfg.task.split,
                    category_field=cfg.task.category_field,
                )
                split_prompts(task, cfg.task.search_prompts, cfg.task.heldout_prompts, cfg.search.seed)
        except SkipsearchError as exc:
            failed += 1
            message = str(exc)
            print(message if path in message else f"{path}: {message}", file=sys.stderr)
            continue
        print(f"OK: {path}")
    if failed:
        print(f"skipsearch: error: {failed} of {len(args.studies)} study files have problems", file=sys.stderr)
        return 2
    return 0
