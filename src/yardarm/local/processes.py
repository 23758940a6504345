"""Tell which processes belong to a home, and end them.

Every child the supervisor starts carries `YARDARM_SUPERVISED_HOME=<home>` in its
environment, and so does everything it spawns. That mark, not a pid, is what a sweep
trusts: pids are reused, process groups can be left, but an inherited environment stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psutil

HOME_MARK = "YARDARM_SUPERVISED_HOME"


def mark(home: Path) -> dict[str, str]:
    """The environment entry that ties a child (and its descendants) to a home."""
    return {HOME_MARK: str(home.resolve())}


def kill_group(pgid: int, sig: int) -> None:
    """Signal a whole process group; a group that is gone (or not ours) is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def marked_processes(home: Path) -> list[psutil.Process]:
    """Live processes started for this home, the calling process excluded."""
    wanted = str(home.resolve())
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(HOME_MARK) == wanted:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def sweep(home: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process still marked for this home; the pids that were killed."""
    victims = marked_processes(home)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=timeout)
    return [proc.pid for proc in victims]
