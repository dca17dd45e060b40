"""The package's one rule about imports, checked over the source: a layer imports only the layers
below it. From the bottom: the shared modules (`errors`, `files`, `version`), `engine`,
`config` (with `skipsearch.hf`, transformers' generate running a profile, kept at its public
path), `search`, `experiments`, `reporting`, `cli`. Every import counts, also one inside a
function. The engine needs torch, transformers and accelerate only. The snippets of README.md and docs/ import
what they name."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "skipsearch"

LAYERS = [
    ["skipsearch.errors", "skipsearch.files", "skipsearch.version"],
    ["skipsearch.engine"],
    ["skipsearch.config", "skipsearch.hf"],
    ["skipsearch.search"],
    ["skipsearch.experiments"],
    ["skipsearch.reporting"],
    ["skipsearch.cli", "skipsearch.__main__"],
]
ENGINE_LIBRARIES = {"torch", "transformers", "accelerate", "huggingface_hub"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    return _imports_of(path.read_text(encoding="utf-8"), package)


def _imports_of(source_text: str, package: str) -> set[str]:
    """The absolute names of what a module of `package` imports; `from X import y` counts as X.y
    when X.y is a module of skipsearch, else as X."""
    found = set()
    for node in ast.walk(ast.parse(source_text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                as_module = PACKAGE.parent / candidate.replace(".", "/")
                is_module = as_module.with_suffix(".py").exists() or (as_module / "__init__.py").exists()
                found.add(candidate if is_module else source)
    return found


def _layer(name: str) -> int | None:
    for index, members in enumerate(LAYERS):
        if any(name == member or name.startswith(member + ".") for member in members):
            return index
    return None


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    homeless = [_module_name(p) for p in SOURCES if _module_name(p) != "skipsearch" and _layer(_module_name(p)) is None]
    assert not homeless, f"modules outside every layer: {homeless}"


@pytest.mark.parametrize("path", [p for p in SOURCES if _module_name(p) != "skipsearch"], ids=_module_name)
def test_a_layer_imports_only_layers_below_it(path):
    here = _layer(_module_name(path))
    upward = sorted(name for name in _imports(path)
                    if name.startswith("skipsearch") and name != "skipsearch" and _layer(name) > here)
    assert not upward, f"{_module_name(path)} (layer {here}) imports from higher layers: {upward}"


def test_no_layer_imports_the_package_api():
    """`skipsearch/__init__.py` re-exports names for users; inside the package each module imports
    the module that defines a name, so the API can never close an import cycle."""
    offenders = [_module_name(p) for p in SOURCES if _module_name(p) != "skipsearch" and "skipsearch" in _imports(p)]
    assert not offenders


def test_the_package_api_loads_only_the_engine_eagerly():
    """Lazy names aside, `import skipsearch` pulls in the engine and the shared modules only."""
    top = PACKAGE / "__init__.py"
    tree = ast.parse(top.read_text(encoding="utf-8"))
    eager = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert all(_layer(name) is not None and _layer(name) <= 1 for name in eager if name.startswith("skipsearch")), eager


@pytest.mark.parametrize("path", sorted((PACKAGE / "engine").glob("*.py")), ids=lambda p: p.stem)
def test_the_engine_needs_torch_transformers_and_accelerate_only(path):
    libraries = {name.split(".")[0] for name in _imports(path)} - {"skipsearch", "__future__"}
    assert libraries - ENGINE_LIBRARIES - set(sys.stdlib_module_names) == set()


def test_the_check_sees_an_upward_import():
    """The rule can fail: an engine module importing the search layer inside a function."""
    imported = _imports_of("def f():\n    from ..search import runner\n", "skipsearch.engine")
    assert "skipsearch.search.runner" in imported
    assert _layer("skipsearch.search.runner") > _layer("skipsearch.engine.decoding")


def _readme_imports() -> list[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts = [page.read_text(encoding="utf-8") for page in pages]
    blocks = [block for text in texts for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]
    statements = []
    for block in blocks:
        for node in ast.parse(block).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("skipsearch"):
                statements.append(ast.unparse(node))
    return statements


def test_the_readme_snippets_import_what_they_name():
    statements = _readme_imports()
    assert statements, "the python snippets of README.md and docs/ import nothing from skipsearch"
    for statement in statements:
        exec(statement, {})


@pytest.mark.parametrize("path", sorted((PACKAGE / "cli").glob("*_cmd.py")), ids=lambda p: p.stem)
def test_a_command_imports_no_other_command(path):
    """Commands share code through the library or `cli/options.py`, never through each other."""
    commands = {name for name in _imports(path) if name.startswith("skipsearch.cli.") and name.endswith("_cmd")}
    assert commands == set()
