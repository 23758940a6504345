"""`<home>/state.json`: what the supervisor is running, readable by any CLI call.

Written atomically (temp file + rename) so a reader never sees half a document.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

STATE_FORMAT = 1

StackStatus = Literal["starting", "running", "stopping", "stopped", "failed"]
# "stale" is never written: readers report it for a row whose supervisor is gone.
InstanceState = Literal[
    "pending", "starting", "ready", "crashed", "restarting", "stopped", "failed", "stale"
]
LIVE_STATES = frozenset({"pending", "starting", "ready", "crashed", "restarting"})


class InstanceStatus(BaseModel):
    """One supervised process as last recorded."""

    model_config = ConfigDict(extra="ignore")

    name: str
    service: str
    pid: int | None = None
    port: int | None = None
    state: InstanceState = "pending"
    restarts: int = 0
    version: str = ""
    track: str = ""
    exit_code: int | None = None
    started_at: float | None = None


class StackState(BaseModel):
    """The whole document."""

    model_config = ConfigDict(extra="ignore")

    format: int = STATE_FORMAT
    base_port: int | None = None
    supervisor_pid: int | None = None
    started_at: float | None = None
    status: StackStatus = "starting"
    error: str | None = None
    # The desired state's generation the instances were last reconciled to, and the last
    # reconcile's problem (an instance that did not start, a routing write that failed).
    generation: int = 0
    reconcile_error: str | None = None
    instances: list[InstanceStatus] = Field(default_factory=list)


def state_path(home: Path) -> Path:
    return home / "state.json"


def write_state(home: Path, state: StackState) -> None:
    """Replace state.json in one rename."""
    path = state_path(home)
    tmp = path.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state.model_dump(), indent=2))
    os.replace(tmp, path)


def read_state(home: Path) -> StackState | None:
    """The recorded state, or None when there is none (or it is not ours)."""
    try:
        raw = json.loads(state_path(home).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        return None
    try:
        return StackState.model_validate(raw)
    except ValidationError:
        return None


def log_dir(home: Path) -> Path:
    return home / "logs"


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (empty when there is none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
