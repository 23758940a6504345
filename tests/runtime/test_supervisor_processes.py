"""The supervisor with small stand-in servers: order, restarts, clean stop, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port, wait_for
from yardarm.local import control
from yardarm.local.render import InstanceSpec
from yardarm.local.state import read_state

# A tiny HTTP server answering /readyz. With STANDIN_DEP set it refuses to start (exit 3)
# unless that port already answers, so a start out of dependency order shows as a restart.
STANDIN = r"""
import http.server, os, sys, time, urllib.request
dep = os.environ.get("STANDIN_DEP")
if dep:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{dep}/readyz", timeout=2)
    except OSError:
        print("dependency not ready", flush=True)
        sys.exit(3)
    print("dependency ready", flush=True)
time.sleep(float(os.environ.get("STANDIN_DELAY", "0")))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
print("serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["STANDIN_PORT"])), Handler).serve_forever()
"""


def standin(name: str, *, depends_on: str | None = None, delay: float = 0.0) -> InstanceSpec:
    port = free_port()
    env = {"STANDIN_PORT": str(port), "STANDIN_DELAY": str(delay)}
    return InstanceSpec(
        name=name,
        service=name.rsplit("-", 1)[0],
        command=[sys.executable, "-c", STANDIN],
        env=env,
        port=port,
        readiness="http",
        readiness_url=f"http://127.0.0.1:{port}/readyz",
        depends_on=[depends_on] if depends_on else [],
    )


def chain() -> list[InstanceSpec]:
    """base (slow to become ready) <- middle-0 <- top-0."""
    base = standin("base-0", delay=1.0)
    middle = standin("middle-0", depends_on="base-0")
    middle.env["STANDIN_DEP"] = str(base.port)
    top = standin("top-0", depends_on="middle-0")
    top.env["STANDIN_DEP"] = str(middle.port)
    return [base, middle, top]


def tree(pids: list[int]) -> list[psutil.Process]:
    processes = []
    for pid in pids:
        proc = psutil.Process(pid)
        processes.append(proc)
        processes.extend(proc.children(recursive=True))
    return processes


def test_starts_in_dependency_order_and_records_state(home: Path) -> None:
    seen: list[list[str]] = []
    control.start_plan(
        home, chain(), on_progress=lambda s: seen.append([i.state for i in s]), timeout=60
    )
    assert control.is_running(home)
    statuses = control.read_status(home)
    assert [s.name for s in statuses] == ["base-0", "middle-0", "top-0"]
    for status in statuses:
        assert status.state == "ready"
        assert status.restarts == 0, status  # a dependent started early would have exited 3
        assert status.pid is not None and psutil.pid_exists(status.pid)
    assert "dependency ready" in (home / "logs" / "middle-0.log").read_text()
    assert seen and seen[-1] == ["ready", "ready", "ready"]
    state = json.loads((home / "state.json").read_text())
    assert state["format"] == 1 and state["status"] == "running"
    assert {"name", "service", "pid", "port", "state", "restarts", "exit_code"} <= set(
        state["instances"][0]
    )


def test_crashed_child_is_restarted_and_counted(home: Path) -> None:
    control.start_plan(home, chain(), timeout=60)
    victim = next(s for s in control.read_status(home) if s.name == "middle-0")
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)

    def restarted() -> bool:
        row = next(s for s in control.read_status(home) if s.name == "middle-0")
        return row.restarts == 1 and row.state == "ready" and row.pid != victim.pid

    wait_for(restarted, 30, "middle-0 to be restarted")
    row = next(s for s in control.read_status(home) if s.name == "middle-0")
    assert row.exit_code == -signal.SIGKILL
    others = [s for s in control.read_status(home) if s.name != "middle-0"]
    assert all(s.restarts == 0 and s.state == "ready" for s in others)


def test_stop_leaves_no_process_alive(home: Path) -> None:
    control.start_plan(home, chain(), timeout=60)
    state = read_state(home)
    assert state is not None and state.supervisor_pid is not None
    processes = tree([state.supervisor_pid])
    assert len(processes) >= 4
    control.stop_stack(home)
    _gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, alive
    assert not control.is_running(home)
    final = read_state(home)
    assert final is not None and final.status == "stopped"
    assert all(s.state == "stopped" for s in final.instances)


def test_killed_supervisor_leaves_no_orphans(home: Path) -> None:
    control.start_plan(home, chain(), timeout=60)
    state = read_state(home)
    assert state is not None and state.supervisor_pid is not None
    children = [s.pid for s in state.instances if s.pid]
    processes = tree(children)
    os.kill(state.supervisor_pid, signal.SIGKILL)
    _gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, alive
    assert not control.is_running(home)


def test_second_supervisor_for_the_same_home_refuses(home: Path) -> None:
    control.start_plan(home, chain()[:1], timeout=60)
    with pytest.raises(control.StackStartError, match="already running"):
        control.start_plan(home, chain()[:1], timeout=60)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "yardarm.local.supervisor",
            "--home",
            str(home),
            "--plan",
            str(home / "plan.json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "already running" in result.stderr


def test_instance_that_never_starts_fails_the_stack_with_its_log(home: Path) -> None:
    good = standin("base-0")
    broken = InstanceSpec(
        name="broken-0",
        service="broken",
        command=[sys.executable, "-c", "import sys; print('no config here'); sys.exit(2)"],
        port=free_port(),
        readiness="tcp",
        depends_on=["base-0"],
    )
    with pytest.raises(control.StackStartError) as raised:
        control.start_plan(home, [good, broken], timeout=60, ready_timeout=3)
    message = str(raised.value)
    assert "broken-0" in message and "no config here" in message
    assert not control.is_running(home)
    state = read_state(home)
    assert state is not None and state.status == "failed"
    by_name = {s.name: s for s in state.instances}
    assert by_name["broken-0"].state == "failed"
    assert by_name["broken-0"].restarts >= 1
    assert by_name["base-0"].state == "stopped"
    assert by_name["base-0"].pid is not None
    assert not psutil.pid_exists(by_name["base-0"].pid) or (
        psutil.Process(by_name["base-0"].pid).status() == psutil.STATUS_ZOMBIE
    )


def test_stop_and_status_are_fine_when_nothing_runs(tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    control.stop_stack(empty)
    assert control.read_status(empty) == []
    assert not control.is_running(empty)
    assert control.gateway_url(empty) is None
    control.stop_stack(empty, purge=True)
    assert not empty.exists()


def test_crash_loop_before_ready_fails_fast_not_at_the_timeout(home: Path) -> None:
    looping = InstanceSpec(
        name="looping-0",
        service="looping",
        command=[sys.executable, "-c", "raise SystemExit('bad settings')"],
        port=free_port(),
        readiness="tcp",
    )
    started = time.monotonic()
    with pytest.raises(control.StackStartError, match=r"looping-0 exited 5 times") as raised:
        control.start_plan(home, [looping], timeout=120, ready_timeout=100)
    assert time.monotonic() - started < 60  # backoff 0.5+1+2+4 s, far below the 100 s
    assert "bad settings" in str(raised.value)
    state = read_state(home)
    assert state is not None and state.instances[0].state == "failed"
    assert state.instances[0].restarts == 4 and state.instances[0].exit_code == 1
