"""kill, pause and resume through the controller, on real `sleep` processes named in a
state.json written the way the supervisor writes it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.chaos.conftest import ControllerProcess, marked_env, running_controller
from tests.conftest import wait_for
from yardarm.local.state import InstanceStatus, StackState, write_state

SLEEP = shutil.which("sleep")
pytestmark = pytest.mark.skipif(
    SLEEP is None and not os.environ.get("CI"), reason="no `sleep` binary on PATH"
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return (tmp_path_factory.mktemp("chaos-processes") / "home").resolve()


@pytest.fixture(scope="module")
def controller(home: Path) -> Iterator[ControllerProcess]:
    # Marked like every supervised child, so "kill all" would reach it if it did not
    # leave itself out.
    with running_controller(home, [], env=marked_env(home)) as running:
        yield running


class Sleepers:
    """`sleep` processes started as the supervisor starts instances, and their state.json."""

    def __init__(self, home: Path, controller: ControllerProcess) -> None:
        self.home = home
        self.controller = controller
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.rows: list[InstanceStatus] = []

    def start(self, name: str, *, state: str = "ready", marked: bool = True) -> int:
        assert SLEEP is not None
        env = {**os.environ, **(marked_env(self.home) if marked else {})}
        proc = subprocess.Popen([SLEEP, "300"], env=env, start_new_session=True)
        self.procs[name] = proc
        self.rows.append(
            InstanceStatus(
                name=name,
                service=name.rsplit("-", 1)[0],
                pid=proc.pid,
                state=state,  # type: ignore[arg-type]
                started_at=time.time(),
            )
        )
        self.save()
        return proc.pid

    def save(self) -> None:
        own = InstanceStatus(
            name="chaos",
            service="chaos",
            pid=self.controller.proc.pid,
            state="ready",
            started_at=time.time(),
        )
        write_state(self.home, StackState(status="running", instances=[own, *self.rows]))

    def status(self, name: str) -> str:
        return str(psutil.Process(self.procs[name].pid).status())

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def sleepers(home: Path, controller: ControllerProcess) -> Iterator[Sleepers]:
    running = Sleepers(home, controller)
    try:
        yield running
    finally:
        running.close()


def fault(controller: ControllerProcess, **body: Any) -> httpx.Response:
    return httpx.post(f"{controller.url}/faults", json=body, timeout=10)


def test_kill_sends_sigkill_to_the_recorded_process(sleepers: Sleepers) -> None:
    pid = sleepers.start("datastore-1")
    sleepers.start("orders-0")
    answer = fault(sleepers.controller, action="kill", target="datastore-1")
    assert answer.status_code == 200, answer.text
    assert answer.json()["applied"]["instances"] == [{"instance": "datastore-1", "pid": pid}]
    assert sleepers.procs["datastore-1"].wait(timeout=10) == -signal.SIGKILL
    assert sleepers.procs["orders-0"].poll() is None


def test_pause_stops_the_process_and_resume_continues_it(sleepers: Sleepers) -> None:
    pid = sleepers.start("datastore-2")
    controller = sleepers.controller
    assert fault(controller, action="pause", target="datastore-2").status_code == 200
    wait_for(lambda: sleepers.status("datastore-2") == psutil.STATUS_STOPPED, 10, "SIGSTOP")
    document = httpx.get(f"{controller.url}/faults", timeout=10).json()
    assert document["paused"] == [{"instance": "datastore-2", "pid": pid}]

    assert fault(controller, action="resume", target="datastore-2").status_code == 200
    wait_for(lambda: sleepers.status("datastore-2") != psutil.STATUS_STOPPED, 10, "SIGCONT")
    assert httpx.get(f"{controller.url}/faults", timeout=10).json()["paused"] == []
    assert sleepers.procs["datastore-2"].poll() is None  # alive all along


def test_a_paused_process_can_be_killed(sleepers: Sleepers) -> None:
    sleepers.start("orders-1")
    assert fault(sleepers.controller, action="pause", target="orders-1").status_code == 200
    wait_for(lambda: sleepers.status("orders-1") == psutil.STATUS_STOPPED, 10, "SIGSTOP")
    assert fault(sleepers.controller, action="kill", target="orders-1").status_code == 200
    assert sleepers.procs["orders-1"].wait(timeout=10) == -signal.SIGKILL


def test_processes_that_cannot_be_trusted_are_left_alone(sleepers: Sleepers) -> None:
    controller = sleepers.controller
    # A pid that is not marked for this home is somebody else's process (a reused pid).
    sleepers.start("stranger-0", marked=False)
    answer = fault(controller, action="kill", target="stranger-0")
    assert answer.status_code == 409, answer.text
    assert "no running process of this stack" in answer.json()["detail"]
    # A process the supervisor still waits on must not be paused: it would fail its start.
    sleepers.start("starting-0", state="starting")
    answer = fault(controller, action="pause", target="starting-0")
    assert answer.status_code == 409
    assert "once it is ready" in answer.json()["detail"]
    # A recorded pid whose process is gone.
    sleepers.start("gone-0")
    sleepers.procs["gone-0"].kill()
    sleepers.procs["gone-0"].wait()
    assert fault(controller, action="resume", target="gone-0").status_code == 409

    # A positive control: a trusted instance killed after those refusals is seen dead, so
    # a signal the refused requests had sent would have landed by now as well.
    sleepers.start("witness-0")
    assert fault(controller, action="kill", target="witness-0").status_code == 200
    assert sleepers.procs["witness-0"].wait(timeout=10) == -signal.SIGKILL
    for name in ("stranger-0", "starting-0"):
        assert sleepers.procs[name].poll() is None
        assert sleepers.status(name) != psutil.STATUS_STOPPED


def test_unknown_process_target_lists_the_valid_ones(sleepers: Sleepers) -> None:
    sleepers.start("nats")
    sleepers.start("datastore-0")
    answer = fault(sleepers.controller, action="pause", target="datastore-9")
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["valid"] == ["all", "nats", "datastore-0"]  # never the controller itself
    assert "valid targets: all, nats, datastore-0" in problem["detail"]


def test_kill_all_kills_every_instance_but_the_controller(sleepers: Sleepers) -> None:
    for name in ("nats", "datastore-0", "datastore-1"):
        sleepers.start(name)
    answer = fault(sleepers.controller, action="kill", target="all")
    assert answer.status_code == 200, answer.text
    reached = {row["instance"] for row in answer.json()["applied"]["instances"]}
    assert reached == {"nats", "datastore-0", "datastore-1"}
    for proc in sleepers.procs.values():
        assert proc.wait(timeout=10) == -signal.SIGKILL
    assert sleepers.controller.proc.poll() is None
    assert httpx.get(f"{sleepers.controller.url}/healthz", timeout=10).status_code == 200


def test_without_state_json_process_faults_are_refused(
    home: Path, controller: ControllerProcess
) -> None:
    (home / "state.json").unlink(missing_ok=True)
    answer = fault(controller, action="kill", target="datastore-0")
    assert answer.status_code == 409
    assert "state.json" in answer.json()["detail"]


def test_resume_all_resumes_only_what_is_paused(sleepers: Sleepers) -> None:
    paused_pid = sleepers.start("datastore-0")
    sleepers.start("datastore-1")
    assert fault(sleepers.controller, action="pause", target="datastore-0").status_code == 200
    wait_for(lambda: sleepers.status("datastore-0") == psutil.STATUS_STOPPED, 10, "SIGSTOP")
    answer = fault(sleepers.controller, action="resume", target="all")
    assert answer.status_code == 200, answer.text
    assert answer.json()["applied"]["instances"] == [{"instance": "datastore-0", "pid": paused_pid}]
    wait_for(lambda: sleepers.status("datastore-0") != psutil.STATUS_STOPPED, 10, "SIGCONT")
