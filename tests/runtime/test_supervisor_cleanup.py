"""What the runtime leaves behind: grandchildren, dead supervisors, taken ports, log names."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port, wait_for
from yardarm.local import control
from yardarm.local.render import InstanceSpec
from yardarm.local.state import read_state
from yardarm.model import Topology

# An HTTP server answering /readyz that first starts two long sleepers: one in its own
# process group (as a worker pool would) and one that escapes into a new session.
PARENT = r"""
import http.server, os, subprocess, sys
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
subprocess.Popen(sleeper)
subprocess.Popen(sleeper, start_new_session=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def parent_spec(name: str = "parent-0") -> InstanceSpec:
    port = free_port()
    return InstanceSpec(
        name=name,
        service=name.rsplit("-", 1)[0],
        command=[sys.executable, "-c", PARENT],
        env={"PORT": str(port)},
        port=port,
        readiness="http",
        readiness_url=f"http://127.0.0.1:{port}/readyz",
    )


def grandchildren(pid: int) -> list[psutil.Process]:
    """The two sleepers a PARENT started (waiting until both exist)."""
    proc = psutil.Process(pid)
    wait_for(lambda: len(proc.children()) == 2, 30, "the sleepers to start")
    return proc.children()


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_stop_kills_grandchildren_even_outside_the_group(home: Path) -> None:
    info = control.start_plan(home, [parent_spec()], timeout=60)
    child = info.instances[0].pid
    assert child is not None
    everything = [psutil.Process(info.supervisor_pid), psutil.Process(child), *grandchildren(child)]
    assert len({os.getpgid(p.pid) for p in everything[2:]}) == 2  # one left the group

    control.stop_stack(home)

    _gone, survivors = psutil.wait_procs(everything, timeout=30)
    assert not alive(survivors), survivors


def test_crash_takes_the_process_group_with_it(home: Path) -> None:
    info = control.start_plan(home, [parent_spec()], timeout=60)
    child = info.instances[0].pid
    assert child is not None
    in_group, escaped = sorted(grandchildren(child), key=lambda p: os.getpgid(p.pid) != child)
    os.kill(child, signal.SIGKILL)

    def restarted() -> bool:
        row = control.read_status(home)[0]
        return row.restarts == 1 and row.state == "ready"

    wait_for(restarted, 30, "the parent to be restarted")
    # The group member would otherwise pile up with every restart.
    _gone, survivors = psutil.wait_procs([in_group], timeout=30)
    assert not alive(survivors)
    assert escaped.is_running()  # only the final stop's sweep finds this one


def test_killed_supervisor_shows_stale_and_down_cleans_up(home: Path) -> None:
    info = control.start_plan(home, [parent_spec()], timeout=60)
    child = info.instances[0].pid
    assert child is not None
    sleepers = grandchildren(child)
    os.kill(info.supervisor_pid, signal.SIGKILL)
    _gone, survivors = psutil.wait_procs([psutil.Process(child)], timeout=30)
    assert not survivors  # PR_SET_PDEATHSIG

    assert not control.is_running(home)
    assert [s.state for s in control.read_status(home)] == ["stale"]
    state = read_state(home)
    assert state is not None and state.instances[0].state == "ready"  # the file is untouched

    control.stop_stack(home)
    _gone, survivors = psutil.wait_procs(sleepers, timeout=30)
    assert not alive(survivors), survivors


def test_second_start_names_the_running_supervisor(home: Path) -> None:
    info = control.start_plan(home, [parent_spec()], timeout=60)
    message = rf"already running \(pid {info.supervisor_pid}\).*yardarm down"
    with pytest.raises(control.StackStartError, match=message):
        control.start_plan(home, [parent_spec()], timeout=60)
    with pytest.raises(control.StackStartError, match=message):
        control.start_stack(home, Topology(base_port=free_port()), timeout=60)


def test_a_taken_port_is_refused_before_anything_starts(home: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        spec = parent_spec().model_copy(update={"port": port})
        with pytest.raises(control.StackStartError, match=rf"port {port} \(parent-0\) already"):
            control.start_plan(home, [spec], timeout=60)
        assert read_state(home) is None
        assert not (home / "supervisor.log").exists()

        # A whole topology: the gateway would listen on the base port.
        with pytest.raises(control.StackStartError, match=rf"{port} \(gateway-0\).*base port"):
            control.start_stack(home, Topology(base_port=port), timeout=20)
        assert read_state(home) is None


def test_log_path_refuses_names_that_leave_the_log_dir(tmp_path: Path) -> None:
    assert control.log_path(tmp_path, "orders-1") == tmp_path / "logs" / "orders-1.log"
    for bad in ("../state", "a/b", "", "..", "-x"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            control.log_path(tmp_path, bad)
