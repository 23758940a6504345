"""The deployment model: what the stack is made of, which versions each service may run,
on which tracks, and the port plan every local address derives from.

Target-neutral: nothing here knows how an instance is started (a process, a container,
a pod, a systemd unit). Renderers (`yardarm.local` today) turn this model into a target's
configuration; `yardarm.model.settings` gives each instance's settings for all of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yardarm_kit.gateway_policy import RateLimitConfig, UpstreamPolicy
from yardarm_kit.identity import Track

from yardarm.model.flags import check_flag, default_flags, pin_problem

MAX_REPLICAS = 9  # one decimal digit per ordinal in the port plan
MAX_GATEWAYS = 9  # admin ports base+1 .. base+9 sit below the datastore's base+10
MAX_DATASTORES = 9  # link ports base+100+10*i+j need one decimal digit per replica
# Dependency links take base+200 upward: at most 9 x 11 (orders) + 9 x 2 (fulfillment)
# + 9 x 18 (gateway) = 279 of them.
DEPENDENCY_LINK_OFFSET = 200
# Instances on tracks other than a service's primary one take ports from here, in order,
# so the highest base port (65000) still ends at 65535.
TRACK_PORT_OFFSET = 480
TRACK_PORT_COUNT = 56
MAX_BASE_PORT = 65535 - TRACK_PORT_OFFSET - TRACK_PORT_COUNT + 1
VERSION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
SETTING_NAME = r"^[A-Z][A-Z0-9_]{0,63}$"
# Settings the model itself gives every instance; a version cannot override who it is.
IDENTITY_SETTINGS = frozenset(
    {"SERVICE", "INSTANCE", "VERSION", "TRACK", "ENVIRONMENT", "HOST", "PORT", "STATE_DIR"}
)


class VersionSpec(BaseModel):
    """One release of a service: what differs from the service's defaults.

    Locally every version runs the same code, so a version is its settings (`env`, keys
    of `YARDARM_<SERVICE>_*` without the prefix) and its flag pins (`flags`: flag key to
    one of its variants); the container targets also take the image tag (`image`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    flags: dict[str, str] = Field(default_factory=dict)
    image: str | None = Field(default=None, min_length=1)

    @field_validator("env")
    @classmethod
    def _setting_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(SETTING_NAME, key):
                raise ValueError(
                    f"env key {key!r} must be a setting name without its prefix "
                    "(upper case, digits, underscores: LOG_LEVEL)"
                )
            if key in IDENTITY_SETTINGS:
                raise ValueError(f"env key {key!r} is set by the model for every instance")
        return value


class TrackSpec(BaseModel):
    """How many instances run on one track, and which version they run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    version: str = Field(min_length=1)


class ServiceSpec(BaseModel):
    """How many copies of one service run on its primary track (`track`), which release
    they are (`version`), and the other releases it may run (`versions`)."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    version: str = Field(default="0.1.0", pattern=VERSION_NAME)
    track: Track = "stable"
    versions: dict[str, VersionSpec] = Field(default_factory=dict)

    @field_validator("versions")
    @classmethod
    def _version_names(cls, value: dict[str, VersionSpec]) -> dict[str, VersionSpec]:
        for name in value:
            if not re.match(VERSION_NAME, name):
                raise ValueError(
                    f"version name {name!r} must be 1-64 letters, digits or . _ + - "
                    "(0.2.0, 1.4.0-rc.1)"
                )
        return value

    def declared(self) -> list[str]:
        """Every version this service may run: the primary one and those declared."""
        return sorted({self.version, *self.versions})

    def release(self, version: str) -> VersionSpec:
        """What `version` changes (nothing, for an undeclared primary version)."""
        found = self.versions.get(version)
        if found is not None:
            return found
        if version == self.version:
            return VersionSpec()
        raise ValueError(f"unknown version {version!r} (declared: {', '.join(self.declared())})")

    def tracks_of(self) -> dict[str, TrackSpec]:
        """Replicas and version per track, the primary track first."""
        return {self.track: TrackSpec(replicas=self.replicas, version=self.version)}


class RollableSpec(ServiceSpec):
    """A service that can run other tracks beside its primary one (orders, fulfillment):
    `tracks` starts them with the stack, `yardarm scale --track` changes them live."""

    tracks: dict[Track, TrackSpec] = Field(default_factory=dict)

    def tracks_of(self) -> dict[str, TrackSpec]:
        return {**super().tracks_of(), **{str(k): v for k, v in self.tracks.items()}}


def demo_versions() -> dict[str, VersionSpec]:
    """Releases of orders to roll out without writing a file: one healthy, four bad."""
    return {
        "0.2.0": VersionSpec(description="a healthy release"),
        "0.3.0-errors": VersionSpec(
            description="a bad release: half its requests fail",
            flags={"fault.error-rate": "high"},
        ),
        "0.3.0-slow": VersionSpec(
            description="a bad release: every request takes a second longer",
            flags={"fault.latency-ms": "large"},
        ),
        "0.3.0-flaky": VersionSpec(
            description="a subtly bad release: 5% of its requests fail",
            flags={"fault.error-rate": "some"},
        ),
        "0.3.0-laggy": VersionSpec(
            description="a subtly bad release: every request takes 100 ms longer",
            flags={"fault.latency-ms": "small"},
        ),
    }


def demo_consumer_versions() -> dict[str, VersionSpec]:
    """Releases of fulfillment to roll out without writing a file: one healthy, two bad."""
    return {
        "0.2.0": VersionSpec(description="a healthy release"),
        "0.3.0-errors": VersionSpec(
            description="a bad release: half its deliveries fail after their writes "
            "(rolled back and redelivered)",
            flags={"fault.consumer-error-rate": "high"},
        ),
        "0.3.0-slow": VersionSpec(
            description="a bad release: every delivery takes a second longer",
            flags={"fault.latency-ms": "large"},
        ),
    }


class OrdersSpec(RollableSpec):
    """Orders: two replicas, and the demo releases unless `versions` says otherwise."""

    replicas: int = Field(default=2, ge=1, le=MAX_REPLICAS)
    versions: dict[str, VersionSpec] = Field(default_factory=demo_versions)


class FulfillmentSpec(RollableSpec):
    """Fulfillment: one replica, and its demo releases unless `versions` says otherwise."""

    versions: dict[str, VersionSpec] = Field(default_factory=demo_consumer_versions)


class DatastoreSpec(ServiceSpec):
    """The datastore's replicas form one Raft group.

    A group of n survives the loss of (n - 1) // 2 replicas, so an even count buys no
    more tolerance than the odd count below it; it is allowed all the same.
    """

    replicas: int = Field(default=3, ge=1, le=MAX_DATASTORES)


class GatewaySpec(ServiceSpec):
    """Gateway replicas share the base port (SO_REUSEPORT; the kernel spreads connections);
    replica i has its own admin port, base + 1 + i.

    `upstreams` sets the policies of the `orders` and `datastore` upstreams (balancer,
    health checks, outlier detection, breakers, retries, concurrency limit), with the
    gateway's own models, so `yardarm validate` catches a bad value before `up`.
    """

    replicas: int = Field(default=1, ge=1, le=MAX_GATEWAYS)
    upstreams: dict[str, UpstreamPolicy] = Field(default_factory=dict)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    route_timeout_s: float = Field(default=15.0, gt=0, le=300)

    @field_validator("upstreams")
    @classmethod
    def _known_upstreams(cls, value: dict[str, UpstreamPolicy]) -> dict[str, UpstreamPolicy]:
        for name in value:
            if name not in ("orders", "datastore"):
                raise ValueError(f"unknown upstream {name!r} (upstreams: orders, datastore)")
        return value


class ChaosSpec(BaseModel):
    """Which connections the chaos controller stands in, beyond the datastore's Raft links.

    `dependency_links` routes every service's connections to its dependencies (orders to
    the datastore, Postgres and NATS; fulfillment to Postgres and NATS; the gateway to
    orders and the datastore) through link proxies, so `yardarm chaos partition orders-0`
    cuts a service off. Off by default: each relayed hop costs latency and the
    controller's CPU. Instances on tracks other than their service's primary one connect
    directly.
    """

    model_config = ConfigDict(extra="forbid")

    dependency_links: bool = False


class TlsSpec(BaseModel):
    """TLS on every HTTP link and on the datastore's Raft links (mutual there), with
    certificates the control plane issues from a private CA of the stack
    (`<home>/tls/`). Off by default: the local stack's links are all loopback.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"


class PrometheusSpec(BaseModel):
    """The stack's own Prometheus, where a target runs one (locally: when a `prometheus`
    binary is on PATH). It scrapes every instance every `scrape_interval_s` and loads the
    project's recording and alert rules (observability/prometheus)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    scrape_interval_s: float = Field(default=1.0, ge=0.5, le=60)
    retention: str = Field(default="2d", pattern=r"^[0-9]+[smhdwy]$")


class Services(BaseModel):
    """The four services of the stack."""

    model_config = ConfigDict(extra="forbid")

    datastore: DatastoreSpec = Field(default_factory=DatastoreSpec)
    orders: OrdersSpec = Field(default_factory=OrdersSpec)
    fulfillment: FulfillmentSpec = Field(default_factory=FulfillmentSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)

    def spec(self, service: str) -> ServiceSpec:
        """The spec of one service by name; ValueError names the services there are."""
        if service not in SERVICE_NAMES:
            raise ValueError(f"unknown service {service!r} (services: {', '.join(SERVICE_NAMES)})")
        spec: ServiceSpec = getattr(self, service)
        return spec


SERVICE_NAMES = ("datastore", "orders", "fulfillment", "gateway")
ROLLABLE = ("orders", "fulfillment")


class Topology(BaseModel):
    """The whole stack: everything a target needs to run it.

    Flags come inline (`flags`, flagd's "flags" object) or from a flagd JSON file
    (`flags_file`, relative to the yardarm.yaml naming it; loading reads it into
    `flags`), beside the generic fault flags; either way a target renders them for the
    services.
    """

    model_config = ConfigDict(extra="forbid")

    base_port: int = Field(default=8080, ge=1024, le=MAX_BASE_PORT)
    environment: str = Field(default="local", min_length=1)
    services: Services = Field(default_factory=Services)
    chaos: ChaosSpec = Field(default_factory=ChaosSpec)
    tls: TlsSpec = Field(default_factory=TlsSpec)
    prometheus: PrometheusSpec = Field(default_factory=PrometheusSpec)
    flags: dict[str, Any] = Field(default_factory=default_flags)
    flags_file: Path | None = None

    @field_validator("flags")
    @classmethod
    def _flagd_shape(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The generic fault flags are always defined (every service's middleware reads
        them, and releases pin them); the stack's own flags add to or redefine them."""
        for key, flag in value.items():
            check_flag(key, flag)
        return {**default_flags(), **value}

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        """Checks across fields; a loader that places each problem itself defers them."""
        if not (info.context or {}).get("defer_cross_checks"):
            problems = cross_checks(self)
            if problems:
                raise ValueError("; ".join(f"{'.'.join(p)}: {why}" for p, why in problems))
        return self

    # Port plan (docs/architecture.md, "Ports").
    @property
    def gateway_port(self) -> int:
        return self.base_port

    @property
    def admin_port(self) -> int:
        """The first gateway replica's admin port."""
        return self.base_port + 1

    def gateway_admin_port(self, index: int) -> int:
        return self.base_port + 1 + index

    def datastore_port(self, index: int) -> int:
        return self.base_port + 10 + index

    def orders_port(self, index: int) -> int:
        return self.base_port + 20 + index

    def fulfillment_port(self, index: int) -> int:
        return self.base_port + 30 + index

    def service_port(self, service: str, index: int) -> int:
        """Where replica `index` of a service's primary track listens (the gateway's is
        its shared public port)."""
        if service == "gateway":
            return self.gateway_port
        offsets = {"datastore": 10, "orders": 20, "fulfillment": 30}
        return self.base_port + offsets[service] + index

    @property
    def nats_port(self) -> int:
        return self.base_port + 40

    @property
    def nats_monitor_port(self) -> int:
        return self.base_port + 41

    @property
    def postgres_port(self) -> int:
        return self.base_port + 42

    @property
    def prometheus_port(self) -> int:
        """The stack's own Prometheus (its web UI and query API)."""
        return self.base_port + 45

    @property
    def rollouts_port(self) -> int:
        """The rollout controller's API."""
        return self.base_port + 46

    @property
    def chaos_port(self) -> int:
        """The chaos controller's API."""
        return self.base_port + 49

    def raft_port(self, index: int) -> int:
        """Where datastore replica `index` listens for its peers' Raft traffic."""
        return self.base_port + 60 + index

    def link_port(self, src: int, dst: int) -> int:
        """The chaos proxy through which datastore `src` reaches `dst`'s Raft port."""
        return self.base_port + 100 + 10 * src + dst

    @property
    def track_ports(self) -> range:
        """The ports instances on a service's other tracks take, in order."""
        first = self.base_port + TRACK_PORT_OFFSET
        return range(first, first + TRACK_PORT_COUNT)


Problem = tuple[tuple[str, ...], str]


def cross_checks(topology: Topology) -> list[Problem]:
    """What no single field can check: each track runs a declared version, the primary
    track is not listed again under `tracks`, and every flag a version pins exists with
    that variant. Each problem with the key path it belongs to."""
    problems: list[Problem] = []
    for name in SERVICE_NAMES:
        spec = topology.services.spec(name)
        where = ("services", name)
        if isinstance(spec, RollableSpec):
            if spec.track in spec.tracks:
                problems.append(
                    (
                        (*where, "tracks", spec.track),
                        "the primary track is set by replicas and version; remove it here",
                    )
                )
            for track, placed in spec.tracks.items():
                if placed.version not in spec.declared():
                    problems.append(
                        (
                            (*where, "tracks", track, "version"),
                            f"unknown version {placed.version!r} "
                            f"(declared: {', '.join(spec.declared())})",
                        )
                    )
        for version, release in spec.versions.items():
            for key, variant in release.flags.items():
                problem = pin_problem(topology.flags, key, variant)
                if problem is not None:
                    problems.append(((*where, "versions", version, "flags", key), problem))
    return problems
