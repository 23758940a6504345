"""The supervisor daemon: starts the stack's processes in order, keeps them up, stops them.

Run as `python -m yardarm.local.supervisor --home H` (the topology comes from
`<home>/topology.json`) or with `--plan FILE` (a JSON list of instance specs), which is
how tests drive it with small stand-in processes. One supervisor per home, guarded by an
fcntl lock on `<home>/supervisor.lock`. Every child runs in its own process group and
gets SIGKILL when the supervisor dies (PR_SET_PDEATHSIG), so nothing outlives it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import functools
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict

from yardarm.local import infra, readiness
from yardarm.local.desired import read_desired, read_topology, topology_path
from yardarm.local.processes import kill_group, mark, sweep
from yardarm.local.render import (
    InstanceSpec,
    instances,
    rendered,
    routing_writer,
    write_flags,
)
from yardarm.local.state import (
    InstanceStatus,
    StackState,
    log_dir,
    log_tail,
    write_state,
)
from yardarm.model import Topology
from yardarm.routing_writer import Endpoint, PublishError, RoutingWriter

log = logging.getLogger("yardarm.supervisor")

PR_SET_PDEATHSIG = 1
PROBE_INTERVAL_S = 0.2
# A CLI checking whether the lock is held takes it for an instant; retry past that.
LOCK_ATTEMPTS = 20
LOCK_RETRY_S = 0.05


class Plan(BaseModel):
    """Everything a supervisor runs: instances in dependency order, plus the flag file."""

    model_config = ConfigDict(extra="forbid")

    instances: list[InstanceSpec]
    base_port: int | None = None
    flags: dict[str, Any] | None = None


@dataclass(frozen=True)
class Timings:
    """How patient the supervisor is (seconds)."""

    ready_timeout: float = 90.0
    # A process that keeps exiting before its first readiness is broken, not slow.
    start_attempts: int = 5
    stop_grace: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    healthy_reset: float = 30.0
    # How long every gateway replica may take to route by a new routing document.
    routing_timeout: float = 10.0


class SupervisorLockedError(RuntimeError):
    """Another supervisor already owns this home."""


def lock_holder(home: Path) -> int | None:
    """The pid written into the lock file by the supervisor that holds (or held) it."""
    try:
        text = (home / "supervisor.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def acquire_lock(home: Path) -> IO[str]:
    """Hold `<home>/supervisor.lock` for the life of the process (released on exit)."""
    home.mkdir(parents=True, exist_ok=True)
    handle = (home / "supervisor.lock").open("a+")
    for attempt in range(LOCK_ATTEMPTS):
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt + 1 < LOCK_ATTEMPTS:
                time.sleep(LOCK_RETRY_S)
    else:
        handle.close()
        holder = lock_holder(home)
        pid = f" (pid {holder})" if holder else ""
        raise SupervisorLockedError(
            f"a supervisor is already running for {home}{pid}; use `yardarm down` to stop it"
        )
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _die_with(supervisor_pid: int) -> Callable[[], None]:
    """A preexec_fn: in the child, before exec, ask for SIGKILL when the supervisor dies."""

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # The supervisor may have died between fork and prctl: then nobody will signal us.
        if os.getppid() != supervisor_pid:
            os._exit(1)

    return arm


async def wait_process(proc: subprocess.Popen[bytes], timeout: float | None = None) -> int | None:
    """Wait for a child to exit without polling (a pidfd becomes readable); None: timed out."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return proc.wait()
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited.wait(), timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.poll()


class StartupFailedError(Exception):
    """An instance could not be brought up; the message names it and shows its log."""


@dataclass
class _Instance:
    spec: InstanceSpec
    status: InstanceStatus
    log_path: Path
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    proc: subprocess.Popen[bytes] | None = None


Render = Callable[[], tuple[list[InstanceSpec], int]]
"""The stack's processes as desired now, and that desire's generation."""


class Supervisor:
    """Owns the processes of one home and records them in state.json.

    With `render`, SIGHUP makes it reconcile to the desired state: instances that are
    new start (and must be ready) first, an instance whose version changed is replaced,
    then the gateways' endpoints are published (`publisher`) and, once every gateway
    routes by them, the instances that left are stopped, each draining on SIGTERM.
    """

    def __init__(
        self,
        home: Path,
        specs: list[InstanceSpec],
        *,
        base_port: int | None = None,
        timings: Timings | None = None,
        render: Render | None = None,
        publisher: RoutingWriter | None = None,
        generation: int = 0,
    ) -> None:
        self.home = home
        self.timings = timings or Timings()
        log_dir(home).mkdir(parents=True, exist_ok=True)
        self.instances = [self._new_instance(spec) for spec in specs]
        self.state = StackState(
            base_port=base_port,
            supervisor_pid=os.getpid(),
            started_at=time.time(),
            status="starting",
            instances=[inst.status for inst in self.instances],
            generation=generation,
        )
        self._stop = asyncio.Event()
        self._reconcile_wanted = asyncio.Event()
        self._render = render
        self._publisher = publisher
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._late: set[str] = set()  # started by a reconcile: a failure fails only them
        self._bootstrap: dict[str, frozenset[Endpoint]] = {}  # what the gateways start with
        for spec in specs:
            if spec.upstream is not None and spec.endpoint is not None:
                known = self._bootstrap.get(spec.upstream, frozenset())
                self._bootstrap[spec.upstream] = known | {Endpoint(spec.endpoint, spec.track)}

    @property
    def by_name(self) -> dict[str, _Instance]:
        return {inst.spec.name: inst for inst in self.instances}

    def _new_instance(self, spec: InstanceSpec) -> _Instance:
        return _Instance(
            spec=spec,
            status=InstanceStatus(
                name=spec.name,
                service=spec.service,
                port=spec.port,
                version=spec.version,
                track=spec.track,
            ),
            log_path=log_dir(self.home) / f"{spec.name}.log",
        )

    def save(self) -> None:
        self.state.instances = [inst.status for inst in self.instances]
        write_state(self.home, self.state)

    def _set(self, inst: _Instance, **changes: Any) -> None:
        inst.status = inst.status.model_copy(update=changes)
        self.save()

    # --- one instance -------------------------------------------------------------

    def _spawn(self, inst: _Instance) -> None:
        spec = inst.spec
        with inst.log_path.open("ab") as out:
            out.write(f"--- yardarm: starting {spec.name}: {' '.join(spec.command)}\n".encode())
            out.flush()
            inst.proc = subprocess.Popen(
                spec.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env, **mark(self.home)},
                cwd=spec.cwd,
                user=spec.run_as_uid,
                group=spec.run_as_gid,
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
            )
        self._set(inst, pid=inst.proc.pid, state="starting", started_at=time.time())
        log.info("started %s (pid %d)", spec.name, inst.proc.pid)

    async def _wait_ready(
        self, inst: _Instance, deadline: float | None
    ) -> Literal["ready", "exited", "timeout"]:
        assert inst.proc is not None
        while True:
            if inst.proc.poll() is not None:
                return "exited"
            if deadline is not None and time.monotonic() > deadline:
                return "timeout"
            if await readiness.probe(inst.spec):
                return "ready"
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _wait_exit(self, inst: _Instance) -> int:
        assert inst.proc is not None
        code = await wait_process(inst.proc)
        assert code is not None
        return code

    def _failed(self, inst: _Instance, why: str) -> StartupFailedError:
        """Mark the instance failed; the error names it and quotes the end of its log."""
        self._set(inst, state="failed")
        tail = log_tail(inst.log_path)
        message = f"{inst.spec.name} {why}" + (f"; last lines of its log:\n{tail}" if tail else "")
        return StartupFailedError(message)

    async def _prepare(self, inst: _Instance) -> None:
        """One-time setup before the first start (initdb for Postgres)."""
        if inst.spec.readiness == "postgres" and inst.spec.cwd:
            try:
                await asyncio.to_thread(infra.prepare_postgres, Path(inst.spec.cwd))
            except subprocess.CalledProcessError as exc:
                output = (exc.stderr or b"").decode(errors="replace").strip()
                raise self._failed(inst, f"could not be prepared (initdb): {output}") from exc
            except OSError as exc:
                raise self._failed(inst, f"could not be prepared: {exc}") from exc

    async def _run_instance(self, inst: _Instance) -> None:
        """Start after the dependencies are ready; restart on every crash, with backoff."""
        for dep in inst.spec.depends_on:
            await self.by_name[dep].ready.wait()
        await self._prepare(inst)
        t = self.timings
        deadline: float | None = time.monotonic() + t.ready_timeout
        backoff = t.backoff_initial
        while True:
            try:
                self._spawn(inst)
            except OSError as exc:
                raise self._failed(inst, f"could not be started: {exc}") from exc
            outcome = await self._wait_ready(inst, deadline)
            if outcome == "timeout":
                raise self._failed(inst, f"was not ready after {t.ready_timeout:g}s")
            if outcome == "ready":
                deadline = None
                ready_at = time.monotonic()
                self._set(inst, state="ready")
                inst.ready.set()
                log.info("%s is ready", inst.spec.name)
                code = await self._wait_exit(inst)
                if time.monotonic() - ready_at >= t.healthy_reset:
                    backoff = t.backoff_initial
            else:
                assert inst.proc is not None
                code = inst.proc.returncode
            assert inst.proc is not None
            # Whatever the crashed process left in its group would hold its port.
            kill_group(inst.proc.pid, signal.SIGKILL)
            log.warning("%s exited with %s", inst.spec.name, code)
            self._set(inst, state="crashed", exit_code=code)
            if deadline is not None:
                attempts = inst.status.restarts + 1
                if attempts >= t.start_attempts:
                    raise self._failed(
                        inst,
                        f"exited {attempts} times before it was ready (last exit code {code})",
                    )
                if time.monotonic() + backoff > deadline:
                    raise self._failed(inst, f"exited with code {code} before it was ready")
            self._set(inst, state="restarting", restarts=inst.status.restarts + 1)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, t.backoff_max)

    # --- the stack ----------------------------------------------------------------

    async def _stop_instance(self, inst: _Instance) -> None:
        proc = inst.proc
        final = "failed" if inst.status.state == "failed" else "stopped"
        if proc is None:
            self._set(inst, state=final)
            return
        if proc.poll() is None:
            kill_group(proc.pid, inst.spec.stop_signal)
            # A paused (SIGSTOPped) process would sit on its stop signal until the grace
            # runs out; SIGCONT after it, as systemd does, so it stops cleanly instead.
            kill_group(proc.pid, signal.SIGCONT)
            if await wait_process(proc, self.timings.stop_grace) is None:
                log.warning("%s ignored its stop signal; killing it", inst.spec.name)
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
        # Sweep what the leader left behind in its group (e.g. Postgres backends).
        kill_group(proc.pid, signal.SIGKILL)
        self._set(inst, state=final, exit_code=proc.returncode)
        log.info("stopped %s", inst.spec.name)

    async def _all_ready(self) -> None:
        for inst in list(self.instances):
            await inst.ready.wait()

    def _launch(self, inst: _Instance, *, late: bool) -> None:
        name = inst.spec.name
        if late:
            self._late.add(name)
        self._tasks[name] = asyncio.create_task(self._run_instance(inst), name=name)

    def _task_ended(self, task: asyncio.Task[None]) -> str | None:
        """Handle an instance task that ended; the stack's error when it must fail."""
        name = task.get_name()
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if task.cancelled():
            return None
        exc = task.exception()
        if exc is None:
            return None
        if name in self._late:  # a reconcile's instance: it fails alone, the stack runs on
            log.error("%s", exc)
            return None
        if not isinstance(exc, StartupFailedError):
            log.error("internal error", exc_info=exc)
        return str(exc)

    # --- reconciling to the desired state --------------------------------------------

    async def _reconcile_loop(self) -> None:
        """Reconcile on every SIGHUP, one reconcile at a time, once the stack is up."""
        await self._all_ready()
        # A stack scaled before comes back up: its routing document lists endpoints.
        await self._record(self._publish(frozenset(), only_if_listed=True))
        # A scale asked for while the stack was starting is reconciled now.
        desired = read_desired(self.home)
        if desired is not None and desired.generation > self.state.generation:
            self._reconcile_wanted.set()
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            if self._render is None:
                log.warning("SIGHUP ignored: this supervisor runs a fixed plan")
                continue
            await self._record(self._reconcile())

    async def _record(self, work: Awaitable[list[str]]) -> None:
        """Run a reconcile step; its problems (or its failure) go into state.json, and
        the supervisor keeps supervising whatever happened."""
        try:
            problems = await work
        except Exception as exc:  # a bad render or an unexpected answer
            log.exception("reconcile failed")
            problems = [f"reconcile failed: {exc}"]
        for problem in problems:
            log.warning("%s", problem)
        self.state.reconcile_error = "; ".join(problems) or None
        self.save()

    async def _reconcile(self) -> list[str]:
        """Bring the instances to the rendered desired state; the problems met."""
        assert self._render is not None
        specs, generation = await asyncio.to_thread(self._render)
        wanted = {spec.name: spec for spec in specs}
        current = self.by_name
        log.info("reconciling to generation %d", generation)
        problems: list[str] = []
        # 1. Surge: what is new (or failed before) starts and must be ready first.
        fresh = []
        for name, spec in wanted.items():
            inst = current.get(name)
            if inst is None:
                inst = self._new_instance(spec)
                self.instances.append(inst)
            elif inst.status.state != "failed" or name in self._tasks:
                continue
            inst.spec = spec
            self._launch(inst, late=True)
            fresh.append(inst)
        problems += await self._await_ready(fresh)
        # 2. A changed version replaces its instance in place (same name, same port).
        for name, spec in wanted.items():
            inst = current.get(name)
            if inst is None or inst in fresh:
                continue
            if inst.spec.version == spec.version:
                inst.spec = spec  # any other change applies at its next start
                continue
            unsafe = await self._group_ready(inst)
            if unsafe is not None:  # left on its version; the next reconcile tries again
                problems.append(unsafe)
                continue
            problems += await self._retire([inst], stop=True)
            inst.spec = spec
            inst.ready.clear()
            self._set(inst, version=spec.version, track=spec.track, restarts=0, exit_code=None)
            self._launch(inst, late=True)
            problems += await self._await_ready([inst])
            problems += await self._publish(frozenset())
        # 3. What left is taken out of every gateway's routing, then stopped.
        leaving = [inst for inst in self.instances if inst.spec.name not in wanted]
        if leaving:
            problems += await self._retire(leaving, stop=True)
            self.instances = [inst for inst in self.instances if inst not in leaving]
        problems += await self._publish(frozenset())
        order = list(wanted)
        self.instances.sort(
            key=lambda inst: order.index(inst.spec.name) if inst.spec.name in order else -1
        )
        self.state.generation = generation
        self.save()
        log.info("generation %d reconciled", generation)
        return problems

    async def _group_ready(self, inst: _Instance) -> str | None:
        """Wait until every other member of `inst`'s disruption group answers ready (at
        most the ready timeout), so stopping `inst` leaves the rest whole; the problem
        when they do not."""
        group = inst.spec.disruption_group
        others = [
            other for other in self.instances
            if other is not inst and group is not None and other.spec.disruption_group == group
        ]  # fmt: skip
        deadline = time.monotonic() + self.timings.ready_timeout
        while others:
            ready = await asyncio.gather(*(readiness.probe(other.spec) for other in others))
            if all(ready):
                break
            if time.monotonic() > deadline:
                down = ", ".join(o.spec.name for o, ok in zip(others, ready, strict=True) if not ok)
                return (
                    f"{inst.spec.name} was not replaced: {down} of its group {group} is not "
                    "ready, and stopping it too could cost the group its quorum"
                )
            await asyncio.sleep(PROBE_INTERVAL_S)
        return None

    async def _await_ready(self, insts: list[_Instance]) -> list[str]:
        """Wait until each instance is ready or its start failed; the failures."""
        problems = []
        for inst in insts:
            task = self._tasks.get(inst.spec.name)
            if task is None:
                continue
            ready = asyncio.create_task(inst.ready.wait())
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not inst.ready.is_set():
                problems.append(f"{inst.spec.name} did not start (see `yardarm logs`)")
        return problems

    async def _retire(self, insts: list[_Instance], *, stop: bool) -> list[str]:
        """Take instances out of the gateways' routing, then stop them (SIGTERM: each
        drains its in-flight requests)."""
        problems = await self._publish(frozenset(inst.spec.name for inst in insts))
        if stop:
            for inst in insts:
                task = self._tasks.pop(inst.spec.name, None)
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await asyncio.gather(*(self._stop_instance(inst) for inst in insts))
        return problems

    async def _publish(
        self, excluding: frozenset[str], *, only_if_listed: bool = False
    ) -> list[str]:
        """Publish each upstream's ready instances (less `excluding`) and wait until every
        gateway replica routes by them; the problems met.

        A set equal to the one the gateways were started with is only written when the
        document lists the upstream already: a stack never scaled keeps the endpoints of
        its gateways' settings (which, with chaos dependency links, name link proxies).
        """
        if self._publisher is None:
            return []
        listed: dict[str, list[Endpoint]] = {}
        for inst in self.instances:
            spec = inst.spec
            if spec.upstream is None or spec.endpoint is None:
                continue
            endpoints = listed.setdefault(spec.upstream, [])
            if spec.name not in excluding and inst.ready.is_set():
                endpoints.append(Endpoint(spec.endpoint, spec.track))
        problems = []
        for upstream, endpoints in listed.items():
            unchanged = frozenset(endpoints) == self._bootstrap.get(upstream, frozenset())
            try:
                version = await self._publisher.publish(
                    upstream, endpoints, only_if_listed=only_if_listed or unchanged
                )
            except PublishError as exc:
                problems.append(str(exc))
                continue
            late = await self._publisher.wait_applied(version, self.timings.routing_timeout)
            if late:
                problems.append(f"gateway(s) {', '.join(late)} did not apply routing v{version}")
        return problems

    async def run(self) -> int:
        """Run until stopped (exit 0) or until the stack cannot start (exit 1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reconcile_wanted.set)
        self.save()
        for inst in self.instances:
            self._launch(inst, late=False)
        stop_wait = asyncio.create_task(self._stop.wait())
        all_ready = asyncio.create_task(self._all_ready())
        reconciler = asyncio.create_task(self._reconcile_loop())
        error: str | None = None
        try:
            while not self._stop.is_set() and error is None:
                waiting: set[asyncio.Task[Any]] = {*self._tasks.values(), stop_wait, reconciler}
                if not all_ready.done():
                    waiting.add(all_ready)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is all_ready:
                        self.state.status = "running"
                        self.save()
                        log.info("all %d instances are ready", len(self.instances))
                    elif task is reconciler:
                        error = f"the reconciler stopped: {task.exception()!r}"
                    elif task is not stop_wait:
                        error = self._task_ended(task) or error
        finally:
            others = [*self._tasks.values(), stop_wait, all_ready, reconciler]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            if error is not None:
                log.error("stack failed: %s", error)
                self.state.status = "failed"
                self.state.error = error
            else:
                self.state.status = "stopping"
            self.save()
            # Reverse dependency order; the replicas of one service stop together.
            for _service, group in itertools.groupby(
                reversed(self.instances), key=lambda inst: inst.spec.service
            ):
                await asyncio.gather(*(self._stop_instance(inst) for inst in group))
            # Anything that escaped its process group still carries the home's mark.
            stray = await asyncio.to_thread(sweep, self.home)
            if stray:
                log.warning("killed %d stray process(es): %s", len(stray), stray)
            if error is None:
                self.state.status = "stopped"
            self.save()
        return 1 if error is not None else 0


def run_supervisor(
    home: Path,
    specs: list[InstanceSpec],
    *,
    base_port: int | None = None,
    flags: dict[str, Any] | None = None,
    timings: Timings | None = None,
    topology: Topology | None = None,
) -> int:
    """Take the home's lock, render the flags, supervise until stopped; the exit code.

    `topology`: the stack's, when the plan was rendered from one; SIGHUP then reconciles
    to the home's desired state.
    """
    home = home.resolve()
    # Until the loop handles it, a SIGHUP (a scale) must not end the supervisor; the
    # reconciler catches up with the desired state once the stack is up.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lock = acquire_lock(home)
    try:
        if flags is not None:
            write_flags(Topology(flags=flags), home)
        generation = 0
        if topology is not None:
            desired = read_desired(home)
            generation = 0 if desired is None else desired.generation
        supervisor = Supervisor(
            home,
            specs,
            base_port=base_port,
            timings=timings,
            render=None if topology is None else functools.partial(rendered, topology, home),
            publisher=None if topology is None else routing_writer(topology, home),
            generation=generation,
        )
        return asyncio.run(supervisor.run())
    finally:
        lock.close()


def _plan_from(topology: Topology, home: Path) -> Plan:
    return Plan(
        instances=instances(topology, home),
        base_port=topology.base_port,
        flags=topology.flags,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yardarm.local.supervisor")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--plan", type=Path, help="instances as JSON (default: topology.json)")
    parser.add_argument("--ready-timeout", type=float, default=Timings.ready_timeout)
    parser.add_argument("--start-attempts", type=int, default=Timings.start_attempts)
    parser.add_argument("--stop-grace", type=float, default=Timings.stop_grace)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    home: Path = args.home.resolve()
    topology = None if args.plan else read_topology(home)
    try:
        if args.plan:
            plan = Plan.model_validate_json(args.plan.read_text())
        elif topology is None:
            raise ValueError(f"{topology_path(home)} is missing or not a topology")
        else:
            plan = _plan_from(topology, home)
    except (OSError, ValueError) as exc:
        log.error("cannot read the plan: %s", exc)
        return 2
    timings = Timings(
        ready_timeout=args.ready_timeout,
        start_attempts=args.start_attempts,
        stop_grace=args.stop_grace,
    )
    try:
        return run_supervisor(
            home,
            plan.instances,
            base_port=plan.base_port,
            flags=plan.flags,
            timings=timings,
            topology=topology,
        )
    except SupervisorLockedError as exc:
        log.error("%s", exc)
        return 3


if __name__ == "__main__":
    sys.exit(main())
