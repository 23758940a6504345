"""What the CLI calls: start a supervisor for a home, watch it, stop it, read its state."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from yardarm.certificates import StackCertificates
from yardarm.local import processes
from yardarm.local.desired import (
    read_desired,
    read_ports,
    read_topology,
    write_desired,
    write_topology,
)
from yardarm.local.plan import port_plan
from yardarm.local.render import InstanceSpec, urls
from yardarm.local.state import (
    LIVE_STATES,
    InstanceStatus,
    StackState,
    log_dir,
    log_tail,
    read_state,
    state_path,
)
from yardarm.model import (
    SERVICE_NAMES,
    Topology,
    current_for,
    deployment_of,
    project_dir,
    scaled,
)

__all__ = [
    "InstanceStatus",
    "StackInfo",
    "StackStartError",
    "default_home",
    "gateway_url",
    "is_running",
    "log_path",
    "read_status",
    "start_plan",
    "start_stack",
    "stop_stack",
]

POLL_S = 0.2
ProgressCallback = Callable[[list[InstanceStatus]], None]
INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class StackStartError(RuntimeError):
    """The stack did not come up; the message names the instance and quotes its log."""


@dataclass(frozen=True)
class StackInfo:
    """A stack that has just become ready."""

    home: Path
    supervisor_pid: int
    instances: list[InstanceStatus]
    urls: dict[str, str]


def default_home() -> Path:
    """$YARDARM_HOME, else `.yardarm` in the project directory."""
    env = os.environ.get("YARDARM_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return project_dir() / ".yardarm"


def _lock_held(home: Path) -> bool:
    path = home / "supervisor.lock"
    if not path.is_file():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _alive(pid: int) -> bool:
    """Alive and not a zombie (reaps our own exited children on the way)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_running(home: Path) -> bool:
    """A supervisor is alive for this home and holds its lock."""
    state = read_state(home)
    if state is None or state.supervisor_pid is None:
        return False
    return _alive(state.supervisor_pid) and _lock_held(home)


def read_status(home: Path) -> list[InstanceStatus]:
    """Every instance as last recorded (empty when there is no stack here).

    A row that still claims to be live while no supervisor runs is reported as "stale":
    nobody is watching that process any more (`yardarm down` cleans up after it).
    """
    state = read_state(home)
    if state is None:
        return []
    if is_running(home):
        return list(state.instances)
    return [
        status.model_copy(update={"state": "stale"}) if status.state in LIVE_STATES else status
        for status in state.instances
    ]


def log_path(home: Path, instance: str) -> Path:
    """Where an instance's stdout and stderr go (the file may not exist yet)."""
    if not INSTANCE_NAME.fullmatch(instance) or ".." in instance:
        raise ValueError(f"not an instance name: {instance!r} (e.g. orders-0, nats, postgres)")
    return log_dir(home) / f"{instance}.log"


def stack_ca_file(home: Path) -> Path | None:
    """The CA that signs the stack's certificates when it runs with TLS, else None."""
    topology = read_topology(home)
    if topology is None:
        return None
    return StackCertificates(home).ca_file if topology.tls.enabled else None


def stack_ssl(home: Path) -> ssl.SSLContext | None:
    """A client context that trusts the stack's CA (None: plain HTTP)."""
    ca_file = stack_ca_file(home)
    return None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def service_url(home: Path, port: int) -> str:
    """The base URL of a local instance of the stack running from `home`."""
    scheme = "https" if stack_ca_file(home) is not None else "http"
    return f"{scheme}://127.0.0.1:{port}"


def _running_port(home: Path, service: str) -> int | None:
    """The port of a running stack's first instance of `service`, if any."""
    if not is_running(home):
        return None
    for status in read_status(home):
        if status.service == service and status.port:
            return status.port
    return None


def gateway_url(home: Path) -> str | None:
    """The running gateway's base URL, if a stack is running here."""
    port = _running_port(home, "gateway")
    return None if port is None else service_url(home, port)


def prometheus_url(home: Path) -> str | None:
    """The running stack's Prometheus, if it runs one (plain http on loopback)."""
    port = _running_port(home, "prometheus")
    return None if port is None else f"http://127.0.0.1:{port}"


def rollout_controller_url(home: Path) -> str | None:
    """The running stack's rollout controller (`yardarm rollout ...` talks to it)."""
    port = _running_port(home, "rollouts")
    return None if port is None else service_url(home, port)


def metrics_urls(home: Path) -> list[str]:
    """The base URL of every running service instance's `/metrics` (a gateway replica's
    is its own admin port: the public port is shared)."""
    topology = read_topology(home)
    if topology is None or not is_running(home):
        return []
    urls = []
    for status in read_status(home):
        if status.service not in SERVICE_NAMES or status.port is None:
            continue
        port = status.port
        if status.service == "gateway":
            port = topology.gateway_admin_port(int(status.name.rsplit("-", 1)[1]))
        urls.append(service_url(home, port))
    return urls


def _spawn_supervisor(home: Path, extra_args: list[str]) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    log_dir(home).mkdir(exist_ok=True)
    state_path(home).unlink(missing_ok=True)
    with (home / "supervisor.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "yardarm.local.supervisor", "--home", str(home), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _describe_failure(home: Path, state: StackState | None) -> str:
    if state is not None and state.error:
        return state.error
    waiting = [s for s in (state.instances if state else []) if s.state != "ready"]
    tail = log_tail(home / "supervisor.log")
    parts = []
    if waiting:
        first = waiting[0]
        parts.append(f"{first.name} is {first.state}")
        instance_tail = log_tail(log_dir(home) / f"{first.name}.log")
        if instance_tail:
            parts.append(f"last lines of its log:\n{instance_tail}")
    if tail:
        parts.append(f"supervisor log:\n{tail}")
    return "; ".join(parts) or "the supervisor exited without recording why"


def _wait_running(
    home: Path,
    proc: subprocess.Popen[bytes],
    on_progress: ProgressCallback | None,
    timeout: float,
) -> StackState:
    deadline = time.monotonic() + timeout
    while True:
        state = read_state(home)
        if state is not None and on_progress is not None:
            on_progress(list(state.instances))
        if state is not None and state.status == "running":
            return state
        if state is not None and state.status == "failed":
            message = _describe_failure(home, state)
            stop_stack(home)
            raise StackStartError(f"the stack failed to start: {message}")
        if proc.poll() is not None:
            state = read_state(home)
            message = _describe_failure(home, state)
            stop_stack(home)
            raise StackStartError(
                f"the supervisor exited (code {proc.returncode}) before the stack was ready: "
                f"{message}"
            )
        if time.monotonic() > deadline:
            message = _describe_failure(home, state)
            stop_stack(home)
            raise StackStartError(f"the stack was not ready after {timeout:g}s: {message}")
        time.sleep(POLL_S)


def _ports_in_use(ports: dict[str, int]) -> list[str]:
    """The ports this stack cannot listen on, as "8080 (gateway-0)" (empty: all free)."""
    busy = []
    for name, port in ports.items():
        with socket.socket() as sock:
            # Like the servers themselves: a port in TIME_WAIT from a stopped stack is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                why = "" if exc.errno == errno.EADDRINUSE else f": {exc.strerror}"
                busy.append(f"{port} ({name}){why}")
    return busy


def _prepare_start(home: Path, ports: dict[str, int]) -> None:
    """Refuse a second stack on one home or on taken ports; clear a dead stack's leftovers."""
    if is_running(home):
        state = read_state(home)
        pid = state.supervisor_pid if state else None
        raise StackStartError(
            f"already running (pid {pid}) from {home}; use `yardarm down` to stop it"
        )
    # No supervisor holds this home, so anything still marked for it is an orphan.
    processes.sweep(home)
    busy = _ports_in_use(ports)
    if busy:
        raise StackStartError(
            f"port {', '.join(busy)} already in use by another process; stop it, "
            "or give this stack another base port (`--base-port` or base_port in yardarm.yaml)"
        )
    home.mkdir(parents=True, exist_ok=True)


def _info(home: Path, state: StackState, addresses: dict[str, str]) -> StackInfo:
    assert state.supervisor_pid is not None
    return StackInfo(
        home=home,
        supervisor_pid=state.supervisor_pid,
        instances=list(state.instances),
        urls=addresses,
    )


def start_stack(
    home: Path,
    topology: Topology,
    on_progress: ProgressCallback | None = None,
    timeout: float = 120.0,
) -> StackInfo:
    """Start a supervisor for the topology and return once every instance is ready.

    The supervisor runs in its own session and outlives the caller; on failure it is
    stopped and StackStartError names the failing instance and quotes its log.
    """
    home = home.resolve()
    planned = deployment_of(topology, current_for(topology, read_desired(home)))
    _prepare_start(home, port_plan(topology, planned, read_ports(home)))
    write_topology(home, topology)
    proc = _spawn_supervisor(home, [])
    return _info(home, _wait_running(home, proc, on_progress, timeout), urls(topology))


def start_plan(
    home: Path,
    specs: list[InstanceSpec],
    *,
    on_progress: ProgressCallback | None = None,
    timeout: float = 120.0,
    ready_timeout: float | None = None,
) -> StackInfo:
    """Supervise an explicit list of instances (the runtime without a topology)."""
    from yardarm.local.supervisor import Plan

    home = home.resolve()
    _prepare_start(home, {spec.name: spec.port for spec in specs})
    plan_file = home / "plan.json"
    plan_file.write_text(Plan(instances=specs).model_dump_json(indent=2))
    args = ["--plan", str(plan_file)]
    if ready_timeout is not None:
        args += ["--ready-timeout", str(ready_timeout)]
    proc = _spawn_supervisor(home, args)
    state = _wait_running(home, proc, on_progress, timeout)
    return _info(home, state, {spec.name: f"http://127.0.0.1:{spec.port}" for spec in specs})


def _recorded_process(pid: int, since: float | None) -> psutil.Process | None:
    """The process we recorded, unless its pid now belongs to something newer."""
    try:
        proc = psutil.Process(pid)
        if since is not None and proc.create_time() > since + 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def _kill_leftovers(state: StackState) -> None:
    """The supervisor is gone: kill the process groups of children it left running."""
    for status in reversed(state.instances):
        if status.pid is None:
            continue
        proc = _recorded_process(status.pid, status.started_at)
        if proc is None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(status.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            proc.wait(timeout=10)


def stop_stack(home: Path, purge: bool = False, timeout: float = 60.0) -> None:
    """Stop the supervisor (it stops its children) and whatever it left behind."""
    home = home.resolve()
    state = read_state(home)
    pid = state.supervisor_pid if state else None
    if pid is not None:
        supervisor = _recorded_process(pid, state.started_at if state else None)
        if supervisor is not None and _lock_held(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if _alive(pid):
                # PR_SET_PDEATHSIG takes its children down with it.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                end = time.monotonic() + 10
                while _alive(pid) and time.monotonic() < end:
                    time.sleep(POLL_S)
    state = read_state(home)
    if state is not None:
        _kill_leftovers(state)
    # Descendants that left their process group still carry the home's mark.
    processes.sweep(home)
    if purge and home.exists():
        shutil.rmtree(home)


class ScaleFailedError(RuntimeError):
    """The stack could not be scaled; the message says why and what to do."""


@dataclass(frozen=True)
class TrackRow:
    """One service's track: its version, how many instances are desired, how many run."""

    service: str
    track: str
    version: str
    desired: int
    ready: int
    running: int


def scale_stack(
    home: Path,
    service: str,
    replicas: int,
    *,
    track: str | None = None,
    version: str | None = None,
    timeout: float = 120.0,
) -> StackState:
    """Change the desired state, have the supervisor reconcile it, and wait until it has.

    The change is validated by the model first (ScaleError, with what to do instead),
    recorded in `<home>/desired.json` under a lock (two scales never lose one), then the
    supervisor is told (SIGHUP). Returns the state once the generation is reconciled;
    ScaleFailedError when no stack runs or it did not finish within `timeout`.
    """
    home = home.resolve()
    if not is_running(home):
        raise ScaleFailedError(f"no stack is running from {home}; start it with `yardarm up`")
    topology = read_topology(home)
    if topology is None:
        raise ScaleFailedError(f"no stack has run from {home}; start one with `yardarm up`")
    with (home / "desired.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        desired = current_for(topology, read_desired(home))
        changed = scaled(topology, desired, service, replicas, track, version)
        write_desired(home, changed)
    state = read_state(home)
    if state is None or state.supervisor_pid is None:
        raise ScaleFailedError(f"the stack's state in {home} is unreadable; try `yardarm status`")
    os.kill(state.supervisor_pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(home)
        if state is not None and state.generation >= changed.generation:
            return state
        if not is_running(home):
            raise ScaleFailedError("the supervisor stopped; see `yardarm logs supervisor`")
        time.sleep(POLL_S)
    raise ScaleFailedError(
        f"not reconciled after {timeout:g}s (generation {changed.generation}); "
        "see `yardarm status` and `yardarm logs`"
    )


def track_rows(home: Path) -> list[TrackRow]:
    """Desired against actual, per service, track and version (empty without a stack)."""
    topology = read_topology(home)
    if topology is None:
        return []
    desired = current_for(topology, read_desired(home))
    statuses = read_status(home)
    rows = []
    for service, tracks in desired.services.items():
        for track, placed in tracks.items():
            mine = [
                s for s in statuses if s.service == service and s.track == track
                and s.version == placed.version
            ]  # fmt: skip
            rows.append(
                TrackRow(
                    service=service,
                    track=track,
                    version=placed.version,
                    desired=placed.replicas,
                    ready=sum(1 for s in mine if s.state == "ready"),
                    running=sum(1 for s in mine if s.state in LIVE_STATES),
                )
            )
    return rows
