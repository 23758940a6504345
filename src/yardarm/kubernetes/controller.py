"""`python -m yardarm.kubernetes.controller`: the release's control plane in its cluster,
until SIGTERM.

One process does two things. It watches the release's orders EndpointSlices and
publishes the ready pods into the gateway's routing document
(`yardarm.kubernetes.endpoints`). And it is the rollout controller: the rollout API
(`yardarm.rollout.api`) behind the admin token, rollouts kept in the release's
datastore, the stack changed through the chart's Deployments
(`yardarm.kubernetes.effects`), the local controller's engine, loop and telemetry
unchanged. Settings come from the environment the chart gives it (`YARDARM_K8S_*`),
tuning from `YARDARM_ROLLOUTS_*` (`yardarm.rollout.settings`).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from yardarm.containers.target import STATE_MOUNT
from yardarm.kubernetes.target import DEFAULT_RELEASE
from yardarm.model import Topology
from yardarm.rollout.settings import ControllerSettings

INSTANCE = "rollouts"
TOPOLOGY_FILE = "/etc/yardarm/topology/topology.json"
ADMIN_TOKEN_FILE = "/run/yardarm/admin-token"
LISTEN = "0.0.0.0"  # reached through its Service (and `kubectl port-forward`)


class KubernetesSettings(BaseSettings):
    """Where the controller runs and what it reads (`YARDARM_K8S_*`, set by the chart)."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_K8S_", extra="ignore")

    namespace: str = Field(min_length=1, max_length=63)
    release: str = Field(default=DEFAULT_RELEASE, min_length=1, max_length=53)
    topology_file: Path = Path(TOPOLOGY_FILE)
    # The in-cluster Prometheus the judge reads; unset or empty: scrape the pods.
    prometheus_url: str | None = None
    admin_token_file: Path = Path(ADMIN_TOKEN_FILE)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: the topology's
    # The datastore's replicas; default: their names in the cluster. Outside it (a
    # developer's shell) they do not resolve: name a port-forward instead.
    datastore_urls: list[str] | None = None
    state_dir: Path = Path(STATE_MOUNT)

    @field_validator("datastore_urls")
    @classmethod
    def _datastore_urls(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (
            not value or not all(url.startswith(("http://", "https://")) for url in value)
        ):
            raise ValueError("must be a JSON list of http:// or https:// URLs")
        return value

    @field_validator("prometheus_url")
    @classmethod
    def _prometheus_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.strip().rstrip("/")


class SettingsError(Exception):
    """A setting or a file the controller cannot start without; the message says which."""


@dataclass(frozen=True)
class Prepared:
    """What the settings point at, read and checked before anything starts."""

    settings: KubernetesSettings
    tuning: ControllerSettings
    topology: Topology
    token: str

    @property
    def port(self) -> int:
        return self.settings.port or self.topology.rollouts_port


def _errors(prefix: str, exc: ValidationError) -> str:
    """One line per bad setting, by its variable's name (never its value: a webhook
    URL's path is a secret)."""
    return "\n".join(
        f"{prefix}{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    )


def prepare() -> Prepared:
    """The settings from the environment and the files they name."""
    try:
        settings = KubernetesSettings()  # type: ignore[call-arg]  # from the environment
    except ValidationError as exc:
        raise SettingsError(_errors("YARDARM_K8S_", exc)) from exc
    try:
        tuning = ControllerSettings()
    except ValidationError as exc:
        raise SettingsError(_errors("YARDARM_ROLLOUTS_", exc)) from exc
    path = settings.topology_file
    try:
        topology = Topology.model_validate_json(path.read_text())
    except OSError as exc:
        raise SettingsError(f"YARDARM_K8S_TOPOLOGY_FILE: cannot read {path}: {exc}") from exc
    except (ValidationError, json.JSONDecodeError) as exc:
        raise SettingsError(f"YARDARM_K8S_TOPOLOGY_FILE: {path} is not a topology: {exc}") from exc
    try:
        token = settings.admin_token_file.read_text().strip()
    except OSError as exc:
        raise SettingsError(
            f"YARDARM_K8S_ADMIN_TOKEN_FILE: cannot read {settings.admin_token_file}: {exc}"
        ) from exc
    if not token:
        raise SettingsError(f"YARDARM_K8S_ADMIN_TOKEN_FILE: {settings.admin_token_file} is empty")
    return Prepared(settings, tuning, topology, token)


def main(argv: list[str] | None = None) -> int:
    if argv:
        print("usage: python -m yardarm.kubernetes.controller (settings: YARDARM_K8S_*)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        prepared = prepare()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    return run(prepared)


def run(prepared: Prepared) -> int:
    """Serve until SIGTERM; the exit status."""
    # Imported here: the client, aiohttp, the kit and the engine once the settings hold.
    import asyncio
    import contextlib

    from kubernetes.config import ConfigException
    from yardarm_kit import Service, ServiceSettings

    from yardarm.control_kv import ControlKv
    from yardarm.kubernetes.effects import Cluster, KubernetesEffects
    from yardarm.kubernetes.endpoints import EndpointPublisher, SliceWatch, label_selector
    from yardarm.kubernetes.target import KubernetesTarget
    from yardarm.model import deployment
    from yardarm.rollout.serving import resume_when_reachable, serve_rollouts
    from yardarm.routing_writer import RoutingWriter

    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings, tuning, topology = prepared.settings, prepared.tuning, prepared.topology
    release, token = settings.release, prepared.token
    try:
        cluster = Cluster.connect(settings.namespace)
    except ConfigException as exc:
        print(f"no Kubernetes API to talk to (in a pod, nor a kubeconfig): {exc}", file=sys.stderr)
        return 2
    service = Service(
        ServiceSettings(
            service=INSTANCE,
            instance=INSTANCE,
            environment=topology.environment,
            host=LISTEN,
            port=prepared.port,
            state_dir=settings.state_dir,
            flags_file=None,
            span_files=False,
        )
    )
    planned = deployment(topology)
    target = KubernetesTarget(planned, release)
    datastores = settings.datastore_urls or [
        target.url(inst, inst) for inst in planned.of("datastore")
    ]

    publisher = EndpointPublisher(RoutingWriter(datastores, [], token), release)
    effects = KubernetesEffects(
        topology,
        cluster,
        release,
        routing=lambda gateways: RoutingWriter(datastores, list(gateways), token),
        admin_token=token,
        prometheus_url=settings.prometheus_url,
        publisher=publisher,
        sub_window_s=tuning.sub_window_s,
        smoke_rate=tuning.smoke_rate,
    )
    controller, telemetry = serve_rollouts(
        service,
        ControlKv(datastores, token),
        effects,
        tuning,
        token=token,
        environment=topology.environment,
    )
    discovery = cluster.discovery
    assert discovery is not None  # Cluster.connect gives every API
    watch: SliceWatch | None = None
    tasks: list[asyncio.Task[None]] = []

    async def start_watch() -> None:
        nonlocal watch
        loop = asyncio.get_running_loop()
        watch = SliceWatch(
            discovery,
            settings.namespace,
            label_selector(release),
            publisher.offer_threadsafe(loop),
        )
        watch.start()
        tasks.append(asyncio.create_task(publisher.run(), name="publish endpoints"))

    async def stop_watch() -> None:
        if watch is not None:
            watch.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def listed() -> bool:
        """Ready once the EndpointSlices were listed: the gateway gets the pods."""
        return watch is not None and watch.lists > 0

    service.add_readiness_check("endpointslices", listed)
    service.on_startup(start_watch)
    resume_when_reachable(service, controller)
    service.on_shutdown(controller.stop)
    service.on_shutdown(stop_watch)
    service.on_shutdown(effects.close)
    service.on_shutdown(telemetry.close)
    service.log.info(
        "controlling release %s in namespace %s", release, settings.namespace,
        extra={"event": "controller_start"},
    )  # fmt: skip
    try:
        service.run()
    except OSError as exc:
        service.log.error("cannot start: %s", exc, extra={"event": "start_failed"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
