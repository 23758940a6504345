"""Faults aimed at a service or a dependency reach exactly the dependency links they name.

The controller runs as a real process with the links the topology renders (moved onto
free ports, in front of echo servers standing in for each dependency).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import (
    ControllerProcess,
    fails_fast,
    round_trip,
    running_controller,
    threaded_echo_servers,
)
from tests.conftest import free_port
from yardarm.chaos.config import LinkConfig
from yardarm.local.plan import dependency_links
from yardarm.model import Topology

TOPOLOGY = Topology.model_validate(
    {
        "chaos": {"dependency_links": True},
        "services": {"datastore": {"replicas": 2}, "orders": {"replicas": 2}},
    }
)
DEPENDENCIES = ("datastore-0", "datastore-1", "orders-0", "orders-1", "postgres", "nats")


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    with threaded_echo_servers(len(DEPENDENCIES)) as ports:
        echo = dict(zip(DEPENDENCIES, ports, strict=True))
        links = [
            link.model_copy(update={"listen_port": free_port(), "target_port": echo[link.dst]})
            for link in dependency_links(TOPOLOGY)
        ]
        with running_controller(tmp_path_factory.mktemp("deps") / "home", links) as running:
            yield running


@pytest.fixture(autouse=True)
def healed(controller: ControllerProcess) -> None:
    answer = httpx.post(f"{controller.url}/faults", json={"action": "heal", "target": "all"})
    assert answer.status_code == 200, answer.text


def links() -> list[LinkConfig]:
    return dependency_links(TOPOLOGY)


async def post(controller: ControllerProcess, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{controller.url}/faults", json=body)


async def assert_only_cut(controller: ControllerProcess, cut: set[str]) -> None:
    """The links named in `cut` fail fast; every other link still relays."""
    for link in links():
        proxy_port = controller.link_ports[link.name]
        if link.name in cut:
            await fails_fast(proxy_port)
        else:
            await round_trip(proxy_port)


async def test_partitioning_a_service_cuts_its_dependencies_and_its_dependents_links(
    controller: ControllerProcess,
) -> None:
    answer = await post(controller, {"action": "partition", "target": "orders-0"})
    assert answer.status_code == 200, answer.text
    expected = {
        "orders-0->datastore-0",
        "orders-0->datastore-1",
        "orders-0->postgres",
        "orders-0->nats",
        "gateway-0->orders-0",
    }
    assert set(answer.json()["applied"]["links"]) == expected
    await assert_only_cut(controller, expected)

    healed = await post(controller, {"action": "heal", "target": "orders-0"})
    assert set(healed.json()["applied"]["links"]) == expected
    await assert_only_cut(controller, set())


async def test_partitioning_a_dependency_cuts_every_link_into_it(
    controller: ControllerProcess,
) -> None:
    answer = await post(controller, {"action": "partition", "target": "postgres"})
    expected = {"orders-0->postgres", "orders-1->postgres", "fulfillment-0->postgres"}
    assert set(answer.json()["applied"]["links"]) == expected
    await assert_only_cut(controller, expected)


async def test_a_peer_narrows_the_fault_to_one_client_and_one_dependency(
    controller: ControllerProcess,
) -> None:
    answer = await post(
        controller, {"action": "partition", "target": "fulfillment-0", "peer": "postgres"}
    )
    assert answer.json()["applied"]["links"] == ["fulfillment-0->postgres"]
    await assert_only_cut(controller, {"fulfillment-0->postgres"})


async def test_delay_slows_only_the_named_pair(controller: ControllerProcess) -> None:
    delay_ms = 300
    answer = await post(
        controller,
        {"action": "delay", "target": "gateway-0", "peer": "datastore-1", "ms": delay_ms},
    )
    assert answer.json()["applied"]["links"] == ["gateway-0->datastore-1"]
    slowed = await round_trip(controller.link_ports["gateway-0->datastore-1"])
    assert slowed >= 2 * delay_ms / 1000 * 0.9  # held once each way
    delayed = {link["name"] for link in answer.json()["links"] if link["delay_ms"]}
    assert delayed == {"gateway-0->datastore-1"}
    healed = await post(controller, {"action": "heal", "target": "gateway-0"})
    assert not any(link["delay_ms"] for link in healed.json()["links"])


async def test_a_peer_without_a_link_to_the_target_is_refused_with_the_valid_peers(
    controller: ControllerProcess,
) -> None:
    answer = await post(
        controller, {"action": "partition", "target": "fulfillment-0", "peer": "datastore-0"}
    )
    assert answer.status_code == 422
    assert answer.json()["valid"] == ["nats", "postgres"]
    await assert_only_cut(controller, set())
