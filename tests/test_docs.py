"""Every `skipsearch.…` name and every repository path that README.md and docs/*.md mention
exists: a module moved or a file renamed must take its mentions along."""

import fnmatch
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# not after a path separator, a dot or a dash: /etc/…/skipsearch.conf is PostgreSQL's file, not a module
DOTTED = re.compile(r"(?<![\w/.-])skipsearch(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w/.-])((?:skipsearch|tests|studies|tools|docs|reports)/[\w./-]*\w)([-./]?<)?")
# written by a command, and not ignored by git because it is meant to be committed after a run
OUTPUTS = {"reports/gpu-check.json"}


def _mentions(pattern: re.Pattern) -> list[tuple[str, re.Match]]:
    return [(page.name, match) for page in PAGES for match in pattern.finditer(page.read_text(encoding="utf-8"))]


def _resolves(dotted: str) -> bool:
    """Import the longest importable prefix, then look the rest up as attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def _ignored(path: str) -> bool:
    """An output a command writes: matched by a .gitignore pattern (the simple globs it holds)."""
    patterns = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    return any(p and not p.startswith(("#", "!")) and fnmatch.fnmatch(path, p.rstrip("/")) for p in patterns)


def test_the_pages_are_found():
    assert (ROOT / "README.md") in PAGES and _mentions(DOTTED) and _mentions(PATH)


@pytest.mark.parametrize("page, dotted", sorted({(page, m.group(0)) for page, m in _mentions(DOTTED)}))
def test_every_dotted_name_exists(page, dotted):
    assert _resolves(dotted), f"{page} names {dotted}, which does not exist"


@pytest.mark.parametrize("page, path", sorted({(page, m.group(1)) for page, m in _mentions(PATH) if not m.group(2)}))
def test_every_repository_path_exists(page, path):
    # a path running into `<` is a pattern (reports/compare-<study>.csv), checked by no file
    assert (ROOT / path).exists() or _ignored(path) or path in OUTPUTS, f"{page} mentions {path}, which does not exist"
