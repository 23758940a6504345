"""The local adapter's answers from a stack's recorded files and from the kernel, without
starting a stack (the end-to-end modules check it against a running one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.test_datastore_chaos import FAULTS, LINK_FAULTS, _fault_kinds
from tests.harness.adapter import Instance, LinkFaults, Unsupported
from tests.harness.local import LocalStackTarget, Stack
from yardarm.local.state import InstanceStatus, StackState, write_state
from yardarm.model import Topology

BASE = 40000


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home as `yardarm up` leaves it: its topology and state.json."""
    topology = Topology.model_validate(
        {"base_port": BASE, "services": {"gateway": {"replicas": 2}}}
    )
    (tmp_path / "topology.json").write_text(topology.model_dump_json())
    rows = [
        InstanceStatus(name="nats", service="nats", pid=11, port=BASE + 40, state="ready"),
        InstanceStatus(name="postgres", service="postgres", pid=12, port=BASE + 42),
        InstanceStatus(name="datastore-1", service="datastore", pid=13, port=BASE + 11),
        InstanceStatus(name="gateway-1", service="gateway", pid=14, port=BASE, restarts=2),
        InstanceStatus(name="orders-0", service="orders", port=BASE + 20, state="restarting"),
    ]
    write_state(tmp_path, StackState(base_port=BASE, instances=rows))
    return tmp_path


def _target(home: Path) -> LocalStackTarget:
    return LocalStackTarget(Stack(home=home, base_port=BASE))


def test_addresses_come_from_the_recorded_topology(home: Path) -> None:
    target = _target(home)
    assert target.gateway == f"http://127.0.0.1:{BASE}"
    assert target.gateway_admin == [f"http://127.0.0.1:{BASE + 1}", f"http://127.0.0.1:{BASE + 2}"]
    assert target.datastore == [f"http://127.0.0.1:{BASE + 10 + i}" for i in range(3)]
    assert target.nats_url == f"nats://127.0.0.1:{BASE + 40}"
    assert urlsplit(target.postgres_dsn("orders")).port == BASE + 42
    assert target.postgres_dsn("orders").endswith("/orders")
    assert target.ssl is None


def test_instances_are_the_recorded_rows_with_their_own_addresses(home: Path) -> None:
    listed = {inst.name: inst for inst in _target(home).instances()}
    assert list(listed) == ["nats", "postgres", "datastore-1", "gateway-1", "orders-0"]
    assert listed["nats"].url == f"nats://127.0.0.1:{BASE + 40}"
    assert urlsplit(listed["postgres"].url or "").port == BASE + 42
    assert listed["datastore-1"].url == f"http://127.0.0.1:{BASE + 11}"
    # A gateway replica is reached on its own admin port, not the shared public one.
    assert listed["gateway-1"].url == f"http://127.0.0.1:{BASE + 2}"
    assert (listed["gateway-1"].pid, listed["gateway-1"].restarts) == (14, 2)
    assert listed["orders-0"].pid is None
    # No supervisor holds this home: rows that claim to be live are stale, as in `status`.
    assert {inst.state for inst in listed.values()} == {"stale"}
    assert _target(home).instance("fulfillment-0") is None


def _seen(pid: int | None) -> Instance:
    return Instance("x-0", "x", "stable", "0", "ready", 0, pid, None)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _until_state(pid: int, letter: str) -> None:
    """Wait (10 s at most) until the kernel shows `pid` in state `letter`."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != letter:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {letter}"
        time.sleep(0.05)


def test_process_state_is_what_the_kernel_shows(home: Path, child: subprocess.Popen[bytes]) -> None:
    target = _target(home)
    assert target.process_state(_seen(os.getpid())) == "running"
    assert target.process_state(_seen(None)) is None
    os.kill(child.pid, signal.SIGSTOP)
    _until_state(child.pid, "T")
    assert target.process_state(_seen(child.pid)) == "stopped"
    os.kill(child.pid, signal.SIGCONT)
    os.kill(child.pid, signal.SIGKILL)
    _until_state(child.pid, "Z")  # dead, not yet reaped: gone all the same
    assert target.process_state(_seen(child.pid)) == "gone"
    child.wait()
    assert target.process_state(_seen(child.pid)) == "gone"


class _NoLinks(LocalStackTarget):
    """A target without link proxies."""

    def links(self) -> LinkFaults:
        raise Unsupported("no link proxies")


def test_a_target_without_link_proxies_leaves_out_exactly_the_link_faults(home: Path) -> None:
    assert _fault_kinds(_target(home)) == set(FAULTS)
    assert _fault_kinds(_NoLinks(Stack(home=home, base_port=BASE))) == set(FAULTS) - LINK_FAULTS
