"""The local target's records of what a stack should be, in its home.

`<home>/topology.json` is the topology `up` started it with; `<home>/desired.json` is
what `yardarm scale` changes and the supervisor reconciles; `<home>/ports.json` maps each
instance off its primary track to its port. All survive `down`, so `up` brings back the
stack as it was last scaled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from yardarm.model import DesiredState, Topology


def topology_path(home: Path) -> Path:
    return home / "topology.json"


def read_topology(home: Path) -> Topology | None:
    """The topology the home's stack was started with; None when there is none."""
    try:
        return Topology.model_validate_json(topology_path(home).read_text())
    except (OSError, ValidationError):
        return None


def write_topology(home: Path, topology: Topology) -> None:
    _replace(topology_path(home), topology.model_dump_json(indent=2))


def desired_path(home: Path) -> Path:
    return home / "desired.json"


def ports_path(home: Path) -> Path:
    return home / "ports.json"


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_desired(home: Path) -> DesiredState | None:
    """The recorded desired state; None when there is none or it cannot be read."""
    try:
        return DesiredState.model_validate_json(desired_path(home).read_text())
    except (OSError, ValidationError):
        return None


def write_desired(home: Path, desired: DesiredState) -> None:
    _replace(desired_path(home), desired.model_dump_json(indent=2))


def read_ports(home: Path) -> dict[str, int]:
    try:
        raw = json.loads(ports_path(home).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, int)}


def write_ports(home: Path, ports: dict[str, int]) -> None:
    _replace(ports_path(home), json.dumps(ports, indent=2, sort_keys=True))
