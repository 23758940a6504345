"""Kill, pause and resume a stack's processes, found through the supervisor's state.json.

A recorded pid is trusted only while it still is the process the supervisor started:
alive, not a zombie, not younger than the record, and (when its environment is
readable) marked for this home. The supervisor starts every instance as the leader of
its own process group, so a signal goes to the whole group (Postgres's backends pause
with their postmaster); a pid that leads no group is signalled alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil

from yardarm.chaos.config import ALL, Action
from yardarm.local.processes import HOME_MARK
from yardarm.local.state import LIVE_STATES, InstanceStatus, read_state

SIGNALS: dict[Action, signal.Signals] = {
    "kill": signal.SIGKILL,
    "pause": signal.SIGSTOP,
    "resume": signal.SIGCONT,
}


class ProcessFaultError(Exception):
    """A process fault that cannot be applied; `status` is the HTTP answer it deserves."""

    def __init__(
        self, status: int, title: str, detail: str, valid: list[str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.valid = valid


@dataclass(frozen=True)
class Signalled:
    """One instance a fault reached."""

    instance: str
    pid: int


def _process_of(status: InstanceStatus, home: Path) -> psutil.Process | None:
    """The live process behind a row, unless its pid now belongs to something else."""
    if status.pid is None or status.state not in LIVE_STATES:
        return None
    try:
        proc = psutil.Process(status.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if status.started_at is not None and proc.create_time() > status.started_at + 1.0:
            return None
        try:
            marked = proc.environ().get(HOME_MARK)
        except psutil.AccessDenied:
            return proc  # the age check above is all we can go by
        return proc if marked == str(home.resolve()) else None
    except psutil.Error:
        return None


def _instances(home: Path, own: str) -> list[InstanceStatus]:
    state = read_state(home)
    if state is None:
        raise ProcessFaultError(
            409,
            "No stack state",
            f"{home / 'state.json'} is missing or unreadable; is the stack running?",
        )
    return [status for status in state.instances if status.name != own]


def process_targets(home: Path, own: str) -> list[str]:
    """Every instance a process fault may name (the controller's own excluded)."""
    try:
        return [status.name for status in _instances(home, own)]
    except ProcessFaultError:
        return []


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def apply(home: Path, own: str, action: Action, target: str) -> list[Signalled]:
    """Signal the target (or every instance for "all"); the instances it reached.

    Pausing waits for readiness: a process stopped while the supervisor still probes it
    would be counted as a failed start. A paused process that is killed dies (SIGKILL
    needs no running process), and its restart is not paused.
    """
    sig = SIGNALS[action]
    rows = _instances(home, own)
    names = [row.name for row in rows]
    if target != ALL and target not in names:
        valid = [ALL, *names]
        raise ProcessFaultError(
            422,
            "Unknown target",
            f"no instance {target!r} to {action}; valid targets: {', '.join(valid)}",
            valid,
        )
    chosen = rows if target == ALL else [row for row in rows if row.name == target]
    reached: list[Signalled] = []
    for row in chosen:
        proc = _process_of(row, home)
        if action == "pause" and row.state != "ready":
            proc = None
        if proc is None:
            if target == ALL:
                continue
            when = "once it is ready" if row.state != "ready" else "once it is running again"
            raise ProcessFaultError(
                409,
                "Instance not running",
                f"{row.name} (state {row.state}) has no running process of this stack to "
                f"{action}; try again {when} (`yardarm status`)",
            )
        if action == "resume" and target == ALL and not _stopped(proc):
            continue  # "resume all" reports what it resumed, not everything that runs
        _signal(proc.pid, sig)
        reached.append(Signalled(row.name, proc.pid))
    return reached


def _stopped(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_STOPPED)
    except psutil.Error:
        return False


def paused(home: Path, own: str) -> list[Signalled]:
    """Instances whose process is stopped right now (by us or anyone else)."""
    try:
        rows = _instances(home, own)
    except ProcessFaultError:
        return []
    found = []
    for row in rows:
        proc = _process_of(row, home)
        if proc is not None and _stopped(proc):
            found.append(Signalled(row.name, proc.pid))
    return found
