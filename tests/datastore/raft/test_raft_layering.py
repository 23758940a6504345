"""The Raft core stays a pure state machine: no module of `yardarm_datastore.raft` imports
I/O, clocks, threads or randomness (the rng is injected; `random` may appear only as a
type), and none opens files. That is what lets the simulator replay a seed exactly."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ALLOWED = frozenset(
    {
        "__future__",
        "dataclasses",
        "enum",
        "typing",
        "collections",
        "collections.abc",
        "bisect",
        "itertools",
        "math",
        "random",  # as a type only: checked below
    }
)
PACKAGE = "yardarm_datastore.raft"
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "exec", "eval", "compile", "__import__"})


def package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside a type annotation."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            roots.append(node.returns)
    return {id(inner) for root in roots for inner in ast.walk(root)}


def violations(source: str, filename: str) -> list[str]:
    """What in `source` breaks the core's layering rules."""
    tree = ast.parse(source, filename)
    found = []
    type_only: set[str] = set()  # names bound by `import random` / `from random import`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = alias.name
                if not (module in ALLOWED or module.startswith(PACKAGE + ".")):
                    found.append(f"{filename}:{node.lineno} imports {module}")
                elif module == "random":
                    type_only.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                if node.level > 1:
                    found.append(f"{filename}:{node.lineno} imports from outside the package")
                continue
            if not (module in ALLOWED or module == PACKAGE or module.startswith(PACKAGE + ".")):
                found.append(f"{filename}:{node.lineno} imports from {module}")
            elif module == "random":
                for alias in node.names:
                    if alias.name != "Random":
                        found.append(f"{filename}:{node.lineno} imports random.{alias.name}")
                    type_only.add(alias.asname or alias.name)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            found.append(f"{filename}:{node.lineno} calls {node.func.id}()")
    in_annotations = annotation_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in type_only and id(node) not in in_annotations:
            found.append(f"{filename}:{node.lineno} uses {node.id} outside a type annotation")
    return found


def core_modules() -> list[Path]:
    return sorted(package_dir().glob("*.py"))


def test_the_core_imports_no_io_clocks_or_randomness() -> None:
    modules = core_modules()
    assert {"core.py", "types.py"} <= {m.name for m in modules}
    found = [v for module in modules for v in violations(module.read_text(), module.name)]
    assert not found, "the Raft core must stay pure:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "breakage",
    [
        "import time",
        "import os.path",
        "import asyncio",
        "from socket import socket",
        "import threading as t",
        "from pathlib import Path",
        "import subprocess",
        "from random import randint",
        "import yardarm_datastore.wal",
        "from .. import store",
        "LOG = open('raft.log', 'a')",
        "def jitter() -> float:\n    return random.random()",
        "TIMEOUT = random.Random(1)",
    ],
)
def test_the_check_catches_a_broken_copy(breakage: str) -> None:
    source = (package_dir() / "core.py").read_text()
    assert not violations(source, "core.py")
    broken = source + "\n" + breakage + "\n"
    assert violations(broken, "core.py"), f"not caught: {breakage!r}"
