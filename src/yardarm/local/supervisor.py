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
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict

from yardarm.local import infra, readiness
from yardarm.local.processes import kill_group, mark, sweep
from yardarm.local.state import (
    InstanceStatus,
    StackState,
    log_dir,
    log_tail,
    write_state,
)
from yardarm.topology import InstanceSpec, Topology, instances, write_flags

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


class Supervisor:
    """Owns the processes of one home and records them in state.json."""

    def __init__(
        self,
        home: Path,
        specs: list[InstanceSpec],
        *,
        base_port: int | None = None,
        timings: Timings | None = None,
    ) -> None:
        self.home = home
        self.timings = timings or Timings()
        log_dir(home).mkdir(parents=True, exist_ok=True)
        self.instances = [
            _Instance(
                spec=spec,
                status=InstanceStatus(
                    name=spec.name,
                    service=spec.service,
                    port=spec.port,
                    version=spec.version,
                    track=spec.track,
                ),
                log_path=log_dir(home) / f"{spec.name}.log",
            )
            for spec in specs
        ]
        self.by_name = {inst.spec.name: inst for inst in self.instances}
        self.state = StackState(
            base_port=base_port,
            supervisor_pid=os.getpid(),
            started_at=time.time(),
            status="starting",
            instances=[inst.status for inst in self.instances],
        )
        self._stop = asyncio.Event()
        self._failure: asyncio.Future[str] | None = None

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
        for inst in self.instances:
            await inst.ready.wait()

    async def run(self) -> int:
        """Run until stopped (exit 0) or until the stack cannot start (exit 1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.save()
        tasks = {asyncio.create_task(self._run_instance(inst)) for inst in self.instances}
        stop_wait = asyncio.create_task(self._stop.wait())
        all_ready = asyncio.create_task(self._all_ready())
        error: str | None = None
        pending: set[asyncio.Task[Any]] = {*tasks, stop_wait, all_ready}
        try:
            while not self._stop.is_set() and error is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is all_ready:
                        self.state.status = "running"
                        self.save()
                        log.info("all %d instances are ready", len(self.instances))
                    elif task in tasks and not task.cancelled():
                        exc = task.exception()
                        if exc is not None:
                            error = str(exc)
                            if not isinstance(exc, StartupFailedError):
                                log.error("internal error", exc_info=exc)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
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
) -> int:
    """Take the home's lock, render the flags, supervise until stopped; the exit code."""
    home = home.resolve()
    lock = acquire_lock(home)
    try:
        if flags is not None:
            write_flags(Topology(flags=flags), home)
        supervisor = Supervisor(home, specs, base_port=base_port, timings=timings)
        return asyncio.run(supervisor.run())
    finally:
        lock.close()


def _plan_from_home(home: Path) -> Plan:
    topology = Topology.model_validate_json((home / "topology.json").read_text())
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
    try:
        plan = (
            Plan.model_validate_json(args.plan.read_text()) if args.plan else _plan_from_home(home)
        )
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
            home, plan.instances, base_port=plan.base_port, flags=plan.flags, timings=timings
        )
    except SupervisorLockedError as exc:
        log.error("%s", exc)
        return 3


if __name__ == "__main__":
    sys.exit(main())
