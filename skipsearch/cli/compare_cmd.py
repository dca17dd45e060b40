"""`skipsearch compare`: the default search against the anchor papers' methods, same budget."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from skipsearch.cli.options import add_study_overrides, configured
from skipsearch.experiments.compare import CompareRow, compare_methods
from skipsearch.files import write_atomic
from skipsearch.reporting.page import compare_csv_path
from skipsearch.search import runner
from skipsearch.search.baselines import BASELINES

METHODS = ["skipsearch", *BASELINES, *runner.DP_METHODS]


def register(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="compare the default search with SWIFT, Self-SD and others",
                                   description="Every method gets the same proxy, skip count, evaluation budget "
                                               "and seed; the matchness objective at a fixed skip count is used.")
    add_study_overrides(parser)
    parser.add_argument("--budget", type=int, default=200, metavar="N",
                        help="proxy evaluations per method (default 200)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS, metavar="NAME",
                        help=f"methods to run (default all: {' '.join(METHODS)})")
    parser.add_argument("--csv", metavar="FILE", help="where to write the table (default reports/compare-<study>.csv)")
    parser.set_defaults(func=run)


def _table(rows: list[CompareRow]) -> str:
    fields = [f.name for f in dataclasses.fields(CompareRow)]
    cells = [fields] + [[str(getattr(row, f)) for f in fields] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(fields))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells)


def _write_csv(rows: list[CompareRow], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in dataclasses.fields(CompareRow)])
    writer.writeheader()
    writer.writerows(dataclasses.asdict(row) for row in rows)
    write_atomic(path, buffer.getvalue(), what="comparison table")


def run(args) -> int:
    config, _ = configured(args)
    path = Path(args.csv) if args.csv else compare_csv_path(config.name)
    runner.check_output_path(path, is_default=args.csv is None)
    setup = runner.prepare(config, progress=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per in-memory study otherwise
    bar = tqdm(total=len(args.methods), desc="methods", leave=False)
    measuring = None

    def measured(name: str) -> None:
        nonlocal measuring
        if measuring is None:
            bar.close()
            measuring = tqdm(total=len(args.methods), desc="held-out decoding", leave=False)
        measuring.update(1)

    comparison = compare_methods(setup, args.budget, config.search.seed, config.search.sampler, args.methods,
                                 on_method=lambda name: bar.update(1), on_measured=measured)
    bar.close()
    if measuring is not None:
        measuring.close()
    rows = comparison.rows
    print(f"k = {setup.k} of {len(setup.eligible)} sublayers, budget {args.budget} evaluations, "
          f"seed {config.search.seed}, {len(setup.search_refs)} search / {len(setup.heldout_refs)} held-out prompts, "
          f"{setup.costs.device}")
    print(_table(rows))
    print(f"proxy cost: {comparison.proxy_seconds * 1000:.1f} ms per candidate on average, "
          f"{comparison.proxy_cost_ratio:.2f}x a full forward over the same tokens "
          f"({comparison.full_forward_seconds * 1000:.1f} ms)")
    _write_csv(rows, path)
    print(path)
    return 0
