"""The local target: a stack `yardarm up --detach` runs as processes on this machine.

`Stack` drives it the way a user does (the CLI, on its own home and base port);
`LocalStackTarget` answers the checks' questions (`tests.harness.adapter.StackTarget`)
from what the local target keeps: the topology and `state.json` in the stack's home,
loopback addresses from the port plan, faults through the stack's chaos controller
(its API, which `yardarm chaos` calls), spans from `<home>/telemetry/*.jsonl`. This is
the only place the checks' knowledge of those details lives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tests.harness.adapter import (
    FaultRefused,
    Instance,
    LinkFaults,
    ProcessState,
    Recovery,
    Span,
)
from yardarm import tracing_view
from yardarm.chaos.client import ChaosClientError, fetch_state, send_fault
from yardarm.chaos.config import ALL, Action
from yardarm.credentials import StackCredentials
from yardarm.local import control, infra
from yardarm.local.desired import read_topology
from yardarm.local.plan import port_plan
from yardarm.local.supervisor import Timings
from yardarm.model import Topology

LOOPBACK = "127.0.0.1"
# How often a wait re-reads state.json (the supervisor rewrites it on every change).
POLL_S = 0.3


def _ports_free(base: int) -> bool:
    for port in port_plan(Topology(base_port=base)).values():
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def pick_base_port(start: int) -> int:
    """A base port whose derived ports are all free.

    Callers start below 32768, under Linux's ephemeral range (32768-60999): there, an
    outgoing connection of any process may take one of the stack's ports between this
    check and the bind.
    """
    for base in range(start, start + 2000, 100):
        if _ports_free(base):
            return base
    raise RuntimeError("no free port range for a test stack")


@dataclass
class Stack:
    """A stack the tests drive through the CLI. It runs without its Prometheus unless
    `prometheus` says so: a second scraper and rule evaluator on a 2-core machine costs
    the checks under test CPU, and the observability tests start one on purpose."""

    home: Path
    base_port: int
    config: Path | None = None  # the yardarm.yaml it runs with
    prometheus: bool = False
    env: Mapping[str, str] = field(default_factory=dict)  # for the CLI and so the stack

    def up(self) -> Stack:
        """`yardarm up --detach` on the stack's base port (and config)."""
        config = () if self.config is None else ("--config", str(self.config))
        extra = () if self.prometheus else ("--no-prometheus",)
        self.cli("up", "--detach", "--base-port", str(self.base_port), *config, *extra)
        return self

    @property
    def gateway(self) -> str:
        return f"http://{LOOPBACK}:{self.base_port}"

    def cli(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, "YARDARM_HOME": str(self.home), "COLUMNS": "200"}
        result = subprocess.run(
            [sys.executable, "-m", "yardarm", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"yardarm {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.cli("status", "--json").stdout)
        return rows

    def restock(self, available: int = 10_000_000) -> None:
        """Stock to spare for every SKU of the demo catalog, so every order a long load
        places runs its whole saga (an order for stock that ran out ends before
        fulfillment hears of it, and fulfillment's series go quiet)."""
        import httpx

        from yardarm.catalog import DEMO_CATALOG

        token = (self.home / "admin-token").read_text().strip()
        for item in DEMO_CATALOG:
            answer = httpx.put(
                f"{self.gateway}/api/kv/stock/{item['sku']}",
                json={"value": {**item, "available": available}},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert answer.status_code in (200, 201), answer.text


def start_stack(tmp: Path, base_port: int) -> Stack:
    """A default stack on `base_port`, started (`yardarm up --detach`)."""
    stack = Stack(home=tmp / f"stack-{base_port}", base_port=base_port)
    started = time.monotonic()
    stack.cli("up", "--detach", "--base-port", str(base_port), "--no-prometheus")
    # The bound is a minute on a fresh clone; allow a wide margin on a busy CI box.
    assert time.monotonic() - started < 180
    return stack


def stop_stack(stack: Stack) -> None:
    """`yardarm down`, whatever state the stack is in."""
    stack.cli("down", check=False)


def configured_stack(tmp: Path, topology: str, start_port: int) -> Stack:
    """A stack whose yardarm.yaml says `topology`, on the first free base port from
    `start_port`; it is not started yet (`.up()`)."""
    config = tmp / "yardarm.yaml"
    config.write_text(topology)
    return Stack(home=tmp / "home", base_port=pick_base_port(start_port), config=config)


class BackgroundLoad:
    """`yardarm load --json` against a stack, running while the test does something else."""

    def __init__(self, stack: Stack, *args: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "yardarm", "load", *args, "--json"],
            env={**os.environ, "YARDARM_HOME": str(stack.home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def running(self) -> bool:
        return self._proc.poll() is None

    def interrupt(self) -> None:
        """End the run now (SIGINT: it stops sending, finishes and prints its summary)."""
        self._proc.send_signal(signal.SIGINT)

    def summary(self, timeout: float) -> dict[str, Any]:
        """Wait for the run's end; its summary (the run must have exited 0)."""
        out, err = self._proc.communicate(timeout=timeout)
        assert self._proc.returncode == 0, err
        summary: dict[str, Any] = json.loads(out)
        return summary

    def __enter__(self) -> BackgroundLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def _proc_state(pid: int) -> str | None:
    """The kernel's state letter for `pid` (T: stopped, Z: not yet reaped); None: gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


class LocalStackTarget:
    """A `StackTarget` (and its `LinkFaults`) for a stack the local supervisor runs.

    Built once the stack is up: the addresses come from the topology `yardarm up`
    recorded in the home, so every target-specific detail stays in this class.
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.home = stack.home

    @cached_property
    def _topology(self) -> Topology:
        topology = read_topology(self.home)
        assert topology is not None, f"no stack has run from {self.home}"
        return topology

    def _url(self, port: int) -> str:
        return f"{self._topology.tls.scheme}://{LOOPBACK}:{port}"

    # --- where the stack answers ---------------------------------------------------

    @property
    def gateway(self) -> str:
        return self._url(self._topology.gateway_port)

    @property
    def gateway_admin(self) -> list[str]:
        replicas = self._topology.services.gateway.replicas
        return [self._url(self._topology.gateway_admin_port(i)) for i in range(replicas)]

    @property
    def datastore(self) -> list[str]:
        replicas = self._topology.services.datastore.replicas
        return [self._url(self._topology.datastore_port(i)) for i in range(replicas)]

    @property
    def nats_url(self) -> str:
        return f"nats://{LOOPBACK}:{self._topology.nats_port}"

    def postgres_dsn(self, database: str) -> str:
        return infra.postgres_dsn(self._topology.postgres_port, database)

    @property
    def admin_token(self) -> str:
        return StackCredentials(self.home).token("admin")

    @cached_property
    def ssl(self) -> ssl.SSLContext | None:
        return control.stack_ssl(self.home)

    @property
    def recovery(self) -> Recovery:
        timings = Timings()
        return Recovery(backoff_max_s=timings.backoff_max, ready_timeout_s=timings.ready_timeout)

    @property
    def artifacts(self) -> Path:
        return self.home

    # --- instances -----------------------------------------------------------------

    def _instance_url(self, service: str, name: str, port: int | None) -> str | None:
        if port is None:
            return None
        if service == "nats":
            return f"nats://{LOOPBACK}:{port}"
        if service == "postgres":
            return infra.postgres_dsn(port)
        if service == "gateway":  # replicas share the public port; each has its admin one
            ordinal = int(name.rsplit("-", 1)[1])
            return self._url(self._topology.gateway_admin_port(ordinal))
        return self._url(port)

    def instances(self) -> list[Instance]:
        return [
            Instance(
                name=status.name,
                service=status.service,
                track=status.track,
                version=status.version,
                state=status.state,
                restarts=status.restarts,
                pid=status.pid,
                url=self._instance_url(status.service, status.name, status.port),
            )
            for status in control.read_status(self.home)
        ]

    def instance(self, name: str) -> Instance | None:
        return next((inst for inst in self.instances() if inst.name == name), None)

    # --- process faults, through the chaos controller --------------------------------

    def _fault(
        self, action: Action, name: str, ms: int | None = None, jitter_ms: int | None = None
    ) -> None:
        try:
            send_fault(self.home, action, name, ms=ms, jitter_ms=jitter_ms)
        except ChaosClientError as exc:
            raise FaultRefused(f"{action} {name}: {exc.message}") from exc

    def kill(self, name: str) -> None:
        self._fault("kill", name)

    def pause(self, name: str) -> None:
        self._fault("pause", name)

    def resume(self, name: str) -> None:
        self._fault("resume", name)

    def _controller_state(self) -> dict[str, Any]:
        try:
            return fetch_state(self.home)
        except ChaosClientError as exc:
            raise FaultRefused(f"the chaos controller's state: {exc.message}") from exc

    def paused(self) -> list[str]:
        return [str(row["instance"]) for row in self._controller_state()["paused"]]

    def faults_counted(self) -> Mapping[str, int]:
        counts: Counter[str] = Counter()
        for row in self._controller_state()["faults"]:
            counts[str(row["action"])] += int(row["count"])
        return counts

    def process_state(self, seen: Instance) -> ProcessState | None:
        if seen.pid is None:
            return None
        letter = _proc_state(seen.pid)
        if letter in (None, "Z"):
            return "gone"
        return "stopped" if letter == "T" else "running"

    def wait_ready(
        self, name: str, bound_s: float, *, replacing: Instance | None = None
    ) -> Instance | None:
        deadline = time.monotonic() + bound_s
        while True:
            now = self.instance(name)
            if (
                now is not None
                and now.state == "ready"
                and (replacing is None or now.pid not in (None, replacing.pid))
            ):
                return now
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_S)

    def restart(self, name: str, bound_s: float) -> Instance | None:
        before = self.instance(name)
        self.kill(name)
        return self.wait_ready(name, bound_s, replacing=before)

    # --- telemetry -----------------------------------------------------------------

    def trace(self, trace_id: str) -> list[Span]:
        return tracing_view.load_trace(self.home, trace_id)

    # --- link faults: the chaos controller's link proxies ----------------------------

    def links(self) -> LinkFaults:
        return self

    def partition(self, name: str) -> None:
        self._fault("partition", name)

    def heal(self, name: str) -> None:
        self._fault("heal", name)

    def heal_all(self) -> None:
        self._fault("heal", ALL)

    def delay(self, name: str, ms: int, jitter_ms: int = 0) -> None:
        self._fault("delay", name, ms=ms, jitter_ms=jitter_ms)

    def faulted_links(self) -> list[str]:
        return [
            str(link["name"])
            for link in self._controller_state()["links"]
            if link["partitioned"] or link["delay_ms"]
        ]
