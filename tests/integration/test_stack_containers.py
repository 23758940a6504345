"""The whole stack as service containers, run by docker-compose from the compose project
the deployment model renders (`yardarm compose`, without the observability services,
whose public images need a registry): an order placed through the gateway container
confirms, and its trace spans all four services; every service container runs as the
images' non-root user on a read-only root filesystem and was healthy within 10 s of its
start.

Spans are read from span files: the test turns them on and mounts each instance's state
directory from a folder of its own (the image's default is OTLP only). Postgres and NATS
come from YARDARM_IMAGE_POSTGRES and YARDARM_IMAGE_NATS, the project's images from
`yardarm images build`. Only the gateway is published, on an ephemeral port of
127.0.0.1; the project's containers, network and volumes are removed at the end.
"""

from __future__ import annotations

import copy
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import yaml
from docker.models.containers import Container

from tests.integration.conftest import (
    require_docker,
    require_docker_compose,
    require_image,
    require_project_image,
)
from tests.order_checks import SERVICES, confirmed_order, poll, trace_roots, whole_trace
from yardarm.containers import compose
from yardarm.containers.target import STATE_MOUNT
from yardarm.model import Topology
from yardarm.tracing_view import Span, iter_spans

ROOT = Path(__file__).resolve().parents[2]
HEALTHY_WITHIN_S = 10.0  # what the images promise (their HEALTHCHECK runs every 2 s)
# Starting the project (an initdb, a Raft election, the init steps) takes seconds each;
# a wide bound for a busy machine.
UP_TIMEOUT_S = 300


class Project:
    """A compose project of the stack in a folder of its own, under a unique name."""

    def __init__(self, folder: Path, images: dict[str, str]) -> None:
        self.folder = folder
        self.name = f"yardarm-it-{uuid.uuid4().hex[:8]}"
        self.env = os.environ | {
            "YARDARM_IMAGE_POSTGRES": images["postgres"],
            "YARDARM_IMAGE_NATS": images["nats"],
        }
        self.binary = require_docker_compose()
        self.spans_dir = folder / "state"
        # Docker's events about the project's containers, as they happen (the daemon
        # keeps only its last 256 events for later queries, and every health check is
        # three of them).
        self.events: list[dict[str, Any]] = []

    def write(self, project: compose.ComposeProject) -> None:
        """The rendered files, with span files on and every instance's state in a folder
        here (writable by the images' user), and the gateway on an ephemeral port."""
        document = copy.deepcopy(project.document)
        for name, service in document["services"].items():
            env = service.get("environment") or {}
            svc = next((s for s in SERVICES if f"YARDARM_{s.upper()}_INSTANCE" in env), None)
            if svc is None:
                continue
            state = self.spans_dir / name
            state.mkdir(parents=True)
            state.chmod(0o777)
            service["volumes"] = [
                f"{state}:{STATE_MOUNT}" if volume.endswith(f":{STATE_MOUNT}") else volume
                for volume in service["volumes"]
            ]
            env[f"YARDARM_{svc.upper()}_SPAN_FILES"] = "true"
            if "ports" in service:
                service["ports"] = [f"127.0.0.1::{env['YARDARM_GATEWAY_PORT']}"]
        compose.write(project, self.folder)
        (self.folder / compose.COMPOSE_FILE).write_text(yaml.safe_dump(document, sort_keys=False))

    def run(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [self.binary, "-p", self.name, *args],
            cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            logs = subprocess.run(
                [self.binary, "-p", self.name, "logs", "--tail", "30"],
                cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=60,
                check=False,
            ).stdout  # fmt: skip
            raise AssertionError(
                f"docker-compose {' '.join(args)} failed:\n{result.stderr}\n{logs[-6000:]}"
            )
        return result.stdout

    def spans(self) -> list[Span]:
        """Every span the instances wrote to their span files so far."""
        return list(iter_spans(sorted(self.spans_dir.glob("*/telemetry/*.jsonl"))))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, str]]:
    """The stack up, and the gateway's URL."""
    client = require_docker()
    try:
        images = {name: require_project_image(client, name) for name in (*SERVICES, "control")}
        images["postgres"] = require_image(client, "YARDARM_IMAGE_POSTGRES")
        images["nats"] = require_image(client, "YARDARM_IMAGE_NATS")
    finally:
        client.close()
    project = Project(tmp_path_factory.mktemp("compose"), images)
    project.write(compose.render(Topology(), images, observability=False))
    client = docker.from_env()
    label = f"com.docker.compose.project={project.name}"
    stream = client.events(decode=True, filters={"type": "container", "label": label})
    listener = threading.Thread(target=lambda: project.events.extend(stream), daemon=True)
    listener.start()
    try:
        project.run("up", "-d", "--no-build", timeout=UP_TIMEOUT_S)
        address = project.run("port", "gateway-0", str(Topology().gateway_port)).strip()
        yield project, f"http://{address}"
    finally:
        try:
            project.run("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180)
        finally:
            stream.close()
            client.close()


def test_an_order_through_the_gateway_container_confirms_and_is_traced_across_services(
    stack: tuple[Project, str],
) -> None:
    project, gateway = stack
    with httpx.Client(base_url=gateway, timeout=10.0) as http:
        order = confirmed_order(http, "containers", "it-1")
    spans = whole_trace(order["trace_id"], project.spans)
    assert {span.service for span in spans} == set(SERVICES)
    # One trace: every span but the gateway's root has its parent in it.
    assert [service for service, _ in trace_roots(spans)] == ["gateway"], trace_roots(spans)


def _healthy_after_start(events: list[dict[str, Any]]) -> dict[str, float]:
    """Each container's seconds from its (last) start to its first passing health check,
    from Docker's own events, by compose service name."""
    started: dict[str, int] = {}
    took: dict[str, float] = {}
    for event in sorted(events, key=lambda e: e["timeNano"]):
        name = event["Actor"]["Attributes"].get("com.docker.compose.service", "")
        if event.get("status") == "start":
            started[name] = event["timeNano"]
        elif event.get("status") == "health_status: healthy" and name in started:
            took.setdefault(name, (event["timeNano"] - started[name]) / 1e9)
    return took


def test_each_service_container_runs_unprivileged_read_only_and_was_healthy_within_10s(
    stack: tuple[Project, str],
) -> None:
    project, _ = stack
    client = docker.from_env()
    try:
        label = f"com.docker.compose.project={project.name}"

        def services() -> list[Container]:
            listed = client.containers.list(filters={"label": label})
            return [c for c in listed if c.labels["com.docker.compose.service"].split("-")[0]
                    in SERVICES]  # fmt: skip

        def all_healthy() -> list[Container] | None:
            found = services()
            states = [c.attrs["State"].get("Health", {}).get("Status") for c in found]
            return found if found and all(state == "healthy" for state in states) else None

        # A container may serve before Docker's first passing check is recorded.
        containers = poll("every service container healthy", all_healthy)
        healthy_after = _healthy_after_start(list(project.events))
        checked = 0
        for container in containers:
            service = container.labels["com.docker.compose.service"]
            attrs = container.attrs
            assert attrs["Config"]["User"] == "10001:10001", service
            assert attrs["HostConfig"]["ReadonlyRootfs"] is True, service
            assert attrs["State"]["Health"]["Status"] == "healthy", service
            assert service in healthy_after, f"no start and health events seen for {service}"
            took = healthy_after[service]
            assert took <= HEALTHY_WITHIN_S, f"{service} healthy {took:.1f}s after its start"
            print(f"{service}: healthy {took:.1f}s after its start")
            checked += 1
        topology = Topology()
        assert checked == sum(topology.services.spec(svc).replicas for svc in SERVICES)
    finally:
        client.close()
