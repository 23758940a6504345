"""The rollout engine's effects on bare metal: tracks as instances Ansible runs on the
hosts, traffic through the gateways' routing document, windows from the stack's
Prometheus (or scrapes of the instances).

A change of tracks or versions is a change of the desired state kept beside the
inventory (`desired.json`, `yardarm.model.scaled`'s rules, the track ports kept in
`track-ports.json`): the inventory is rendered again from it, exactly as `yardarm
ansible inventory` renders it, and `ansible/tracks.yml` runs that service's role on its
hosts one at a time (each instance ready before the play goes on), stops what is no
longer placed, and gives Prometheus its new targets. A track's instances land on the
hosts after the primary track's (`place`), so a canary runs on a subset of the hosts.
Then the service's endpoints, as the gateways dial them, are written into the routing
document, and the effect returns once every gateway routes by it; endpoints leave the
document before their instances stop.

The controller talks to the datastore, the gateways' admin ports and Prometheus at each
host's `control_address` (the operator's machine may reach them through a forward).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from yardarm.baremetal.hosts import HostList
from yardarm.baremetal.inventory import (
    DESIRED_FILE,
    INVENTORY_FILE,
    planned_deployment,
    read_state,
    render_inventory,
)
from yardarm.baremetal.rolling import answers
from yardarm.baremetal.target import BareMetalTarget, place
from yardarm.model import (
    Deployment,
    DesiredState,
    Instance,
    ScaleError,
    Topology,
    current_for,
    scaled,
)
from yardarm.rollout.engine import EffectFailed
from yardarm.rollout.observation import TrafficObservation
from yardarm.rollout.routes import APPLIED_WITHIN_S, ROUTES
from yardarm.rollout.spec import sticky_key
from yardarm.routing_writer import KEEP, Endpoint, RoutingWriter

PLAYBOOK: Final = "tracks.yml"
PLAYBOOK_TIMEOUT_S: Final = 1800.0
OUTPUT_TAIL: Final = 3000  # of a failed playbook's output, in the error


@dataclass(frozen=True)
class BareMetalStack:
    """Where the stack's model, hosts and inventory are, and how Ansible runs on them."""

    topology: Topology
    hosts: HostList
    inventory: Path  # the directory `yardarm ansible inventory` wrote
    ansible: Path  # the folder holding tracks.yml, its roles and ansible.cfg
    shared: Mapping[str, str] = field(default_factory=dict)
    # ANSIBLE_* settings the playbook runs with (the vault password file, say).
    settings: Mapping[str, str] = field(default_factory=dict)

    def desired(self) -> DesiredState:
        stored, _ = read_state(self.inventory)
        return current_for(self.topology, stored)

    def planned(self, desired: DesiredState) -> tuple[Deployment, BareMetalTarget]:
        _, ports = read_state(self.inventory)
        deployment = planned_deployment(self.topology, desired)
        placement = place(deployment, self.hosts, self.shared)
        return deployment, BareMetalTarget(deployment, placement, ports)

    def write(self, desired: DesiredState) -> None:
        """The inventory for `desired`, and `desired` itself (files that did not change
        are left alone)."""
        _, ports = read_state(self.inventory)
        files = render_inventory(self.topology, self.hosts, self.shared, desired, ports)
        files[DESIRED_FILE] = desired.model_dump_json(indent=2) + "\n"
        for relative, text in files.items():
            path = self.inventory / relative
            if path.is_file() and path.read_text() == text:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)


def ansible_playbook() -> str:
    """The ansible-playbook beside this Python (the project's environment), else on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.is_file() else shutil.which("ansible-playbook")
    if found is None:
        raise EffectFailed(
            "ansible-playbook is not installed: run the controller from the project's "
            "environment (`uv run yardarm ansible controller`, which has the infra group)"
        )
    return found


class BareMetalEffects(TrafficObservation):
    """`yardarm.rollout.engine.Effects` for a stack Ansible runs on a list of hosts."""

    def __init__(
        self,
        stack: BareMetalStack,
        token: str,
        sub_window_s: float = 2.0,
        smoke_rate: float = 20.0,
    ) -> None:
        self.stack = stack
        self.topology = stack.topology
        self._token = token
        # What each service's last playbook run made true (a restarted controller runs
        # the playbook once more before it trusts the hosts to match).
        self._applied: dict[str, dict[str, tuple[str, int]]] = {}
        self._lock = asyncio.Lock()  # one playbook at a time: they share the inventory
        _, target = stack.planned(stack.desired())
        prometheus = None
        if self.topology.prometheus.enabled:
            where = target.shared_host("prometheus").control_netloc(self.topology.prometheus_port)
            prometheus = f"http://{where}"
        super().__init__(
            prometheus_url=prometheus, sub_window_s=sub_window_s, smoke_rate=smoke_rate
        )

    # What the model says now.

    def _tracks(self, desired: DesiredState, service: str) -> dict[str, tuple[str, int]]:
        return {
            track: (spec.version, spec.replicas)
            for track, spec in desired.services.get(service, {}).items()
        }

    def _primary(self, service: str) -> tuple[str, str, int]:
        track = self.topology.services.spec(service).track
        version, replicas = self._tracks(self.stack.desired(), service)[track]
        return track, version, replicas

    def replicas(self, service: str) -> int:
        return self._primary(service)[2]

    def stable_version(self, service: str) -> str:
        return self._primary(service)[1]

    # The control plane as the controller reaches it.

    def datastore_urls(self, target: BareMetalTarget | None = None) -> list[str]:
        """Every datastore replica as the controller reaches it."""
        if target is None:
            _, target = self.stack.planned(self.stack.desired())
        return [
            f"http://{target.host(inst).control_netloc(target.port(inst))}"
            for inst in target.deployment.of("datastore")
        ]

    def _writer(self, target: BareMetalTarget) -> RoutingWriter:
        return RoutingWriter(
            self.datastore_urls(target), self._gateway_admin_urls(target), self._token
        )

    def _gateway_admin_urls(self, target: BareMetalTarget) -> list[str]:
        return [
            f"http://{target.host(inst).control_netloc(target.gateway_admin_port(inst))}"
            for inst in target.deployment.of("gateway")
        ]

    async def _publish(self, service: str, desired: DesiredState) -> None:
        """The service's endpoints as `desired` places them, in the routing document,
        once every gateway routes by them (only a routed service has any)."""
        if service not in ROUTES:
            return
        deployment, target = self.stack.planned(desired)
        gateway = deployment.of("gateway")[0]
        endpoints = [
            Endpoint(target.url(gateway, inst), inst.track) for inst in deployment.of(service)
        ]
        writer = self._writer(target)
        version = await writer.publish(service, endpoints)
        late = await writer.wait_applied(version, APPLIED_WITHIN_S)
        late = [url for url in late if await answers(url)]  # a gateway that is down: later
        if late:
            raise EffectFailed(
                f"gateways {', '.join(late)} did not route by the new {service} endpoints "
                f"within {APPLIED_WITHIN_S:.0f} s"
            )

    # Changing the hosts.

    async def _playbook(self, service: str) -> None:
        stack = self.stack
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(stack.ansible / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            **stack.settings,
        }
        process = await asyncio.create_subprocess_exec(
            ansible_playbook(),
            "-i", str(stack.inventory / INVENTORY_FILE),
            "-e", json.dumps({"yardarm_tracks_service": service}),
            str(stack.ansible / PLAYBOOK),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(process.communicate(), PLAYBOOK_TIMEOUT_S)
        except TimeoutError as exc:
            process.kill()
            await process.wait()
            raise EffectFailed(
                f"{PLAYBOOK} for {service} ran longer than {PLAYBOOK_TIMEOUT_S:.0f} s"
            ) from exc
        if process.returncode != 0:
            text = output.decode(errors="replace")[-OUTPUT_TAIL:]
            raise EffectFailed(f"{PLAYBOOK} for {service} failed:\n{text}")

    async def _apply(self, service: str, desired: DesiredState) -> None:
        """The hosts running `desired` for `service` (rendered, then the playbook)."""
        await asyncio.to_thread(self.stack.write, desired)
        await self._playbook(service)
        self._applied[service] = self._tracks(desired, service)

    def _scaled(
        self, desired: DesiredState, service: str, track: str, version: str, replicas: int
    ) -> DesiredState:
        try:
            return scaled(self.topology, desired, service, replicas, track=track, version=version)
        except ScaleError as exc:
            raise EffectFailed(f"{service} on {track} at {version}: {exc}") from exc

    async def ensure_tracks(self, service: str, tracks: Mapping[str, tuple[str, int]]) -> None:
        async with self._lock:
            desired = self.stack.desired()
            current = self._tracks(desired, service)
            for track, (version, replicas) in tracks.items():
                if current.get(track) != (version, replicas):
                    desired = self._scaled(desired, service, track, version, replicas)
            wanted = self._tracks(desired, service)
            if self._applied.get(service) == wanted and wanted == current:
                return
            await self._apply(service, desired)
            await self._publish(service, desired)

    async def stop_tracks(self, service: str, tracks: tuple[str, ...]) -> None:
        async with self._lock:
            desired = self.stack.desired()
            current = self._tracks(desired, service)
            for track in tracks:
                if track in current:
                    version, _ = current[track]
                    desired = self._scaled(desired, service, track, version, 0)
            wanted = self._tracks(desired, service)
            if self._applied.get(service) == wanted and wanted == current:
                return
            # Out of the routing document before they stop.
            await self._publish(service, desired)
            await self._apply(service, desired)

    async def promote(self, service: str, version: str) -> None:
        if service == "datastore":
            raise EffectFailed(
                "the datastore is not rolled by the bare-metal controller: run "
                "ansible/upgrade.yml, which hands the Raft leadership off host by host"
            )
        async with self._lock:
            desired = self.stack.desired()
            track = self.topology.services.spec(service).track
            current, replicas = self._tracks(desired, service)[track]
            if current == version and self._applied.get(service) == self._tracks(desired, service):
                return
            desired = self._scaled(desired, service, track, version, replicas)
            await self._apply(service, desired)
            await self._publish(service, desired)

    async def set_weights(
        self, service: str, weights: Mapping[str, int], sticky: str | None = None
    ) -> None:
        key = KEEP if sticky is None else sticky_key(sticky) if sticky else None
        _, target = self.stack.planned(self.stack.desired())
        writer = self._writer(target)
        version = await writer.set_splits(ROUTES[service], dict(weights), sticky=key)
        await writer.wait_applied(version, APPLIED_WITHIN_S)

    # What the observation side reaches.

    async def scrape_urls(self, service: str) -> list[str]:
        deployment, target = self.stack.planned(self.stack.desired())

        def metrics(inst: Instance) -> str:
            return f"http://{target.host(inst).control_netloc(target.port(inst))}"

        return self._gateway_admin_urls(target) + [metrics(i) for i in deployment.of(service)]

    def smoke_gateway(self) -> tuple[str, str]:
        deployment, target = self.stack.planned(self.stack.desired())
        first = deployment.of("gateway")[0]
        return f"http://{target.host(first).control_netloc(target.port(first))}", self._token
