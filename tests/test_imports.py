"""Import direction (DESIGN 2): workers/ reaches orchestrator/ only through the contract modules,
and the contract modules (config, messages, errors) import no other project module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = frozenset({"orchestrator", "workers", "api"})
CONTRACT = frozenset({"orchestrator.config", "orchestrator.messages", "orchestrator.errors"})
WORKER_FILES = sorted((ROOT / "workers").rglob("*.py"))


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
    top, inside functions and in ``TYPE_CHECKING`` blocks. ``from pkg import name`` counts as
    ``pkg.name`` when that is a module, else as ``pkg``."""
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
    return {_as_module(n) for n in names if n.split(".")[0] in PROJECT_PACKAGES}


def imports_of_file(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_of(path.read_text(), package)


def forbidden_for_workers(imports: set[str]) -> set[str]:
    return {m for m in imports if m.split(".")[0] == "orchestrator" and m not in CONTRACT}


def test_the_detector_sees_lazy_type_checking_and_package_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from orchestrator.config import TrainConfig\n"
        "from orchestrator import cv\n"
        "if TYPE_CHECKING:\n"
        "    from orchestrator.execution import base\n"
        "def f() -> None:\n"
        "    from orchestrator.reports import write_summary\n"
        "    from . import metrics\n"
    )
    imports = imports_of(source, "workers")
    assert {"orchestrator.config", "orchestrator.cv", "orchestrator.reports", "workers.metrics"} <= imports
    assert "numpy" not in imports
    assert forbidden_for_workers(imports) >= {"orchestrator.cv", "orchestrator.reports"}
    assert "orchestrator.config" not in forbidden_for_workers(imports)


def test_the_walk_finds_the_workers() -> None:
    names = {module_name(p) for p in WORKER_FILES}
    assert {"workers.fold", "workers.train", "workers.metrics"} <= names
    # fold.py imports workers.train inside functions only: still seen
    assert {"orchestrator.config", "workers.train", "workers.metrics"} <= imports_of_file(
        ROOT / "workers" / "fold.py"
    )


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
