"""The EndpointSlice watch: which pods the gateway is told to dial, how the watch recovers
from an expired version and from errors, and that the routing document is written only
when the set changes.

The Kubernetes API is faked at the client's boundary: `DiscoveryV1Api`'s list method
returns the client's own models, and, called with `watch=True`, a response whose body is
the API server's stream of JSON events, which the client's real `Watch` parses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from kubernetes.client import (
    DiscoveryV1EndpointPort,
    V1Endpoint,
    V1EndpointConditions,
    V1EndpointSlice,
    V1EndpointSliceList,
    V1ListMeta,
    V1ObjectMeta,
)

from tests.gateway.conftest import datastore_url
from yardarm.kubernetes.endpoints import (
    EndpointPublisher,
    SliceWatch,
    as_document,
    endpoints_by_upstream,
    label_selector,
)
from yardarm.routing_writer import ROUTING_KEY, Endpoint, RoutingWriter

__all__ = ["datastore_url"]

RELEASE = "shop"
NAMESPACE = "yardarm"


def endpoint(address: str, ready: bool | None = True, **conditions: bool) -> V1Endpoint:
    return V1Endpoint(
        addresses=[address], conditions=V1EndpointConditions(ready=ready, **conditions)
    )


def slice_of(
    service: str,
    endpoints: Sequence[V1Endpoint],
    *,
    name: str | None = None,
    ports: Sequence[tuple[str | None, int]] = (("http", 8100),),
    version: str = "1",
) -> V1EndpointSlice:
    """An EndpointSlice of the Service `service`, as the EndpointSlice controller makes it."""
    return V1EndpointSlice(
        address_type="IPv4",
        metadata=V1ObjectMeta(
            name=name or f"{service}-abcde",
            namespace=NAMESPACE,
            resource_version=version,
            labels={"kubernetes.io/service-name": service},
        ),
        endpoints=list(endpoints),
        ports=[DiscoveryV1EndpointPort(name=n, port=p, protocol="TCP") for n, p in ports],
    )


def test_ready_endpoints_of_every_slice_by_track_and_named_port() -> None:
    slices = [
        # Two slices of one Service merge; the port is the one named http.
        slice_of(
            "shop-orders-stable",
            [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False)],
            name="a",
            ports=(("metrics", 9000), ("http", 8100)),
        ),
        slice_of("shop-orders-stable", [endpoint("10.0.0.3"), endpoint("10.0.0.1")], name="b"),
        # Draining: still serving, terminating: no new requests.
        slice_of(
            "shop-orders-canary",
            [
                endpoint("10.0.1.1"),
                endpoint("10.0.1.2", ready=False, serving=True, terminating=True),
                endpoint("10.0.1.3", ready=None),  # unknown: ready, as the API says
            ],
        ),
        # Not this release's orders: ignored.
        slice_of("other-orders-stable", [endpoint("10.9.0.1")]),
        slice_of("shop-datastore-peers", [endpoint("10.0.2.1")], ports=(("http", 8090),)),
    ]
    assert endpoints_by_upstream(slices, RELEASE) == {
        "orders": [
            Endpoint("http://10.0.1.1:8100", "canary"),
            Endpoint("http://10.0.1.3:8100", "canary"),
            Endpoint("http://10.0.0.1:8100", "stable"),
            Endpoint("http://10.0.0.3:8100", "stable"),
        ]
    }


def test_a_track_without_pods_is_an_empty_list_and_no_slice_is_no_upstream() -> None:
    gone = slice_of("shop-orders-stable", [endpoint("10.0.0.1", ready=False, terminating=True)])
    assert endpoints_by_upstream([gone], RELEASE) == {"orders": []}
    assert endpoints_by_upstream([], RELEASE) == {}
    # The JSON form (a watch event's raw object) reads the same as the client's model.
    assert endpoints_by_upstream([json_of(gone)], RELEASE) == {"orders": []}


def test_the_selector_names_every_track_service_of_the_release() -> None:
    selector = label_selector(RELEASE)
    assert selector.startswith("kubernetes.io/service-name in (")
    for track in ("stable", "canary", "baseline", "green", "blue"):
        assert f"shop-orders-{track}" in selector
    assert "datastore" not in selector


# -- the watch against a fake API server ---------------------------------------------


def json_of(obj: Any) -> dict[str, Any]:
    """The API's JSON of a client model (a watch event's object)."""
    return as_document(obj)


class StreamResponse:
    """A watch response: the server's newline-separated JSON events."""

    status = 200

    def __init__(self, events: Sequence[dict[str, Any]]) -> None:
        self._body = b"".join(json.dumps(event).encode() + b"\n" for event in events)

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        yield self._body

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def event(kind: str, obj: V1EndpointSlice) -> dict[str, Any]:
    return {"type": kind, "object": json_of(obj)}


GONE = {
    "type": "ERROR",
    "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
}


class FakeDiscovery:
    """`DiscoveryV1Api.list_namespaced_endpoint_slice` answering from a script: each
    list call takes the next list (or exception), each watch call the next stream."""

    def __init__(self, lists: list[Any], streams: list[list[dict[str, Any]]]) -> None:
        self.lists = lists
        self.streams = streams
        self.calls: list[dict[str, Any]] = []
        self.watch: SliceWatch | None = None

    def list_namespaced_endpoint_slice(self, namespace: str, **kwargs: Any) -> V1EndpointSliceList:
        self.calls.append({"namespace": namespace, **kwargs})
        if kwargs.get("watch"):
            if not self.streams:  # the script is over: the watch stops
                assert self.watch is not None
                self.watch.stop()
                return StreamResponse([])  # type: ignore[return-value]
            return StreamResponse(self.streams.pop(0))  # type: ignore[return-value]
        listed = self.lists.pop(0)
        if isinstance(listed, Exception):
            raise listed
        assert isinstance(listed, V1EndpointSliceList)
        return listed


def listing(version: str, *slices: V1EndpointSlice) -> V1EndpointSliceList:
    return V1EndpointSliceList(items=list(slices), metadata=V1ListMeta(resource_version=version))


def run_watch(discovery: FakeDiscovery) -> tuple[SliceWatch, list[dict[str, list[Endpoint]]]]:
    seen: list[dict[str, list[Endpoint]]] = []
    watch = SliceWatch(
        discovery,  # type: ignore[arg-type]
        NAMESPACE,
        label_selector(RELEASE),
        lambda slices: seen.append(endpoints_by_upstream(slices, RELEASE)),
    )
    discovery.watch = watch
    watch.run()  # until the script is over
    return watch, seen


def test_list_then_watch_applies_events_and_a_410_lists_again() -> None:
    stable = slice_of("shop-orders-stable", [endpoint("10.0.0.1")], version="10")
    canary = slice_of("shop-orders-canary", [endpoint("10.0.1.1")], name="c", version="11")
    canary_gone = slice_of("shop-orders-canary", [], name="c", version="12")
    after = slice_of("shop-orders-stable", [endpoint("10.0.0.2")], version="30")
    discovery = FakeDiscovery(
        lists=[listing("10", stable), listing("30", after)],
        streams=[
            [event("ADDED", canary), event("MODIFIED", canary_gone), event("DELETED", canary_gone)],
            [GONE],  # the version was compacted away
            [],
        ],
    )
    watch, seen = run_watch(discovery)
    assert watch.lists == 2
    urls = [[e.url for e in found.get("orders", [])] for found in seen]
    assert urls == [
        ["http://10.0.0.1:8100"],  # listed
        ["http://10.0.1.1:8100", "http://10.0.0.1:8100"],  # canary added
        ["http://10.0.0.1:8100"],  # canary's pod gone
        ["http://10.0.0.1:8100"],  # its slice deleted
        ["http://10.0.0.2:8100"],  # listed again after the 410
    ]
    watches = [call for call in discovery.calls if call.get("watch")]
    # Each watch resumes from the last version seen (one the server ended too); after
    # the 410, from the new list's.
    assert [call["resource_version"] for call in watches] == ["10", "12", "30", "30"]
    assert all(call["label_selector"] == label_selector(RELEASE) for call in discovery.calls)
    assert all(call["namespace"] == NAMESPACE for call in discovery.calls)


def test_an_error_backs_off_and_lists_again() -> None:
    from kubernetes.client.exceptions import ApiException

    stable = slice_of("shop-orders-stable", [endpoint("10.0.0.1")], version="5")
    discovery = FakeDiscovery(
        lists=[ApiException(status=503, reason="Service Unavailable"), listing("5", stable)],
        streams=[],
    )
    watch, seen = run_watch(discovery)
    assert watch.lists == 1
    assert [[e.url for e in found["orders"]] for found in seen] == [["http://10.0.0.1:8100"]]


# -- publishing ----------------------------------------------------------------------


class RecordingWriter:
    def __init__(self) -> None:
        self.writes: list[tuple[str, list[Endpoint]]] = []

    async def publish(self, upstream: str, endpoints: Sequence[Endpoint]) -> int:
        self.writes.append((upstream, list(endpoints)))
        return len(self.writes)


async def test_publishes_once_per_burst_and_only_when_the_set_changes() -> None:
    writer = RecordingWriter()
    publisher = EndpointPublisher(writer, RELEASE, debounce_s=0.1)
    task = asyncio.create_task(publisher.run())
    try:
        one = json_of(slice_of("shop-orders-stable", [endpoint("10.0.0.1")]))
        two = json_of(slice_of("shop-orders-stable", [endpoint("10.0.0.1"), endpoint("10.0.0.2")]))
        not_ready = json_of(
            slice_of("shop-orders-stable", [endpoint("10.0.0.1"), endpoint("10.0.0.2", False)])
        )
        for slices in ([one], [two], [one]):  # a burst: only its end is written
            publisher.offer(slices)
        await asyncio.sleep(0.4)
        assert writer.writes == [("orders", [Endpoint("http://10.0.0.1:8100", "stable")])]
        publisher.offer([not_ready])  # a slice changed, the ready set did not
        await asyncio.sleep(0.4)
        assert len(writer.writes) == 1
        publisher.offer([two])
        await asyncio.sleep(0.4)
        assert len(writer.writes) == 2
        assert [e.url for e in writer.writes[-1][1]] == [
            "http://10.0.0.1:8100",
            "http://10.0.0.2:8100",
        ]
        publisher.offer([])  # no slice at all: the gateway keeps what it has
        await asyncio.sleep(0.4)
        assert len(writer.writes) == 2
    finally:
        task.cancel()


async def test_the_gateway_routing_document_gets_the_pods(datastore_url: str) -> None:
    writer = RoutingWriter([datastore_url], [], "unused-token", timeout_s=10)
    publisher = EndpointPublisher(writer, RELEASE, debounce_s=0.05)
    slices = [
        json_of(slice_of("shop-orders-stable", [endpoint("10.0.0.1"), endpoint("10.0.0.2")])),
        json_of(slice_of("shop-orders-canary", [endpoint("10.0.1.1")], name="c")),
    ]
    publisher.offer(slices)
    await publisher.flush()
    async with httpx.AsyncClient() as client:
        entry = (await client.get(f"{datastore_url}/kv/{ROUTING_KEY}")).json()
    assert entry["value"]["endpoints"] == {
        "orders": [
            {"url": "http://10.0.1.1:8100", "track": "canary"},
            {"url": "http://10.0.0.1:8100", "track": "stable"},
            {"url": "http://10.0.0.2:8100", "track": "stable"},
        ]
    }
    # The routes stay the gateway's built-in ones; the datastore is not published.
    assert "datastore" not in entry["value"]["endpoints"]
    assert {route["name"] for route in entry["value"]["routes"]} >= {"api-orders", "api-stock"}
    publisher.offer(list(slices))  # the same set again: nothing written
    await publisher.flush()
    async with httpx.AsyncClient() as client:
        again = (await client.get(f"{datastore_url}/kv/{ROUTING_KEY}")).json()
    assert again["version"] == entry["version"]


@pytest.mark.parametrize("address", ["fd00::7"])
def test_an_ipv6_address_is_bracketed(address: str) -> None:
    found = endpoints_by_upstream([slice_of("shop-orders-stable", [endpoint(address)])], RELEASE)
    assert found["orders"][0].url == "http://[fd00::7]:8100"
