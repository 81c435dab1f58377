"""The floor plan (DESIGN 2), held true: the import graph of orchestrator/, workers/ and api/ has no
cycle and one direction (api -> orchestrator -> workers; workers reach orchestrator/ only through
the contract modules), orchestrator/'s top level holds only the contract, no module is over 400
lines, and docs/architecture.md places every module.

An import is any ``import``/``from`` anywhere in a module (top level, inside functions, in
``TYPE_CHECKING`` blocks) and any string constant that spells a project module path
(``"orchestrator.console.watch"``, ``"api.server:main"``), as given to importlib or ``-m``."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = frozenset({"orchestrator", "workers", "api"})
CONTRACT = frozenset({"orchestrator.config", "orchestrator.messages", "orchestrator.errors"})
# orchestrator/'s top level: the contract, and what belongs to no package (DESIGN 2).
TOP_LEVEL = frozenset(
    {"__init__", "__main__", "config", "messages", "errors", "states", "lifecycle", "asyncapi"}
)
MAX_TOP_LEVEL = 8
MAX_LINES = 400
SOURCE_FILES = sorted(p for pkg in sorted(PROJECT_PACKAGES) for p in (ROOT / pkg).rglob("*.py"))
WORKER_FILES = [p for p in SOURCE_FILES if p.relative_to(ROOT).parts[0] == "workers"]
_MODULE_STRING = re.compile(r"^(?:orchestrator|workers|api)(?:\.\w+)*(?::\w+)?$")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_project_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _as_module(name: str) -> str:
    """``package.module.Name`` -> ``package.module``: the longest prefix that is a module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if _is_project_module(".".join(parts[:end])):
            return ".".join(parts[:end])
    return name


def imports_of(source: str, package: str) -> set[str]:
    """The project modules that ``source`` (a module of ``package``) imports anywhere: at the
    top, inside functions and in ``TYPE_CHECKING`` blocks, or names in a module-path string.
    ``from pkg import name`` counts as ``pkg.name`` when that is a module, else as ``pkg``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MODULE_STRING.match(node.value):
                names.add(node.value.partition(":")[0])
    return {_as_module(n) for n in names if n.split(".")[0] in PROJECT_PACKAGES}


def imports_of_file(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_of(path.read_text(), package)


@cache
def import_graph() -> dict[str, frozenset[str]]:
    graph = {module_name(p): frozenset(imports_of_file(p)) for p in SOURCE_FILES}
    return {m: frozenset(i for i in imps if i != m and i in graph) for m, imps in graph.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted.

    A package's ``__init__`` importing its own modules is not a cycle unless one of them imports
    the package back."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def forbidden_for_workers(imports: set[str]) -> set[str]:
    return {m for m in imports if m.split(".")[0] in {"orchestrator", "api"} and m not in CONTRACT}


# ---- the detector itself ------------------------------------------------------------------------


def test_the_detector_sees_lazy_type_checking_package_and_string_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from orchestrator.config import TrainConfig\n"
        "from orchestrator.run import cv\n"
        "if TYPE_CHECKING:\n"
        "    from orchestrator.execution import base\n"
        "def f() -> None:\n"
        "    from orchestrator.run.reports import write_summary\n"
        "    from . import metrics\n"
        "    importlib.import_module('api.server')\n"
        "    target = 'orchestrator.console.jobs:submit_main'\n"
        "    label = 'orchestrator.db'\n"
    )
    imports = imports_of(source, "workers")
    assert {
        "orchestrator.config",
        "orchestrator.run.cv",
        "orchestrator.run.reports",
        "orchestrator.execution.base",
        "workers.metrics",
        "api.server",
        "orchestrator.console.jobs",
    } <= imports
    assert "numpy" not in imports
    assert "orchestrator.db" not in imports  # a file name, not a module
    assert forbidden_for_workers(imports) >= {"orchestrator.run.cv", "api.server"}
    assert "orchestrator.config" not in forbidden_for_workers(imports)


def test_the_walk_finds_every_package() -> None:
    names = {module_name(p) for p in SOURCE_FILES}
    assert {"workers.fold", "orchestrator.console.main", "api.server", "orchestrator.events.hub"} <= names
    # fold.py imports workers.train inside functions only: still seen
    assert {"orchestrator.config", "workers.train", "workers.packed"} <= imports_of_file(
        ROOT / "workers" / "fold.py"
    )


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": ["c"], "c": []}) == []


# ---- the rules ----------------------------------------------------------------------------------


def test_no_module_imports_another_that_imports_it_back() -> None:
    graph = import_graph()
    assert len(graph) > 90  # the walk saw the project
    assert cycles(graph) == []


@pytest.mark.parametrize(
    "path",
    [p for p in SOURCE_FILES if p.relative_to(ROOT).parts[0] != "api"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_nothing_outside_api_imports_api(path: Path) -> None:
    into_api = sorted(m for m in imports_of_file(path) if m.split(".")[0] == "api")
    assert not into_api, f"{path.relative_to(ROOT)} imports {into_api}: only api/ may import api/"


@pytest.mark.parametrize("path", WORKER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_workers_import_only_the_contract_from_orchestrator(path: Path) -> None:
    forbidden = forbidden_for_workers(imports_of_file(path))
    assert not forbidden, (
        f"{path.relative_to(ROOT)} imports {sorted(forbidden)}; workers/ may import from "
        f"orchestrator/ only {sorted(CONTRACT)}"
    )


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_contract_modules_import_only_each_other(module: str) -> None:
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    imports = imports_of_file(path)
    assert imports <= CONTRACT, f"{module} imports {sorted(imports - CONTRACT)}"


def test_the_asyncapi_generator_is_contract_side() -> None:
    assert imports_of_file(ROOT / "orchestrator" / "asyncapi.py") == {"orchestrator.messages"}


def test_orchestrator_top_level_holds_only_the_contract() -> None:
    top = {p.stem for p in (ROOT / "orchestrator").glob("*.py")}
    assert len(top) <= MAX_TOP_LEVEL, sorted(top)
    assert top == TOP_LEVEL, f"new top-level modules {sorted(top - TOP_LEVEL)}: put them in a package"


@pytest.mark.parametrize("path", SOURCE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by what it does"


# ---- the map ------------------------------------------------------------------------------------

_HEADING = re.compile(r"^#{2,3} `?((?:orchestrator|workers|api)(?:/\w+)*)/`?\s*$")
_ROW = re.compile(r"^\| ([^|]+) \|")
_CELL_FILE = re.compile(r"`([\w/]+\.py)`")


def documented_modules(text: str) -> set[str]:
    """The module files (``orchestrator/events/hub.py``) that docs/architecture.md has a table row
    for: a row's first cell names files relative to the folder of the heading above it."""
    folder: str | None = None
    found: set[str] = set()
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            folder = heading.group(1)
        elif folder is not None and (row := _ROW.match(line)):
            found.update(f"{folder}/{name}" for name in _CELL_FILE.findall(row.group(1)))
    return found


def test_the_map_reader_reads_rows_under_their_folder() -> None:
    text = "## orchestrator/\n| module | what |\n| `a.py`, `b/c.py` | x |\n### api/ws/\n| `d.py` | y |\n"
    assert documented_modules(text) == {"orchestrator/a.py", "orchestrator/b/c.py", "api/ws/d.py"}


def test_every_module_has_its_row_in_the_architecture_map() -> None:
    documented = documented_modules((ROOT / "docs" / "architecture.md").read_text())
    modules = {
        str(p.relative_to(ROOT))
        for p in SOURCE_FILES
        if p.name != "__main__.py" and (p.name != "__init__.py" or _defines_something(p))
    }
    assert len(modules) > 90
    assert sorted(modules - documented) == [], "modules without a row in docs/architecture.md"
    assert sorted(documented - modules) == [], "rows in docs/architecture.md of modules that do not exist"


def _defines_something(path: Path) -> bool:
    """A package ``__init__`` that holds more than its docstring and re-exports."""
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) for node in tree.body)
