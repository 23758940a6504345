"""`yardarm chaos ...` against a real supervisor running the topology's chaos controller
and two stand-in services (no datastore: its links lead nowhere, which is fine here)."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner, Result

from tests.chaos.conftest import free_base_port, standin
from tests.conftest import wait_for
from yardarm.cli import app
from yardarm.local import control
from yardarm.local.render import instances
from yardarm.local.state import InstanceStatus, read_state
from yardarm.local.supervisor import PROBE_INTERVAL_S, Timings
from yardarm.model import Topology

WORKERS = ["worker-0", "worker-1"]


@dataclass
class Stack:
    home: Path

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(app, [*args, "--home", str(self.home)], env={"COLUMNS": "200"})

    def chaos(self, *args: str) -> Result:
        return self.cli("chaos", *args)

    def row(self, name: str) -> InstanceStatus:
        return next(s for s in control.read_status(self.home) if s.name == name)

    def state(self) -> dict[str, Any]:
        result = self.chaos("status", "--json")
        assert result.exit_code == 0, result.output
        document: dict[str, Any] = json.loads(result.stdout)
        return document


@contextlib.contextmanager
def supervised(home: Path) -> Iterator[Stack]:
    """The controller exactly as the topology renders it, under the real supervisor."""
    topology = Topology(base_port=free_base_port())
    (chaos,) = [spec for spec in instances(topology, home) if spec.name == "chaos"]
    try:
        control.start_plan(home, [chaos, *(standin(name) for name in WORKERS)], timeout=90)
        yield Stack(home)
    finally:
        control.stop_stack(home)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with supervised(tmp_path_factory.mktemp("chaos-cli") / "home") as running:
        yield running


def test_partition_heal_and_status(stack: Stack) -> None:
    cut = stack.chaos("partition", "datastore-0", "--peer", "datastore-1")
    assert cut.exit_code == 0, cut.output
    assert "cut 2 links: datastore-0->datastore-1, datastore-1->datastore-0" in cut.stdout

    shown = stack.chaos("status")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert any("datastore-0->datastore-1" in line and "partitioned" in line for line in lines)
    assert any("datastore-0->datastore-2" in line and " ok " in line for line in lines)
    assert "paused: none" in shown.stdout
    assert any("partition" in line and "datastore-0" in line for line in lines)

    healed = stack.chaos("heal", "all")
    assert healed.exit_code == 0, healed.output
    assert "healed 6 links" in healed.stdout
    assert not any(link["partitioned"] for link in stack.state()["links"])


def test_delay_and_its_clearing(stack: Stack) -> None:
    slowed = stack.chaos("delay", "datastore-1", "--ms", "250", "--jitter-ms", "10")
    assert slowed.exit_code == 0, slowed.output
    assert "delay 250±10 ms on 4 links" in slowed.stdout
    delays = {link["name"]: link["delay_ms"] for link in stack.state()["links"]}
    assert {name for name, ms in delays.items() if ms == 250} == {
        name for name in delays if "datastore-1" in name
    }
    cleared = stack.chaos("delay", "datastore-1", "--ms", "0")
    assert cleared.exit_code == 0, cleared.output
    assert "delay cleared on 4 links" in cleared.stdout
    assert not any(link["delay_ms"] for link in stack.state()["links"])


def test_unknown_targets_are_answered_with_the_valid_ones(stack: Stack) -> None:
    process = stack.chaos("kill", "nope")
    assert process.exit_code == 1
    assert "valid targets: all, worker-0, worker-1" in process.stderr  # never the controller
    link = stack.chaos("partition", "worker-0")
    assert link.exit_code == 1
    assert "valid targets: all, datastore-0, datastore-1, datastore-2" in link.stderr


def test_a_negative_delay_is_refused_before_anything_is_sent(stack: Stack) -> None:
    before = stack.state()["total"]
    result = stack.chaos("delay", "datastore-0", "--ms", "-5")
    assert result.exit_code == 2
    assert "--ms" in result.output
    assert stack.state()["total"] == before


def test_a_killed_instance_is_restarted_by_the_supervisor(stack: Stack) -> None:
    victim = stack.row("worker-1")
    result = stack.chaos("kill", "worker-1")
    assert result.exit_code == 0, result.output
    assert f"killed worker-1 (pid {victim.pid})" in result.stdout

    def restarted() -> bool:
        row = stack.row("worker-1")
        return (
            row.restarts == victim.restarts + 1 and row.state == "ready" and row.pid != victim.pid
        )

    wait_for(restarted, 30, "worker-1 to be restarted")
    assert stack.row("worker-1").exit_code == -signal.SIGKILL
    assert stack.row("chaos").restarts == 0


def test_without_a_running_stack_it_says_to_start_one(tmp_path: Path) -> None:
    nothing = Stack(tmp_path / "empty")
    for args in (("kill", "worker-0"), ("status",)):
        result = nothing.chaos(*args)
        assert result.exit_code == 1
        assert "no stack is running" in result.stderr
        assert "run `yardarm up` first" in result.stderr


def test_a_paused_instance_is_not_restarted_and_down_stops_it_cleanly(tmp_path: Path) -> None:
    with supervised(tmp_path / "home") as stack:
        before = stack.row("worker-0")
        assert before.pid is not None
        paused = stack.chaos("pause", "worker-0")
        assert paused.exit_code == 0, paused.output
        process = psutil.Process(before.pid)
        wait_for(lambda: process.status() == psutil.STATUS_STOPPED, 10, "worker-0 to stop")
        # Many of the supervisor's probe intervals: a restart would have shown by now.
        time.sleep(10 * PROBE_INTERVAL_S)
        after = stack.row("worker-0")
        assert (after.state, after.restarts, after.pid) == ("ready", 0, before.pid)
        assert "paused: worker-0" in stack.chaos("status").stdout

        started = time.monotonic()
        down = stack.cli("down")
        assert down.exit_code == 0, down.output
        # Continued after its stop signal: it ends by SIGTERM, well before the grace
        # after which the supervisor would have had to SIGKILL it.
        assert time.monotonic() - started < Timings().stop_grace
        state = read_state(stack.home)
        assert state is not None
        row = next(s for s in state.instances if s.name == "worker-0")
        assert (row.state, row.exit_code) == ("stopped", -signal.SIGTERM)
        assert not process.is_running()
