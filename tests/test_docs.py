"""Every `skipsearch.…` name, repository path and link that README.md and docs/*.md mention
exists: a module moved or a file renamed must take its mentions along. The snippets marked
`<!-- runnable -->` run, in order, as a user would run them from the repository root."""

import fnmatch
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# not after a path separator, a dot or a dash: /etc/…/skipsearch.conf is PostgreSQL's file, not a module
DOTTED = re.compile(r"(?<![\w/.-])skipsearch(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w/.-])((?:skipsearch|tests|studies|tools|docs|reports)/[\w./-]*\w)([-./]?<)?")
# written by a command, and not ignored by git because it is meant to be committed after a run
OUTPUTS = {"reports/gpu-check.json"}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RUNNABLE = re.compile(r"<!-- runnable -->\n```(\w+)\n(.*?)```", re.S)
README_LINES = 200


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


@pytest.mark.parametrize("page, target", sorted({(page, m.group(1)) for page, m in _mentions(LINK)
                                                 if not m.group(1).startswith(("http://", "https://"))}))
def test_every_link_resolves_from_its_page(page, target):
    folder = ROOT if page == "README.md" else ROOT / "docs"
    assert (folder / target).exists(), f"{page} links to {target}, which does not exist from there"


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_LINES, f"README.md has {lines} lines; move details to docs/"


def runnable_snippets(text: str) -> list[tuple[str, str]]:
    return [(language, code) for language, code in RUNNABLE.findall(text)]


def test_runnable_snippets_are_found():
    found = runnable_snippets("x\n<!-- runnable -->\n```sh\necho 1\n```\n```python\nno\n```\n")
    assert found == [("sh", "echo 1\n")]
    languages = [language for language, _ in runnable_snippets((ROOT / "README.md").read_text(encoding="utf-8"))]
    assert languages == ["sh", "python", "python"], "the README's three quick starts are marked runnable"


def run_snippet(language: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "sh" else [sys.executable, "-c", code]
    assert language in ("sh", "python"), f"no runner for {language} snippets"
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=dict(os.environ))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if runnable_snippets(page.read_text(encoding="utf-8"))],
                         ids=lambda page: page.name)
def test_the_runnable_snippets_run_in_order(page, tmp_path):
    """In a copy of what a fresh clone has (the study files, an empty reports/, `.venv` where this
    Python lives), so that a study left over from an earlier run cannot be resumed instead."""
    (tmp_path / "studies").mkdir()
    for study in (ROOT / "studies").glob("*.yaml"):
        (tmp_path / "studies" / study.name).write_text(study.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "reports").mkdir()
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    for index, (language, code) in enumerate(runnable_snippets(page.read_text(encoding="utf-8"))):
        done = run_snippet(language, code, tmp_path)
        failed = f"{page.name} snippet {index + 1} ({language}) failed:\n{code}\n{done.stderr[-3000:]}"
        assert done.returncode == 0, failed
