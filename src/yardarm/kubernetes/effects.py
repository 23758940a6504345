"""The rollout engine's effects on Kubernetes: tracks as the chart's Deployments, traffic
through the routing document, windows from Prometheus or from scrapes of the pods.

Every track of orders and fulfillment is a Deployment of the chart
(`<release>-<service>-<track>`, at 0 replicas while no rollout runs it); the gateway is
`<release>-gateway`. Running a version on a track patches that Deployment's image and the
container's settings the version changes (rendered from the deployment model exactly as
the chart's values are, `yardarm.kubernetes.values.workload_env`, for the new version
and the one it replaces), then scales it and waits for its pods to be ready and listed
in the gateway's routing document; each patch is a JSON patch that first tests the object's
resourceVersion, so it never overwrites a change made in between (it reads again). The
downward-API settings the chart gives each pod (its instance name, its index) are kept.
Promotion patches the stable Deployment the same way and lets Kubernetes roll it (one
pod at a time, as the chart's strategy says) while another track takes all its traffic.

The datastore (a StatefulSet of Raft replicas) is not rolled by this controller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kubernetes.client import (
    ApiClient,
    AppsV1Api,
    CoreV1Api,
    DiscoveryV1Api,
    V1Container,
    V1Deployment,
    V1Pod,
)
from kubernetes.client.exceptions import ApiException

from yardarm.kubernetes.endpoints import PUBLISHED, EndpointPublisher, as_document
from yardarm.kubernetes.target import KubernetesTarget, workload_name
from yardarm.kubernetes.values import ROLLOUT_TRACKS, workload_env
from yardarm.model import ROLLABLE, Deployment, Instance, Topology, deployment
from yardarm.rollout.engine import EffectFailed
from yardarm.rollout.observation import TrafficObservation
from yardarm.rollout.routes import APPLIED_WITHIN_S, ROUTES
from yardarm.rollout.spec import sticky_key
from yardarm.routing_writer import KEEP, RoutingWriter

log = logging.getLogger("yardarm.kubernetes")

SERVICE_LABEL: Final = "yardarm.dev/service"
TRACK_LABEL: Final = "yardarm.dev/track"
VERSION_LABEL: Final = "app.kubernetes.io/version"  # the pods' own, kept true
MANAGED: Final = (*ROLLABLE, "gateway")  # the Deployments this controller may change
REQUEST_TIMEOUT_S: Final = 10.0
JSON_PATCH: Final = "application/json-patch+json"
CONFLICT_ATTEMPTS: Final = 5


class Cluster:
    """The few Kubernetes API calls the effects make, in the release's namespace (tests
    give it fake client APIs)."""

    def __init__(
        self,
        namespace: str,
        apps: AppsV1Api,
        core: CoreV1Api,
        discovery: DiscoveryV1Api | None = None,
    ) -> None:
        self.namespace = namespace
        self.apps = apps
        self.core = core
        self.discovery = discovery

    @classmethod
    def connect(cls, namespace: str) -> Cluster:
        """In a pod: its ServiceAccount; elsewhere (a developer's shell): the kubeconfig."""
        from kubernetes import config

        loader: Any = config  # untyped in the client
        try:
            loader.load_incluster_config()
        except config.ConfigException:
            loader.load_kube_config()
        api = ApiClient()
        return cls(namespace, AppsV1Api(api), CoreV1Api(api), DiscoveryV1Api(api))

    def deployment(self, name: str) -> V1Deployment:
        return self.apps.read_namespaced_deployment(
            name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
        )

    def patch_deployment(self, name: str, operations: list[dict[str, Any]]) -> None:
        """A JSON patch (RFC 6902): the operations apply together or not at all."""
        self.apps.patch_namespaced_deployment(
            name,
            self.namespace,
            operations,
            _content_type=JSON_PATCH,
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def pods(self, selector: str) -> list[V1Pod]:
        listed = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S
        )
        return list(listed.items)


def selector_of(found: V1Deployment) -> str:
    """The Deployment's pods, as a label selector."""
    match = found.spec.selector.match_labels if found.spec and found.spec.selector else None
    if not match:
        name = found.metadata.name if found.metadata else "?"
        raise EffectFailed(f"deployment/{name} selects its pods by expressions only")
    return ",".join(f"{key}={value}" for key, value in sorted(match.items()))


def version_setting(service: str) -> str:
    return f"YARDARM_{service.upper()}_VERSION"


def rendered_env(
    topology: Topology,
    release: str,
    service: str,
    track: str,
    version: str | None,
    replicas: int,
) -> dict[str, str]:
    """The settings every pod of `service` on `track` gets when it runs `version`: the
    model's deployment with that track at that version, rendered as the chart's values
    are (per-pod settings left to the downward API)."""
    spec = topology.services.spec(service)
    if version is None:
        raise ValueError(f"{service} on {track} runs no known version")
    spec.release(version)  # refuses an undeclared version
    planned = deployment(topology)
    kept = tuple(i for i in planned.instances if (i.service, i.track) != (service, track))
    placed = tuple(
        Instance(service, track, ordinal, version, primary=track == spec.track)
        for ordinal in range(max(1, replicas))
    )
    changed = Deployment(topology, kept + placed)
    return workload_env(changed, KubernetesTarget(changed, release), service, track)


def merged_env(
    existing: Sequence[dict[str, Any]], rendered: Mapping[str, str], removable: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The container's env with the model's settings replaced by `rendered`: what the
    chart adds (the downward API's instance name, its drain delay, the OTLP endpoint) is
    kept; a `removable` setting (one some version's `env` sets) the new version lacks
    goes."""
    gone = set(removable) - set(rendered)
    kept = [
        entry for entry in existing if entry["name"] not in rendered and entry["name"] not in gone
    ]
    return kept + [{"name": name, "value": value} for name, value in rendered.items()]


def version_env_keys(topology: Topology, service: str) -> set[str]:
    """Every setting of `service` that some declared version's `env` sets."""
    prefix = f"YARDARM_{service.upper()}_"
    spec = topology.services.spec(service)
    return {prefix + key for declared in spec.versions.values() for key in declared.env}


def _by_name(env: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {entry["name"]: entry for entry in env}


@dataclass(frozen=True)
class Rolled:
    """Where a Deployment's rollout stands (`kubectl rollout status`'s reading)."""

    wanted: int
    updated: int
    current: int
    ready: int
    available: int
    observed: bool  # the controller has seen the latest spec

    @classmethod
    def of(cls, found: V1Deployment) -> Rolled:
        status = found.status
        generation = found.metadata.generation if found.metadata else None
        observed = status.observed_generation if status else None
        return cls(
            wanted=int(found.spec.replicas or 0) if found.spec else 0,
            updated=int(status.updated_replicas or 0) if status else 0,
            current=int(status.replicas or 0) if status else 0,
            ready=int(status.ready_replicas or 0) if status else 0,
            available=int(status.available_replicas or 0) if status else 0,
            observed=generation is None or (observed is not None and observed >= generation),
        )

    @property
    def done(self) -> bool:
        """Every pod runs the latest template, is ready and available, and no old one is
        left."""
        n = self.wanted
        return self.observed and self.updated == self.current == self.ready == self.available == n

    def __str__(self) -> str:
        return f"{self.ready}/{self.wanted} ready, {self.updated} updated, {self.current} running"


class KubernetesEffects(TrafficObservation):
    """`yardarm.rollout.engine.Effects` for the chart's workloads in one namespace."""

    def __init__(
        self,
        topology: Topology,
        cluster: Cluster,
        release: str,
        *,
        routing: Callable[[Sequence[str]], RoutingWriter],
        admin_token: str = "",
        prometheus_url: str | None = None,
        publisher: EndpointPublisher | None = None,
        sub_window_s: float = 2.0,
        timeout_s: float = 300.0,
        poll_s: float = 1.0,
        smoke_rate: float = 20.0,
    ) -> None:
        self.topology = topology
        self.cluster = cluster
        self.release = release
        self._routing = routing
        self._token = admin_token
        self._publisher = publisher
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        super().__init__(
            prometheus_url=prometheus_url, sub_window_s=sub_window_s, smoke_rate=smoke_rate
        )
        planned = deployment(topology)
        self._target = KubernetesTarget(planned, release)
        self._gateway = planned.of("gateway")[0]

    # -- names and reads ---------------------------------------------------------------

    def _primary(self, service: str) -> str:
        return self.topology.services.spec(service).track

    def _tracks(self, service: str) -> tuple[str, ...]:
        """The tracks the chart has a Deployment for, the primary one first."""
        primary = self._primary(service)
        if service not in ROLLABLE:
            return (primary,)
        return (primary, *(t for t in ROLLOUT_TRACKS if t != primary))

    def workload(self, service: str, track: str) -> str:
        """The Deployment of `service` on `track`; refuses anything the chart has none of."""
        if service not in MANAGED:
            raise EffectFailed(
                f"{service} is not rolled by the Kubernetes controller (it changes only "
                f"{', '.join(MANAGED)}); roll its StatefulSet with kubectl or helm"
            )
        if track not in self._tracks(service):
            raise EffectFailed(f"the chart runs no {service} on track {track}")
        return workload_name(self.release, service, track)

    def _read(self, name: str) -> V1Deployment:
        try:
            return self.cluster.deployment(name)
        except ApiException as exc:
            raise EffectFailed(
                f"cannot read deployment/{name} in {self.cluster.namespace}: "
                f"{exc.status} {exc.reason}"
            ) from exc

    def _container(self, found: V1Deployment, service: str) -> tuple[int, V1Container]:
        """The service's container: the one named after it, else the only one."""
        name = found.metadata.name if found.metadata else "?"
        spec = found.spec.template.spec if found.spec and found.spec.template else None
        containers = list(spec.containers) if spec else []
        for index, container in enumerate(containers):
            if container.name == service:
                return index, container
        if len(containers) == 1:
            return 0, containers[0]
        raise EffectFailed(f"deployment/{name} has no container named {service}")

    def _check_labels(self, found: V1Deployment, service: str, track: str) -> None:
        """A Deployment labelled for another service or track is never changed."""
        template = found.spec.template if found.spec else None
        labels = (template.metadata.labels if template and template.metadata else None) or {}
        name = found.metadata.name if found.metadata else "?"
        for label, wanted in ((SERVICE_LABEL, service), (TRACK_LABEL, track)):
            if labels.get(label, wanted) != wanted:
                raise EffectFailed(
                    f"deployment/{name} runs {label}={labels[label]}, not {wanted}: left as it is"
                )

    def _version_in(self, found: V1Deployment, service: str) -> str | None:
        _, container = self._container(found, service)
        for entry in container.env or []:
            if entry.name == version_setting(service) and entry.value:
                return str(entry.value)
        return None

    def _base_image(self, service: str) -> str:
        """The service's own image (what a version without an `image` runs): that of a
        track whose version sets none, the stable one first."""
        spec = self.topology.services.spec(service)
        for track in self._tracks(service):
            found = self._read(self.workload(service, track))
            version = self._version_in(found, service)
            if version in spec.versions and spec.versions[version].image is not None:
                continue
            image = self._container(found, service)[1].image
            if image:
                return str(image)
        raise EffectFailed(
            f"every {service} Deployment runs a version's own image: cannot tell the "
            "service's image for a version that names none"
        )

    def _image(self, service: str, version: str) -> str:
        declared = self.topology.services.spec(service).release(version).image
        return declared or self._base_image(service)

    def replicas(self, service: str) -> int:
        if service not in MANAGED:
            return self.topology.services.spec(service).replicas
        found = self._read(self.workload(service, self._primary(service)))
        return int(found.spec.replicas or 0) if found.spec else 0

    def stable_version(self, service: str) -> str:
        if service not in MANAGED:
            return self.topology.services.spec(service).version
        found = self._read(self.workload(service, self._primary(service)))
        return self._version_in(found, service) or self.topology.services.spec(service).version

    # -- changes -----------------------------------------------------------------------

    def _apply(self, service: str, track: str, version: str | None, replicas: int | None) -> bool:
        """Patch the track's Deployment to run `version` (None: leave its image and
        settings) at `replicas` (None: as it is); whether anything changed."""
        name = self.workload(service, track)
        image = None
        if version is not None:
            try:
                image = self._image(service, version)
            except ValueError as exc:
                raise EffectFailed(f"{service} on {track}: {exc}") from exc
        for attempt in range(CONFLICT_ATTEMPTS):
            found = self._read(name)
            self._check_labels(found, service, track)
            operations = self._changes(found, service, track, version, image, replicas)
            if not operations:
                return False
            resource_version = found.metadata.resource_version if found.metadata else None
            test = {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}
            try:
                self.cluster.patch_deployment(name, [test, *operations])
            except ApiException as exc:
                if exc.status in (409, 422) and attempt + 1 < CONFLICT_ATTEMPTS:
                    continue  # changed since it was read: read it again
                raise EffectFailed(
                    f"deployment/{name} refused the change: {exc.status} {exc.reason}"
                ) from exc
            log.info("deployment/%s: %s", name, ", ".join(op["path"] for op in operations))
            return True
        raise EffectFailed(f"deployment/{name} kept changing while it was patched")

    def _wanted_env(
        self,
        existing: list[dict[str, Any]],
        service: str,
        track: str,
        was: str | None,
        version: str,
        size: int,
    ) -> list[dict[str, Any]]:
        """The container's env for `version`: what the model renders differently for it
        than for the version the Deployment runs now (`was`) is changed, what the chart
        or an operator set otherwise is kept. Without a known `was`, every setting the
        model renders is set."""
        after = rendered_env(self.topology, self.release, service, track, version, size)
        removable = version_env_keys(self.topology, service)
        try:
            before = rendered_env(self.topology, self.release, service, track, was, size)
        except ValueError:  # a version the model no longer declares
            before = None
        if was is None or before is None:
            return merged_env(existing, after, removable)
        present = {entry["name"] for entry in existing}
        changed = {k: v for k, v in after.items() if before.get(k) != v or k not in present}
        gone = (before.keys() | removable) - after.keys()
        return merged_env(existing, changed, gone)

    def _changes(
        self,
        found: V1Deployment,
        service: str,
        track: str,
        version: str | None,
        image: str | None,
        replicas: int | None,
    ) -> list[dict[str, Any]]:
        """The JSON patch operations that make `found` so (none: it is)."""
        current = found.spec.replicas if found.spec else None
        operations: list[dict[str, Any]] = []
        if version is not None and image is not None:
            index, container = self._container(found, service)
            where = f"/spec/template/spec/containers/{index}"
            size = replicas if replicas is not None else int(current or 1)
            existing = [as_document(entry) for entry in container.env or []]
            was = self._version_in(found, service)
            wanted_env = self._wanted_env(existing, service, track, was, version, size)
            if container.image != image or _by_name(existing) != _by_name(wanted_env):
                operations += [
                    {"op": "test", "path": f"{where}/name", "value": container.name},
                    {"op": "add", "path": f"{where}/image", "value": image},
                    {"op": "add", "path": f"{where}/env", "value": wanted_env},
                ]
            template = found.spec.template if found.spec else None
            labels = (template.metadata.labels if template and template.metadata else None) or {}
            if VERSION_LABEL in labels and labels[VERSION_LABEL] != version:
                path = "/spec/template/metadata/labels/" + VERSION_LABEL.replace("/", "~1")
                operations.append({"op": "add", "path": path, "value": version})
        if replicas is not None and current != replicas:
            operations.append({"op": "add", "path": "/spec/replicas", "value": replicas})
        return operations

    async def _wait_rolled(self, service: str, track: str, version: str | None) -> None:
        """Until the Deployment's pods all run its template, ready, and no other pod of it
        is left (none at all when scaled to 0)."""
        name = self.workload(service, track)
        deadline = time.monotonic() + self._timeout_s
        while True:
            found = await asyncio.to_thread(self._read, name)
            rolled = Rolled.of(found)
            gone = True
            if rolled.done and rolled.wanted == 0:
                gone = not await asyncio.to_thread(self.cluster.pods, selector_of(found))
            if rolled.done and gone:
                return
            if time.monotonic() >= deadline:
                left = "" if gone else "; its pods are still terminating"
                at = f" at {version}" if version else ""
                raise EffectFailed(
                    f"{service} on {track}{at}: deployment/{name} not rolled out "
                    f"within {self._timeout_s:g}s ({rolled}{left}); see `kubectl describe "
                    f"deployment/{name} -n {self.cluster.namespace}` and its pods' events"
                )
            await asyncio.sleep(self._poll_s)

    async def _wait_routable(self, service: str, track: str, replicas: int) -> None:
        """Until the gateway's routing document lists the track's ready pods (published
        by the EndpointSlice watch), so weights never move to a track it cannot reach."""
        if self._publisher is None or service not in PUBLISHED or replicas == 0:
            return
        deadline = time.monotonic() + self._timeout_s
        while True:
            listed = self._publisher.published.get(service, [])
            if sum(1 for e in listed if e.track == track) >= replicas:
                return
            if time.monotonic() >= deadline:
                raise EffectFailed(
                    f"{service} on {track}: its pods are ready but the gateway's routing "
                    f"document lists none of them after {self._timeout_s:g}s (the "
                    "controller's EndpointSlice watch: see its log)"
                )
            await asyncio.sleep(self._poll_s / 4)

    async def _run(
        self, service: str, track: str, version: str | None, replicas: int | None
    ) -> None:
        await asyncio.to_thread(self._apply, service, track, version, replicas)
        await self._wait_rolled(service, track, version)

    async def ensure_tracks(self, service: str, tracks: Mapping[str, tuple[str, int]]) -> None:
        for track, (version, replicas) in tracks.items():
            await self._run(service, track, version, replicas)
            await self._wait_routable(service, track, replicas)

    async def stop_tracks(self, service: str, tracks: tuple[str, ...]) -> None:
        for track in tracks:
            await self._run(service, track, None, 0)

    async def promote(self, service: str, version: str) -> None:
        """The stable Deployment at `version`, rolled by Kubernetes as its strategy says."""
        await self._run(service, self._primary(service), version, None)

    async def _gateway_admin_urls(self) -> list[str]:
        found = await asyncio.to_thread(self._read, workload_name(self.release, "gateway", ""))
        pods = await asyncio.to_thread(self.cluster.pods, selector_of(found))
        port = self._target.gateway_admin_port(self._gateway)
        return [f"http://{ip}:{port}" for ip in running_ips(pods)]

    async def set_weights(
        self, service: str, weights: Mapping[str, int], sticky: str | None = None
    ) -> None:
        key = KEEP if sticky is None else sticky_key(sticky) if sticky else None
        writer = self._routing(await self._gateway_admin_urls())
        version = await writer.set_splits(ROUTES[service], dict(weights), sticky=key)
        late = await writer.wait_applied(version, APPLIED_WITHIN_S)
        if late:
            log.warning("gateway replica(s) %s did not take routing v%d yet", late, version)

    # -- metrics and smoke ---------------------------------------------------------------

    def metrics_urls(self, service: str) -> list[str]:
        """Every gateway pod's admin `/metrics` and every pod of the service's tracks."""
        gateway = self._read(workload_name(self.release, "gateway", ""))
        port = self._target.gateway_admin_port(self._gateway)
        urls = [
            f"http://{ip}:{port}" for ip in running_ips(self.cluster.pods(selector_of(gateway)))
        ]
        if service in ROLLABLE:
            own = self._target.port(deployment(self.topology).of(service)[0])
            for track in self._tracks(service):
                found = self._read(self.workload(service, track))
                if found.spec and found.spec.replicas:
                    pods = self.cluster.pods(selector_of(found))
                    urls += [f"http://{ip}:{own}" for ip in running_ips(pods)]
        return urls

    async def scrape_urls(self, service: str) -> list[str]:
        return await asyncio.to_thread(self.metrics_urls, service)  # API calls, off the loop

    def smoke_gateway(self) -> tuple[str, str]:
        return self._target.url(self._gateway, self._gateway), self._token


def running_ips(pods: Sequence[V1Pod]) -> list[str]:
    """The addresses of the pods that run and are not being deleted."""
    ips = []
    for pod in pods:
        if pod.metadata and pod.metadata.deletion_timestamp is not None:
            continue
        if pod.status and pod.status.phase == "Running" and pod.status.pod_ip:
            ips.append(str(pod.status.pod_ip))
    return sorted(ips)
