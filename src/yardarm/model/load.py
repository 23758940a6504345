"""Loading `yardarm.yaml`: defaults in code, the file over them, every error with its place.

A bad file is refused as a whole, with each problem as `key.path: what is wrong (line N)`,
so `yardarm validate` and `yardarm up` say everything at once, before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from yardarm.model.flags import read_flags_file
from yardarm.model.specs import MAX_BASE_PORT, Topology, cross_checks

CONFIG_FILE = "yardarm.yaml"


class TopologyError(ValueError):
    """The topology file cannot be used; the message says where and why."""


def project_dir(start: Path | None = None) -> Path:
    """Nearest parent holding yardarm.yaml or yardarm's own pyproject.toml, else cwd."""
    here = (start or Path.cwd()).resolve()
    for candidate in [here, *here.parents]:
        if (candidate / CONFIG_FILE).is_file():
            return candidate
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and _is_yardarm_pyproject(pyproject):
            return candidate
    return here


def _is_yardarm_pyproject(path: Path) -> bool:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return bool(data.get("project", {}).get("name") == "yardarm")


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in the document (list items by index) to its 1-based line, for
    error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    child = (*path, str(key.value))
                    lines[child] = key.start_mark.line + 1
                    walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, str(index))
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def describe(error: Any) -> str:
    """One pydantic error as 'must be >= 1 (got 0)' style text."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']} (got {got!r})"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']} (got {got!r})"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {got!r})"
    return f"{error['msg'][0].lower()}{error['msg'][1:]} (got {got!r})"


def _messages(exc: ValidationError, lines: dict[tuple[str, ...], int]) -> list[str]:
    """Each error as `path: why (line N)`."""
    messages = []
    for error in exc.errors():
        # A bad mapping key is reported at the key itself, not at pydantic's "[key]".
        path = tuple(str(part) for part in error["loc"] if part != "[key]")
        messages.append(_placed(path, describe(error), lines))
    return messages


def _placed(path: tuple[str, ...], why: str, lines: dict[tuple[str, ...], int]) -> str:
    line = lines.get(path)
    suffix = f" (line {line})" if line else ""
    return f"{'.'.join(path) or '(document)'}: {why}{suffix}"


def _with_flags_file(data: dict[str, Any], base_dir: Path) -> str | None:
    """Read `flags_file` (relative to the yaml's directory) into `flags`; the problem, if any."""
    if data.get("flags_file") is None:
        return None
    if "flags" in data:
        return "set flags or flags_file, not both"
    path = (base_dir / str(data["flags_file"])).resolve()
    try:
        data["flags"] = read_flags_file(path)
    except ValueError as exc:
        return str(exc)
    data["flags_file"] = str(path)
    return None


def _parse(text: str, base_dir: Path) -> tuple[Topology | None, list[str]]:
    """Parse and validate a document; returns the topology or every error found."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [f"YAML syntax error at {where}{problem}"]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [f"the document must be a mapping of keys (got {type(data).__name__})"]
    problem = _with_flags_file(data, base_dir)
    if problem is not None:
        line = key_lines(text).get(("flags_file",))
        return None, [f"flags_file: {problem}" + (f" (line {line})" if line else "")]
    try:
        topology = Topology.model_validate(data, context={"defer_cross_checks": True})
    except ValidationError as exc:
        return None, _messages(exc, key_lines(text))
    problems = cross_checks(topology)
    if problems:
        lines = key_lines(text)
        return None, [_placed(path, why, lines) for path, why in problems]
    return topology, []


def validate_file(path: Path) -> list[str]:
    """Every problem in a topology file, each with its key path (empty: the file is valid)."""
    try:
        text = path.read_text()
    except OSError as exc:
        return [f"cannot read {path}: {exc.strerror}"]
    return _parse(text, path.resolve().parent)[1]


def load_topology(path: Path | None = None, base_port_override: int | None = None) -> Topology:
    """Defaults, then the file (./yardarm.yaml when path is None and it exists), then flags."""
    if path is None:
        found = project_dir() / CONFIG_FILE
        path = found if found.is_file() else None
    topology = Topology()
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise TopologyError(f"cannot read {path}: {exc.strerror}") from exc
        parsed, errors = _parse(text, path.resolve().parent)
        if parsed is None:
            raise TopologyError(f"{path}: " + "; ".join(errors))
        topology = parsed
    if base_port_override is not None:
        try:
            topology = Topology.model_validate(
                {**topology.model_dump(), "base_port": base_port_override}
            )
        except ValidationError as exc:
            got = base_port_override
            raise TopologyError(
                f"--base-port: must be between 1024 and {MAX_BASE_PORT} (got {got})"
            ) from exc
    return topology
