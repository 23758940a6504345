"""The EndpointSlice watch: orders' ready pods, published into the gateway's routing
document (Envoy's EDS, for this stack).

The chart bootstraps every gateway with one endpoint per track (the track's Service,
balanced by kube-proxy); the controller replaces them with the pods themselves, so the
gateway balances, health-checks, ejects and splits by track per pod. It lists the
release's orders EndpointSlices, then watches from that list's resourceVersion (a 410
Gone, the version compacted away, lists again), and publishes when the set of ready
endpoints changed, debounced, so a rollout that starts three pods writes once. An
endpoint that is terminating leaves the list at once, even while it still serves: the
gateway stops sending it new requests and lets those in flight finish.

The datastore is not published: its replicas are named by their stable DNS names.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from kubernetes.client import ApiClient, DiscoveryV1Api, V1EndpointSliceList
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch
from yardarm_kit.identity import TRACKS

from yardarm.kubernetes.target import workload_name
from yardarm.routing_writer import Endpoint, PublishError

log = logging.getLogger("yardarm.kubernetes")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRACK_LABEL = "yardarm.dev/track"
PUBLISHED = ("orders",)  # the upstreams whose pods the gateway dials directly
PORT_NAME = "http"  # the chart's name for a service's HTTP port
GONE = 410
DEBOUNCE_S = 0.5
WATCH_TIMEOUT_S = 60  # the server ends each watch call; the next resumes where it ended
_WATCH: Any = Watch  # untyped in the client
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)

Document = dict[str, Any]  # an EndpointSlice as the API's JSON has it


@functools.cache
def _serializer() -> Any:
    """One client for its serializer (untyped in the client), made on first use."""
    return ApiClient()


def as_document(obj: Any) -> Document:
    """An API object as its JSON (camelCase keys), whether a client model or a dict."""
    if isinstance(obj, dict):
        return obj
    document = _serializer().sanitize_for_serialization(obj)
    assert isinstance(document, dict)
    return document


def service_names(release: str, upstreams: Sequence[str] = PUBLISHED) -> dict[str, tuple[str, str]]:
    """Each track Service of the published upstreams: name -> (upstream, track)."""
    return {
        workload_name(release, upstream, track): (upstream, track)
        for upstream in upstreams
        for track in TRACKS
    }


def label_selector(release: str, upstreams: Sequence[str] = PUBLISHED) -> str:
    """The release's published track Services' slices, by the label Kubernetes sets."""
    return f"{SERVICE_NAME_LABEL} in ({','.join(sorted(service_names(release, upstreams)))})"


def _port(ports: Sequence[Mapping[str, Any]], name: str) -> int | None:
    """The slice's port by name; a slice of one unnamed port means that one."""
    for port in ports:
        if port.get("name") == name and port.get("port") is not None:
            return int(port["port"])
    if len(ports) == 1 and not ports[0].get("name") and ports[0].get("port") is not None:
        return int(ports[0]["port"])
    return None


def ready(endpoint: Mapping[str, Any]) -> bool:
    """Whether an endpoint should get new requests: ready (an unset condition means
    ready, as the API says) and not terminating, even if it still serves."""
    conditions = endpoint.get("conditions") or {}
    return conditions.get("ready") is not False and conditions.get("terminating") is not True


def endpoints_by_upstream(
    slices: Iterable[Any], release: str, port_name: str = PORT_NAME
) -> dict[str, list[Endpoint]]:
    """The ready endpoints of each published upstream, from its track Services' slices
    (several slices of one Service merge; each address once, in a stable order). An
    upstream with no slice at all is left out; one whose pods are all gone maps to []."""
    services = service_names(release)
    found: dict[str, set[Endpoint]] = {}
    for obj in slices:
        document = as_document(obj)
        labels = (document.get("metadata") or {}).get("labels") or {}
        named = services.get(labels.get(SERVICE_NAME_LABEL, ""))
        if named is None:
            continue
        upstream, track = named
        track = labels.get(TRACK_LABEL, track)
        listed = found.setdefault(upstream, set())
        port = _port(document.get("ports") or [], port_name)
        if port is None:
            continue
        for endpoint in document.get("endpoints") or []:
            if not ready(endpoint):
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                listed.add(Endpoint(url=f"http://{host}:{port}", track=track))
    return {
        upstream: sorted(listed, key=lambda e: (e.track, e.url))
        for upstream, listed in found.items()
    }


# -- the watch -----------------------------------------------------------------------


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class SliceWatch:
    """The release's slices, kept current by list-then-watch on a thread of its own (the
    client blocks); every change hands the whole set to `on_change`."""

    def __init__(
        self,
        discovery: DiscoveryV1Api,
        namespace: str,
        selector: str,
        on_change: Callable[[list[Document]], None],
        *,
        timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        self._discovery = discovery
        self._namespace = namespace
        self._selector = selector
        self._on_change = on_change
        self._timeout_s = timeout_s
        self.slices: dict[str, Document] = {}
        self.lists = 0  # how many times the slices were listed (the first, then after a 410)
        self._stopping = threading.Event()
        self._watch: Any = None  # the client's Watch (untyped)

    def relist(self) -> str:
        """List the slices, replacing what was known; the list's resourceVersion."""
        listed: V1EndpointSliceList = self._discovery.list_namespaced_endpoint_slice(
            self._namespace, label_selector=self._selector
        )
        self.lists += 1
        self.slices = {}
        for item in listed.items:
            document = as_document(item)
            self.slices[document["metadata"]["name"]] = document
        self._on_change(list(self.slices.values()))
        return str(listed.metadata.resource_version if listed.metadata else "")

    def watch(self, resource_version: str) -> str:
        """One watch call from `resource_version`, applying its events, until the server
        ends it; the last resourceVersion seen. Raises `Gone` on a 410."""
        watch = self._watch = _WATCH()
        try:
            for event in watch.stream(
                self._discovery.list_namespaced_endpoint_slice,
                self._namespace,
                label_selector=self._selector,
                resource_version=resource_version,
                timeout_seconds=self._timeout_s,
                allow_watch_bookmarks=True,
            ):
                kind = event["type"]
                document = event.get("raw_object") or as_document(event["object"])
                metadata = document.get("metadata") or {}
                resource_version = str(metadata.get("resourceVersion") or resource_version)
                if kind == "BOOKMARK":
                    continue
                name = metadata.get("name", "")
                if kind == "DELETED":
                    self.slices.pop(name, None)
                else:
                    self.slices[name] = document
                self._on_change(list(self.slices.values()))
                if self._stopping.is_set():
                    break
        except ApiException as exc:
            if exc.status == GONE:
                raise Gone from exc
            raise
        finally:
            self._watch = None
        return resource_version

    def run(self) -> None:
        """List, then watch for as long as the process runs; on an error wait (longer
        each time, up to 10 s) and list again."""
        failures = 0
        resource_version: str | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self.relist()
                resource_version = self.watch(resource_version)
                failures = 0
            except Gone:
                log.info("endpoint slices: the watch's version expired; listing again")
                resource_version = None
            except Exception as exc:  # the API server away, a token being rotated
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("endpoint slices: %s; again in %.1fs", _brief(exc), delay)
                resource_version = None
                self._stopping.wait(delay)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="endpointslice-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()


def _brief(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"the API server answered {exc.status} {exc.reason}"
    return f"{exc.__class__.__name__}: {exc}"


# -- publishing ----------------------------------------------------------------------


class Publisher(Protocol):
    """Where endpoints go (`yardarm.routing_writer.RoutingWriter`)."""

    async def publish(self, upstream: str, endpoints: Sequence[Endpoint]) -> int: ...


class EndpointPublisher:
    """Publishes each upstream's ready endpoints when they change, at most once per
    debounce interval, and again after a failed write."""

    def __init__(self, writer: Publisher, release: str, *, debounce_s: float = DEBOUNCE_S) -> None:
        self._writer = writer
        self._release = release
        self._debounce_s = debounce_s
        self._slices: list[Document] | None = None  # None: not listed yet
        self._changed = asyncio.Event()
        self.published: dict[str, list[Endpoint]] = {}
        self.writes = 0

    def offer(self, slices: list[Document]) -> None:
        """The slices as they stand now (on the event loop's thread)."""
        self._slices = slices
        self._changed.set()

    def offer_threadsafe(self, loop: asyncio.AbstractEventLoop) -> Callable[[list[Document]], None]:
        """`offer`, callable from the watch's thread."""

        def offer(slices: list[Document]) -> None:
            loop.call_soon_threadsafe(self.offer, slices)

        return offer

    async def flush(self) -> None:
        """Publish every upstream whose endpoints differ from those last published. An
        upstream none of whose Services has a slice (a release name that matches none)
        keeps the endpoints the gateway has: no pod is better known than none."""
        if self._slices is None:
            return
        wanted = endpoints_by_upstream(self._slices, self._release)
        for upstream in PUBLISHED:
            endpoints = wanted.get(upstream)
            if endpoints is None or self.published.get(upstream) == endpoints:
                continue
            await self._writer.publish(upstream, endpoints)
            self.writes += 1
            self.published[upstream] = endpoints
            log.info(
                "published %d %s endpoint(s): %s",
                len(endpoints), upstream, ", ".join(f"{e.url} ({e.track})" for e in endpoints),
            )  # fmt: skip

    async def run(self) -> None:
        """Until cancelled: wait for a change, let the burst settle, publish."""
        while True:
            await self._changed.wait()
            await asyncio.sleep(self._debounce_s)
            self._changed.clear()
            try:
                await self.flush()
            except PublishError as exc:
                log.warning("publishing endpoints failed: %s; trying again", exc)
                self._changed.set()
                await asyncio.sleep(1.0)
