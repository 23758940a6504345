"""The end-to-end checks' view of a running stack, the same for every target.

A check asks a `StackTarget` where the stack answers (as the test reaches it), which
instances run, to kill, pause or resume one, and for a trace's spans; it never works
out a port, reads a target's own files or signals a process itself. Each target (the
local supervisor today; containers, Kubernetes and bare-metal hosts later) implements
this in its own module, so one check runs unchanged on all of them.

Cutting or slowing the links between instances needs link proxies, which only the local
target has: `StackTarget.links()` raises `Unsupported` where they are missing, and a
check leaves exactly those faults out there.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from yardarm.tracing_view import Span

__all__ = [
    "FaultRefused",
    "Instance",
    "LinkFaults",
    "ProcessState",
    "Recovery",
    "Span",
    "StackTarget",
    "Unsupported",
]

# What a target observes of one process: it runs, it is stopped (paused), it is gone
# (exited, killed, or not yet reaped).
ProcessState = Literal["running", "stopped", "gone"]


class Unsupported(Exception):
    """The target cannot do this at all (e.g. cut a link without link proxies): a check
    that needs it does not apply to this target."""


class FaultRefused(Exception):
    """The target did not apply a fault now (the instance is restarting, its fault
    injector does not answer): the caller may try again later."""


@dataclass(frozen=True)
class Instance:
    """One instance of the stack as the target last recorded it.

    `state` is the target's word for it; checks rely only on "ready" (serving, and
    the target considers it up). `pid` identifies the process running it where the
    target has one (None while it has none, or on a target without pids): a restart is
    seen as a new pid. `url` is where the instance itself answers: http(s) for the
    services (a gateway replica's own admin listener, the public port being shared),
    nats:// and postgresql:// for the infrastructure; None while it has no address.
    """

    name: str
    service: str
    track: str
    version: str
    state: str
    restarts: int
    pid: int | None
    url: str | None


@dataclass(frozen=True)
class Recovery:
    """How patient the target is with a crashed instance (seconds): its longest restart
    backoff, then how long a started instance may take to be ready. Checks state their
    bounds on restarts in these, so each target is judged by its own intervals."""

    backoff_max_s: float
    ready_timeout_s: float


class LinkFaults(Protocol):
    """Network faults on the links into and out of an instance (the local target's
    link proxies: every open and new connection reset, or every chunk held)."""

    def partition(self, name: str) -> None:
        """Cut every link into and out of `name`."""
        ...

    def heal(self, name: str) -> None:
        """Restore `name`'s links: neither cut nor delayed."""
        ...

    def heal_all(self) -> None:
        """Restore every link of the stack."""
        ...

    def delay(self, name: str, ms: int, jitter_ms: int = 0) -> None:
        """Hold every chunk on `name`'s links `ms` +- `jitter_ms` (0 ms: no delay)."""
        ...

    def faulted_links(self) -> list[str]:
        """The links still cut or delayed."""
        ...


class StackTarget(Protocol):
    """A running stack as the end-to-end checks see it.

    Addresses are as the test process reaches them (a port-forward's, a node's), not
    as the services reach each other. Blocking calls: async checks run them in a thread.
    """

    @property
    def gateway(self) -> str:
        """The gateway's public base URL (what clients call)."""
        ...

    @property
    def gateway_admin(self) -> list[str]:
        """Each gateway replica's admin API base URL, by ordinal."""
        ...

    @property
    def datastore(self) -> list[str]:
        """Each datastore replica's base URL, by ordinal (`datastore-<i>`)."""
        ...

    @property
    def nats_url(self) -> str:
        """The NATS server the services publish to."""
        ...

    def postgres_dsn(self, database: str) -> str:
        """A DSN for one of the stack's databases (`orders`, `fulfillment`)."""
        ...

    @property
    def admin_token(self) -> str:
        """The stack's admin credential (datastore, gateway admin API)."""
        ...

    @property
    def ssl(self) -> ssl.SSLContext | None:
        """A client context trusting the stack's CA when it serves TLS (None: plain)."""
        ...

    @property
    def recovery(self) -> Recovery:
        """How long the target may take to bring a killed instance back."""
        ...

    @property
    def artifacts(self) -> Path:
        """A directory on this machine for the reports a check leaves for a person to
        read after the run (beside the target's logs where they are on this machine)."""
        ...

    def instances(self) -> list[Instance]:
        """Every instance the target runs for the stack, infrastructure included."""
        ...

    def instance(self, name: str) -> Instance | None:
        """One instance by name (None: the target runs none by that name)."""
        ...

    def kill(self, name: str) -> None:
        """End the instance's process abruptly (SIGKILL or the target's equivalent); the
        target restarts it as it does any crash. FaultRefused when not applied now."""
        ...

    def pause(self, name: str) -> None:
        """Stop the instance's process without ending it (it keeps its connections and
        answers nothing); the target must not take it for a crash. FaultRefused when not
        applied now, Unsupported where the target cannot pause."""
        ...

    def resume(self, name: str) -> None:
        """Let a paused instance run on. FaultRefused when not applied now."""
        ...

    def paused(self) -> list[str]:
        """The instances the target holds paused now, as its fault injector says."""
        ...

    def faults_counted(self) -> Mapping[str, int] | None:
        """Faults applied so far by action, as the target's fault injector counts them
        (None: it keeps no count). For reports: checks count what they see themselves."""
        ...

    def process_state(self, seen: Instance) -> ProcessState | None:
        """What the target observes now of the process `seen` ran in (its pid): a check
        sees a kill or a pause take effect itself. None: the target cannot tell (no
        process recorded for it)."""
        ...

    def wait_ready(
        self, name: str, bound_s: float, *, replacing: Instance | None = None
    ) -> Instance | None:
        """Wait at most `bound_s` until `name` is ready and, given `replacing`, runs
        another process than that one (a restart observed, not the old process still
        listed). The ready instance, or None when the bound passed."""
        ...

    def restart(self, name: str, bound_s: float) -> Instance | None:
        """Kill `name` and wait at most `bound_s` until the target has it ready again in
        a new process (None when it did not within the bound)."""
        ...

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace the target's telemetry holds so far: the root spans,
        children attached, sorted by start."""
        ...

    def links(self) -> LinkFaults:
        """The target's link faults; Unsupported where it has no link proxies."""
        ...
