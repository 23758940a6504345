"""The chaos controller as a real process, its links in front of echo servers, driven over HTTP."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import (
    ControllerProcess,
    fails_fast,
    launch_controller,
    replica_links,
    round_trip,
    running_controller,
    threaded_echo_servers,
)
from tests.conftest import free_port

REPLICAS = ("datastore-0", "datastore-1", "datastore-2")
DELAY_MS = 150


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """Three "replicas" (echo servers) linked pairwise through one controller's proxies."""
    with threaded_echo_servers(len(REPLICAS)) as ports:
        links = replica_links(dict(zip(REPLICAS, ports, strict=True)))
        with running_controller(tmp_path_factory.mktemp("chaos") / "home", links) as running:
            yield running


@pytest.fixture(autouse=True)
def healed(controller: ControllerProcess) -> None:
    """Every test starts with every link healed (the controller is shared)."""
    answer = httpx.post(f"{controller.url}/faults", json={"action": "heal", "target": "all"})
    assert answer.status_code == 200, answer.text


async def post(controller: ControllerProcess, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{controller.url}/faults", json=body)


async def get(controller: ControllerProcess, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"{controller.url}{path}")


async def metric(controller: ControllerProcess, name: str, **labels: str) -> float:
    """The sum of the samples whose labels match, from /metrics (0 when there is none)."""
    text = (await get(controller, "/metrics")).text
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


async def fault_counts(controller: ControllerProcess) -> dict[tuple[str, str], int]:
    document = (await get(controller, "/faults")).json()
    counts = {(f["action"], f["target"]): f["count"] for f in document["faults"]}
    assert document["total"] == sum(counts.values())
    return counts


def links_by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {link["name"]: link for link in document["links"]}


async def test_partition_cuts_only_the_targets_links_until_healed(
    controller: ControllerProcess,
) -> None:
    ports = controller.link_ports
    total = "yardarm_chaos_faults_total"
    counted = await metric(controller, total, action="partition", target="datastore-0")
    before = await fault_counts(controller)
    answer = await post(controller, {"action": "partition", "target": "datastore-0"})
    assert answer.status_code == 200, answer.text
    document = answer.json()
    cut = {name for name in ports if "datastore-0" in name}
    assert set(document["applied"]["links"]) == cut and len(cut) == 4
    assert {n for n, link in links_by_name(document).items() if link["partitioned"]} == cut

    for name in cut:
        await fails_fast(ports[name])
    await round_trip(ports["datastore-1->datastore-2"])
    await round_trip(ports["datastore-2->datastore-1"])

    assert await metric(controller, total, action="partition", target="datastore-0") == counted + 1
    gauge = "yardarm_chaos_link_partitioned"
    assert await metric(controller, gauge, link="datastore-0->datastore-1") == 1
    assert await metric(controller, gauge, link="datastore-1->datastore-2") == 0

    healed = await post(controller, {"action": "heal", "target": "all"})
    assert healed.status_code == 200
    assert len(healed.json()["applied"]["links"]) == 6
    for name in cut:
        await round_trip(ports[name])
    assert await metric(controller, gauge, link="datastore-0->datastore-1") == 0
    after = await fault_counts(controller)
    assert after[("partition", "datastore-0")] == before.get(("partition", "datastore-0"), 0) + 1
    assert after[("heal", "all")] == before[("heal", "all")] + 1
    assert sum(after.values()) == sum(before.values()) + 2


async def test_partition_with_a_peer_cuts_only_that_pair(controller: ControllerProcess) -> None:
    ports = controller.link_ports
    answer = await post(
        controller, {"action": "partition", "target": "datastore-0", "peer": "datastore-1"}
    )
    assert answer.status_code == 200, answer.text
    pair = {"datastore-0->datastore-1", "datastore-1->datastore-0"}
    assert set(answer.json()["applied"]["links"]) == pair
    for name in pair:
        await fails_fast(ports[name])
    await round_trip(ports["datastore-0->datastore-2"])
    await round_trip(ports["datastore-2->datastore-1"])


async def test_delay_slows_the_targets_links_and_zero_clears_it(
    controller: ControllerProcess,
) -> None:
    ports = controller.link_ports
    answer = await post(controller, {"action": "delay", "target": "datastore-2", "ms": DELAY_MS})
    assert answer.status_code == 200, answer.text
    delayed = {name for name, link in links_by_name(answer.json()).items() if link["delay_ms"]}
    assert delayed == {name for name in ports if "datastore-2" in name}

    slowed = await round_trip(ports["datastore-0->datastore-2"])
    assert slowed >= 2 * DELAY_MS / 1000 - 0.001  # held out and back
    untouched = min([await round_trip(ports["datastore-0->datastore-1"]) for _ in range(3)])
    assert untouched < DELAY_MS / 1000
    gauge = "yardarm_chaos_link_delay_ms"
    assert await metric(controller, gauge, link="datastore-2->datastore-0") == DELAY_MS
    assert await metric(controller, gauge, link="datastore-0->datastore-1") == 0

    cleared = await post(controller, {"action": "delay", "target": "datastore-2", "ms": 0})
    assert cleared.status_code == 200
    assert not any(link["delay_ms"] for link in cleared.json()["links"])
    fast = min([await round_trip(ports["datastore-0->datastore-2"]) for _ in range(3)])
    assert fast < DELAY_MS / 1000
    assert await metric(controller, gauge, link="datastore-2->datastore-0") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "explode", "target": "all"}, "action"),
        ({"action": "partition", "target": "nats"}, "target"),
        ({"action": "delay", "target": "datastore-0", "ms": -5}, "ms"),
        ({"action": "delay", "target": "datastore-0"}, "ms"),
        ({"action": "delay", "target": "datastore-0", "ms": 10, "jitter_ms": 20}, "jitter_ms"),
        ({"action": "partition", "target": "datastore-0", "ms": 10}, "ms"),
        ({"action": "kill", "target": "datastore-0", "peer": "datastore-1"}, "peer"),
        ({"action": "heal", "target": "datastore-0", "peer": "datastore-0"}, "peer"),
        ({"action": "heal", "target": "all", "peer": "datastore-0"}, "peer"),
        ({"action": "heal", "target": "all", "colour": "red"}, "colour"),
    ],
)
async def test_invalid_faults_are_422_problems_and_not_counted(
    controller: ControllerProcess, body: dict[str, Any], field: str
) -> None:
    counted = await metric(controller, "yardarm_chaos_faults_total")
    before = await fault_counts(controller)
    answer = await post(controller, body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == 422
    assert field in {error["field"] for error in problem["errors"]}, problem
    assert await fault_counts(controller) == before
    assert await metric(controller, "yardarm_chaos_faults_total") == counted


async def test_unknown_action_and_target_name_the_valid_values(
    controller: ControllerProcess,
) -> None:
    action = (await post(controller, {"action": "explode", "target": "all"})).json()
    assert action["valid"] == ["kill", "pause", "resume", "partition", "heal", "delay"]
    assert "kill, pause, resume, partition, heal, delay" in action["detail"]

    target = (await post(controller, {"action": "partition", "target": "nats"})).json()
    assert target["valid"] == ["all", *REPLICAS]
    assert "valid targets: all, datastore-0, datastore-1, datastore-2" in target["detail"]

    peer = await post(
        controller, {"action": "partition", "target": "datastore-0", "peer": "datastore-7"}
    )
    assert peer.json()["valid"] == ["datastore-1", "datastore-2"]


async def test_every_fault_is_logged_as_a_json_line(controller: ControllerProcess) -> None:
    already = len(controller.log.read_text().splitlines())
    await post(controller, {"action": "delay", "target": "datastore-1", "ms": 20, "jitter_ms": 5})
    await post(controller, {"action": "partition", "target": "nats"})
    lines = controller.log.read_text().splitlines()[already:]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    faults = [r for r in records if r.get("event") == "fault"]
    assert len(faults) == 1
    (fault,) = faults
    assert (fault["action"], fault["target"], fault["ms"], fault["jitter_ms"]) == (
        "delay",
        "datastore-1",
        20,
        5,
    )
    assert len(fault["links"]) == 4
    assert fault["service"] == "chaos" and fault["level"] == "info" and fault["ts"]
    refused = [r for r in records if r.get("event") == "fault_refused"]
    assert [r["target"] for r in refused] == ["nats"]


async def test_health_readiness_and_openmetrics(controller: ControllerProcess) -> None:
    assert (await get(controller, "/healthz")).status_code == 200
    ready = await get(controller, "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"links": True}
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(
            f"{controller.url}/metrics", headers={"Accept": "application/openmetrics-text"}
        )
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert "yardarm_chaos_link_partitioned" in answer.text


def test_a_taken_link_port_fails_the_start_naming_the_link(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        links = replica_links({"datastore-0": free_port(), "datastore-1": free_port()})
        links[1] = links[1].model_copy(update={"listen_port": taken})
        controller = launch_controller(tmp_path / "home", links)
        try:
            code = controller.proc.wait(timeout=30)
        finally:
            controller.stop()
    assert code != 0
    log = controller.log.read_text()
    assert f"link {links[1].name} cannot listen on 127.0.0.1:{taken}" in log
