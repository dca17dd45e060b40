"""The `skipsearch` command. Each command group lives in its own module with a
`register(subparsers)` that adds its parser and sets `func(args) -> int`.

Only this package prints. A `SkipsearchError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from skipsearch.cli import (
    bench_cmd,
    compare_cmd,
    export_draft_cmd,
    export_hf_cmd,
    generate_cmd,
    models_cmd,
    profile_cmd,
    report_cmd,
    search_cmd,
    tasks_cmd,
    validate_cmd,
)
from skipsearch.errors import SkipsearchError
from skipsearch.version import __version__

COMMAND_MODULES = [models_cmd, generate_cmd, search_cmd, compare_cmd, profile_cmd, tasks_cmd, validate_cmd, bench_cmd,
                   report_cmd, export_hf_cmd, export_draft_cmd]


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line, like every other bad input (argparse adds the usage)."""

    def error(self, message: str):
        self.exit(2, f"skipsearch: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="skipsearch",
        description="Search which sublayers to skip for lossless self-speculative decoding.",
    )
    parser.add_argument("--version", action="version", version=f"skipsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # argument types such as --skip-budget raise SkipsearchError
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(message)s",
            stream=sys.stderr,
        )
        return args.func(args) or 0
    except SkipsearchError as exc:
        print(f"skipsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skipsearch: interrupted", file=sys.stderr)
        return 130
