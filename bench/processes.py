"""The programs a benchmark runs: finding them, starting them pinned, waiting, stopping.

Each server runs in its own session with its log in a file, so it can be stopped with
everything it started, and a failure can quote the end of its log.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from bench.cpu import pinned
from bench.loopback import http_get
from bench.options import BenchError

INSTALL_HINT = "apt-get install -y haproxy nginx wrk"


def require_tools(names: Sequence[str], hint: str = INSTALL_HINT) -> dict[str, str]:
    """Absolute paths of the tools, or a BenchError naming the missing ones and the fix."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise BenchError(f"missing tool(s): {', '.join(missing)}. Install them with: {hint}")
    return {name: path for name, path in found.items() if path is not None}


def tool_version(argv: Sequence[str], pattern: str) -> str:
    """The first group of `pattern` in the tool's combined output (or "unknown")."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


@dataclass
class ManagedProcess:
    """A server the benchmark started in its own session, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the process group we created, then SIGKILL after `grace_s`."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(timeout=grace_s)
        self._log.close()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    cpus: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        pinned(argv, cpus),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=None if env is None else dict(env),
        start_new_session=True,
    )
    return ManagedProcess(name, popen, log_path, log)


def wait_http_ok(url: str, process: ManagedProcess, timeout_s: float = 60.0) -> None:
    """Wait for `url` to answer 200, failing fast (with the log) if the process died."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not process.alive():
            raise BenchError(
                f"{process.name} exited with code {process.popen.returncode} before it was "
                f"ready; its log ({process.log_path}) ends with:\n{process.log_tail()}"
            )
        try:
            status, _ = http_get(url, timeout_s=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(
        f"{process.name} did not answer 200 on {url} within {timeout_s:.0f}s (last: {last}); "
        f"its log ends with:\n{process.log_tail()}"
    )


def wait_listening(process: ManagedProcess, port: int, timeout_s: float = 60.0) -> None:
    """Wait until this very process listens on `port` (several may share it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise BenchError(
                f"{process.name} exited with code {process.popen.returncode} before it "
                f"listened on {port}; its log ends with:\n{process.log_tail()}"
            )
        try:
            sockets = psutil.Process(process.pid).net_connections(kind="tcp")
        except psutil.Error:
            sockets = []
        if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets):
            return
        time.sleep(0.2)
    raise BenchError(f"{process.name} did not listen on {port} within {timeout_s:.0f}s")
