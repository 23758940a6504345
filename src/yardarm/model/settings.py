"""Each instance's settings (`YARDARM_<SERVICE>_*`) from the deployment, for any target.

What differs between targets is only where things are: the address an instance binds
and the one a client dials, and where files (credentials, certificates, flags, data) are
mounted. A `Target` answers those questions; `instance_settings` decides everything else,
so the local processes, the container images, the Helm chart and the Ansible roles run
the services with the same settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from yardarm.model.deployment import Deployment, Instance

LOG_LEVEL = "INFO"
# Named, so the control plane (rollouts moving a service's routes together) finds them
# by the names the gateway reports.
GATEWAY_ROUTES = [
    {"name": "api-orders", "prefix": "/api/orders", "upstream": "orders"},
    {"name": "api-stock", "prefix": "/api/stock", "upstream": "orders"},
    # The datastore authorizes every request itself (a bearer credential whose roles
    # allow it), so the gateway passes `Authorization` on and guards nothing here.
    {"name": "api-kv", "prefix": "/api/kv", "upstream": "datastore"},
]


@dataclass(frozen=True)
class TlsFiles:
    """An instance's certificate and key, and the CA that signs every peer's."""

    cert_file: str
    key_file: str
    ca_file: str


class Target(Protocol):
    """Where things are on one target (addresses are `host:port`, URLs full)."""

    def bind(self, instance: Instance) -> tuple[str, int]:
        """The host and port an instance's HTTP listener binds."""

    def url(self, client: Instance, server: Instance) -> str:
        """The base URL `client` dials to reach `server`'s HTTP API."""

    def raft_bind(self, instance: Instance) -> tuple[str, int]:
        """The host and port a datastore replica's Raft listener binds."""

    def raft_address(self, client: Instance, peer: Instance) -> str:
        """The `host:port` a datastore replica dials for a peer's Raft traffic."""

    def postgres_dsn(self, client: Instance, database: str) -> str: ...

    def nats_url(self, client: Instance) -> str: ...

    def gateway_admin_port(self, instance: Instance) -> int: ...

    def shares_gateway_port(self) -> bool:
        """Whether gateway replicas share one listening port (SO_REUSEPORT)."""

    def state_dir(self, instance: Instance) -> str: ...

    def data_dir(self, instance: Instance) -> str: ...

    def flags_file(self, instance: Instance) -> str:
        """The flagd file with the stack's flags and the instance's version's pins."""

    def credential_file(self, principal: str) -> str: ...

    def access_file(self) -> str: ...

    def peer_secret_file(self) -> str: ...

    def tls(self, instance: Instance) -> TlsFiles | None: ...


def release_pins(deployment: Deployment, instance: Instance) -> dict[str, str]:
    """The flags an instance's version pins (flag key -> variant); a target gives such an
    instance a flag file of its own."""
    return deployment.topology.services.spec(instance.service).release(instance.version).flags


def replica_id(instance: Instance) -> int:
    """A datastore replica's Raft id: its ordinal + 1 (0 is Raft's "none")."""
    return instance.ordinal + 1


def gateway_upstreams(deployment: Deployment, client: Instance, target: Target) -> dict[str, Any]:
    """The gateway's UPSTREAMS: every instance of orders and of the datastore as this
    gateway dials it, with its track, and the topology's policy overrides."""
    policies = deployment.topology.services.gateway.upstreams
    upstreams: dict[str, Any] = {}
    for name in ("orders", "datastore"):
        listed = [
            {"url": target.url(client, inst), "track": inst.track} for inst in deployment.of(name)
        ]
        policy = policies.get(name)
        overrides = {} if policy is None else policy.model_dump(mode="json", exclude_unset=True)
        upstreams[name] = {"endpoints": listed, **overrides} if overrides else listed
    return upstreams


def _own(deployment: Deployment, instance: Instance, target: Target) -> dict[str, str]:
    """The settings only this service takes."""
    topology = deployment.topology
    datastores = deployment.of("datastore")
    datastore_urls = json.dumps([target.url(instance, inst) for inst in datastores])
    if instance.service == "datastore":
        raft_host, raft_port = target.raft_bind(instance)
        peers = {
            str(replica_id(peer)): {
                "raft": target.raft_address(instance, peer),
                "http": target.url(instance, peer),
            }
            for peer in datastores
            if peer != instance
        }
        return {
            "DATA_DIR": target.data_dir(instance),
            "REPLICA_ID": str(replica_id(instance)),
            "RAFT_HOST": raft_host,
            "RAFT_PORT": str(raft_port),
            "PEERS": json.dumps(peers),
            "ACCESS_FILE": target.access_file(),
            "PEER_TOKEN_FILE": target.peer_secret_file(),
        }
    if instance.service == "orders":
        return {
            "DATABASE_URL": target.postgres_dsn(instance, "orders"),
            "NATS_URL": target.nats_url(instance),
            "DATASTORE_URLS": datastore_urls,
            "DATASTORE_TOKEN_FILE": target.credential_file("orders"),
        }
    if instance.service == "fulfillment":
        return {
            "DATABASE_URL": target.postgres_dsn(instance, "fulfillment"),
            "NATS_URL": target.nats_url(instance),
        }
    gateway = topology.services.gateway
    return {
        "ROUTES": json.dumps(GATEWAY_ROUTES),
        "UPSTREAMS": json.dumps(gateway_upstreams(deployment, instance, target)),
        "DATASTORE_URLS": datastore_urls,
        "ADMIN_PORT": str(target.gateway_admin_port(instance)),
        "ADMIN_TOKEN_FILE": target.credential_file("admin"),
        "DATASTORE_TOKEN_FILE": target.credential_file("gateway"),
        "REUSE_PORT": "true" if target.shares_gateway_port() else "false",
        "RATE_LIMIT": gateway.rate_limit.model_dump_json(),
        "ROUTE_TIMEOUT_S": str(gateway.route_timeout_s),
    }


def instance_settings(deployment: Deployment, instance: Instance, target: Target) -> dict[str, str]:
    """Every `YARDARM_<SERVICE>_*` setting of one instance, prefixed.

    The instance's version's own settings (`versions.<v>.env`) come last: a release may
    change any setting but the instance's identity (the model refuses those keys).
    """
    topology = deployment.topology
    host, port = target.bind(instance)
    settings = {
        "INSTANCE": instance.name,
        "VERSION": instance.version,
        "TRACK": instance.track,
        "ENVIRONMENT": topology.environment,
        "HOST": host,
        "PORT": str(port),
        "STATE_DIR": target.state_dir(instance),
        "FLAGS_FILE": target.flags_file(instance),
        "LOG_LEVEL": LOG_LEVEL,
    }
    tls = target.tls(instance)
    if tls is not None:
        settings |= {
            "TLS_CERT_FILE": tls.cert_file,
            "TLS_KEY_FILE": tls.key_file,
            "TLS_CA_FILE": tls.ca_file,
        }
    settings |= _own(deployment, instance, target)
    settings |= topology.services.spec(instance.service).release(instance.version).env
    prefix = f"YARDARM_{instance.service.upper()}_"
    return {prefix + key: value for key, value in settings.items()}
