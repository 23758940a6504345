"""What the stack is made of: services, replicas, ports, flags, rendered into instances.

Defaults live in code; an optional `yardarm.yaml` overrides them. Every port derives from
one base port (see docs/architecture.md, "Ports") so stacks can run side by side.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from yardarm_gateway.admission import RateLimitConfig
from yardarm_gateway.settings import UpstreamPolicy

from yardarm.certificates import StackCertificates, ensure_certificates
from yardarm.chaos.config import ChaosConfig, LinkConfig, config_path
from yardarm.credentials import StackCredentials, ensure_credentials
from yardarm.local import infra

Track = Literal["stable", "canary", "baseline", "blue", "green"]
ReadinessKind = Literal["http", "tcp", "postgres"]

CONFIG_FILE = "yardarm.yaml"
MAX_GATEWAYS = 9  # admin ports base+1 .. base+9 sit below the datastore's base+10
MAX_DATASTORES = 9  # link ports base+100+10*i+j need one decimal digit per replica
# Dependency links take base+200 upward: at most 9 x 11 (orders) + 9 x 2 (fulfillment)
# + 9 x 18 (gateway) = 279 of them, so the max base port (65000) still ends below 65535.
DEPENDENCY_LINK_OFFSET = 200
CHAOS_INSTANCE = "chaos"
SERVICE_DATABASES = ["orders", "fulfillment"]
TLS_SERVICES = ("datastore", "orders", "fulfillment", "gateway")

GATEWAY_ROUTES = [
    {"prefix": "/api/orders", "upstream": "orders"},
    {"prefix": "/api/stock", "upstream": "orders"},
    # The datastore authorizes every request itself (a bearer credential whose roles
    # allow it), so the gateway passes `Authorization` on and guards nothing here.
    {"prefix": "/api/kv", "upstream": "datastore"},
]


class TopologyError(ValueError):
    """The topology file cannot be used; the message says where and why."""


class ServiceSpec(BaseModel):
    """How many copies of one service to run, and which release they are."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(default=1, ge=1, le=9)
    version: str = Field(default="0.1.0", min_length=1)
    track: Track = "stable"


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
    upstreams: dict[Literal["orders", "datastore"], UpstreamPolicy] = Field(default_factory=dict)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    route_timeout_s: float = Field(default=15.0, gt=0, le=300)


class ChaosSpec(BaseModel):
    """Which connections the chaos controller stands in, beyond the datastore's Raft links.

    `dependency_links` routes every service's connections to its dependencies (orders to
    the datastore, Postgres and NATS; fulfillment to Postgres and NATS; the gateway to
    orders and the datastore) through link proxies, so `yardarm chaos partition orders-0`
    cuts a service off. Off by default: each relayed hop costs latency and the
    controller's CPU.
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


class Services(BaseModel):
    """The four services of the stack."""

    model_config = ConfigDict(extra="forbid")

    datastore: DatastoreSpec = Field(default_factory=DatastoreSpec)
    orders: ServiceSpec = Field(default_factory=lambda: ServiceSpec(replicas=2))
    fulfillment: ServiceSpec = Field(default_factory=ServiceSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)


def default_flags() -> dict[str, Any]:
    """The generic fault flags, defined and off (flagd format)."""
    return {
        "fault.error-rate": {
            "state": "ENABLED",
            "variants": {"off": 0.0, "low": 0.1, "high": 0.5, "all": 1.0},
            "defaultVariant": "off",
        },
        "fault.latency-ms": {
            "state": "ENABLED",
            "variants": {"off": 0, "small": 100, "large": 1000},
            "defaultVariant": "off",
        },
    }


def _check_flag(key: str, flag: Any) -> None:
    """The parts of a flagd flag definition the services rely on."""
    if not isinstance(flag, dict):
        raise ValueError(f"flag {key!r} must be a mapping (got {type(flag).__name__})")
    if flag.get("state") not in ("ENABLED", "DISABLED"):
        raise ValueError(f"flag {key!r}: state must be ENABLED or DISABLED")
    variants = flag.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"flag {key!r}: variants must be a non-empty mapping")
    default = flag.get("defaultVariant")
    if default not in variants:
        raise ValueError(
            f"flag {key!r}: defaultVariant must name one of {sorted(variants)} (got {default!r})"
        )


class Topology(BaseModel):
    """The whole stack: everything the runtime needs to start it.

    Flags come inline (`flags`, flagd's "flags" object) or from a flagd JSON file
    (`flags_file`, relative to the yardarm.yaml naming it; `load_topology` reads it into
    `flags`); either way the runtime renders them into `<home>/flags.json`.
    """

    model_config = ConfigDict(extra="forbid")

    base_port: int = Field(default=8080, ge=1024, le=65000)
    environment: str = Field(default="local", min_length=1)
    services: Services = Field(default_factory=Services)
    chaos: ChaosSpec = Field(default_factory=ChaosSpec)
    tls: TlsSpec = Field(default_factory=TlsSpec)
    flags: dict[str, Any] = Field(default_factory=default_flags)
    flags_file: Path | None = None

    @field_validator("flags")
    @classmethod
    def _flagd_shape(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, flag in value.items():
            _check_flag(key, flag)
        return value

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
    def chaos_port(self) -> int:
        """The chaos controller's API."""
        return self.base_port + 49

    def raft_port(self, index: int) -> int:
        """Where datastore replica `index` listens for its peers' Raft traffic."""
        return self.base_port + 60 + index

    def link_port(self, src: int, dst: int) -> int:
        """The chaos proxy through which datastore `src` reaches `dst`'s Raft port."""
        return self.base_port + 100 + 10 * src + dst


def _dependencies(topology: Topology) -> list[tuple[str, list[tuple[str, int]]]]:
    """Each client instance with the instances it connects to and their real ports, in the
    order dependency link ports are handed out."""
    svc = topology.services
    datastores = [
        (f"datastore-{j}", topology.datastore_port(j)) for j in range(svc.datastore.replicas)
    ]
    orders = [(f"orders-{j}", topology.orders_port(j)) for j in range(svc.orders.replicas)]
    infra_deps = [("postgres", topology.postgres_port), ("nats", topology.nats_port)]
    return (
        [(f"orders-{i}", datastores + infra_deps) for i in range(svc.orders.replicas)]
        + [(f"fulfillment-{i}", infra_deps) for i in range(svc.fulfillment.replicas)]
        + [(f"gateway-{i}", orders + datastores) for i in range(svc.gateway.replicas)]
    )


def dependency_links(topology: Topology) -> list[LinkConfig]:
    """One proxied link per (client instance, dependency instance) pair when the topology
    opts in (`chaos.dependency_links`), else none. Ports from base+200 upward. Each gateway
    replica gets its own links (`gateway-1->orders-0`), so one replica can be cut off."""
    if not topology.chaos.dependency_links:
        return []
    links: list[LinkConfig] = []
    first = topology.base_port + DEPENDENCY_LINK_OFFSET
    for src, targets in _dependencies(topology):
        for dst, port in targets:
            listen = first + len(links)
            links.append(
                LinkConfig(
                    name=f"{src}->{dst}", src=src, dst=dst, listen_port=listen, target_port=port
                )
            )
    return links


def chaos_links(topology: Topology) -> list[LinkConfig]:
    """One proxied link per ordered pair of datastore replicas, then the dependency links."""
    count = topology.services.datastore.replicas
    raft = [
        LinkConfig(
            name=f"datastore-{i}->datastore-{j}",
            src=f"datastore-{i}",
            dst=f"datastore-{j}",
            listen_port=topology.link_port(i, j),
            target_port=topology.raft_port(j),
        )
        for i in range(count)
        for j in range(count)
        if i != j
    ]
    return raft + dependency_links(topology)


def port_plan(topology: Topology) -> dict[str, int]:
    """Every port the stack listens on, by what listens there."""
    svc = topology.services
    plan = {"gateway-0": topology.gateway_port, "gateway-admin": topology.admin_port}
    plan |= {
        f"gateway-admin-{i}": topology.gateway_admin_port(i) for i in range(1, svc.gateway.replicas)
    }
    plan |= {f"datastore-{i}": topology.datastore_port(i) for i in range(svc.datastore.replicas)}
    plan |= {f"orders-{i}": topology.orders_port(i) for i in range(svc.orders.replicas)}
    plan |= {
        f"fulfillment-{i}": topology.fulfillment_port(i) for i in range(svc.fulfillment.replicas)
    }
    plan |= {
        "nats": topology.nats_port,
        "nats-monitor": topology.nats_monitor_port,
        "postgres": topology.postgres_port,
        CHAOS_INSTANCE: topology.chaos_port,
    }
    plan |= {f"datastore-{i}-raft": topology.raft_port(i) for i in range(svc.datastore.replicas)}
    plan |= {f"chaos link {link.name}": link.listen_port for link in chaos_links(topology)}
    return plan


class InstanceSpec(BaseModel):
    """One process the supervisor runs: how to start it and how to tell it is ready."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    service: str
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    port: int
    readiness: ReadinessKind
    readiness_url: str | None = None
    readiness_ca_file: str | None = None  # the stack's CA, for an https readiness URL
    depends_on: list[str] = Field(default_factory=list)
    version: str = "0.1.0"
    track: str = "stable"
    run_as_uid: int | None = None
    run_as_gid: int | None = None
    cwd: str | None = None
    stop_signal: int = 15
    databases: list[str] = Field(default_factory=list)


# --- loading -------------------------------------------------------------------------


def project_dir(start: Path | None = None) -> Path:
    """Nearest parent holding yardarm.yaml or yardarm's own pyproject.toml, else cwd."""
    here = (start or Path.cwd()).resolve()
    for candidate in [here, *here.parents]:
        if (candidate / CONFIG_FILE).is_file():
            return candidate
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and _is_yardarm_pyproject(pyproject):
            return candidate
    return here


def _is_yardarm_pyproject(path: Path) -> bool:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return bool(data.get("project", {}).get("name") == "yardarm")


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in the document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    child = (*path, str(key.value))
                    lines[child] = key.start_mark.line + 1
                    walk(value, child)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _describe(error: Any) -> str:
    """One pydantic error as 'must be >= 1 (got 0)' style text."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']} (got {got!r})"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']} (got {got!r})"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {got!r})"
    return f"{error['msg'][0].lower()}{error['msg'][1:]} (got {got!r})"


def _read_flags_file(path: Path) -> dict[str, Any]:
    """The "flags" object of a flagd JSON file; ValueError says what is wrong with it."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    flags = document.get("flags") if isinstance(document, dict) else None
    if not isinstance(flags, dict):
        raise ValueError(f'{path} is not a flagd file: it needs a top-level "flags" object')
    for key, flag in flags.items():
        _check_flag(key, flag)
    return flags


def _with_flags_file(
    topology: Topology, data: dict[str, Any], base_dir: Path
) -> tuple[Topology | None, str | None]:
    """Resolve `flags_file` against the yaml's directory and load it into `flags`."""
    if topology.flags_file is None:
        return topology, None
    if "flags" in data:
        return None, "set flags or flags_file, not both"
    path = (base_dir / topology.flags_file).resolve()
    try:
        flags = _read_flags_file(path)
    except ValueError as exc:
        return None, str(exc)
    return topology.model_copy(update={"flags": flags, "flags_file": path}), None


def _parse(text: str, base_dir: Path) -> tuple[Topology | None, list[str]]:
    """Parse and validate a document; returns the topology or every error found."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [f"YAML syntax error at {where}{problem}"]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [f"the document must be a mapping of keys (got {type(data).__name__})"]
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        lines = _yaml_lines(text)
        messages = []
        for error in exc.errors():
            path = tuple(str(part) for part in error["loc"])
            text_path = ".".join(path) or "(document)"
            line = lines.get(path)
            suffix = f" (line {line})" if line else ""
            messages.append(f"{text_path}: {_describe(error)}{suffix}")
        return None, messages
    resolved, problem = _with_flags_file(topology, data, base_dir)
    if problem is not None:
        line = _yaml_lines(text).get(("flags_file",))
        return None, [f"flags_file: {problem}" + (f" (line {line})" if line else "")]
    return resolved, []


def validate_file(path: Path) -> list[str]:
    """Every problem in a topology file, each with its key path (empty: the file is valid)."""
    try:
        text = path.read_text()
    except OSError as exc:
        return [f"cannot read {path}: {exc.strerror}"]
    return _parse(text, path.resolve().parent)[1]


def load_topology(path: Path | None = None, base_port_override: int | None = None) -> Topology:
    """Defaults, then the file (./yardarm.yaml when path is None and it exists), then flags."""
    if path is None:
        found = project_dir() / CONFIG_FILE
        path = found if found.is_file() else None
    topology = Topology()
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise TopologyError(f"cannot read {path}: {exc.strerror}") from exc
        parsed, errors = _parse(text, path.resolve().parent)
        if parsed is None:
            raise TopologyError(f"{path}: " + "; ".join(errors))
        topology = parsed
    if base_port_override is not None:
        try:
            topology = Topology.model_validate(
                {**topology.model_dump(), "base_port": base_port_override}
            )
        except ValidationError as exc:
            got = base_port_override
            raise TopologyError(f"--base-port: must be between 1024 and 65000 (got {got})") from exc
    return topology


# --- rendering -----------------------------------------------------------------------


def urls(topology: Topology) -> dict[str, str]:
    """Where each part of the stack answers (first replica for replicated services)."""
    host = f"{topology.tls.scheme}://127.0.0.1"
    return {
        "gateway": f"{host}:{topology.gateway_port}",
        "admin": f"{host}:{topology.admin_port}",
        "datastore": f"{host}:{topology.datastore_port(0)}",
        "orders": f"{host}:{topology.orders_port(0)}",
        "fulfillment": f"{host}:{topology.fulfillment_port(0)}",
        "nats": f"nats://127.0.0.1:{topology.nats_port}",
        "postgres": infra.postgres_dsn(topology.postgres_port),
        "chaos": f"{host}:{topology.chaos_port}",
    }


def flags_file(home: Path) -> Path:
    """Where the runtime renders the topology's flags."""
    return home / "flags.json"


def write_flags(topology: Topology, home: Path) -> Path:
    """Render the flags in flagd's file format (atomically, services watch the file)."""
    path = flags_file(home)
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"flags": topology.flags}, indent=2))
    os.replace(tmp, path)
    return path


def write_chaos_config(topology: Topology, home: Path) -> Path:
    """Render the chaos controller's config (atomically: a restart may be reading it)."""
    config = ChaosConfig(
        instance=CHAOS_INSTANCE,
        control_port=topology.chaos_port,
        home=home,
        links=chaos_links(topology),
        environment=topology.environment,
        admin_token_file=StackCredentials(home).token_file("admin"),
    )
    if topology.tls.enabled:
        own = StackCertificates(home).service(CHAOS_INSTANCE)
        config = config.model_copy(
            update={"tls_cert_file": own.cert_file, "tls_key_file": own.key_file}
        )
    path = config_path(home)

    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path


def datastore_peers(topology: Topology, index: int) -> dict[str, dict[str, str]]:
    """The other replicas as replica `index` reaches them: Raft through its chaos links,
    HTTP directly. Keyed by replica id (index + 1)."""
    return {
        str(j + 1): {
            "raft": f"127.0.0.1:{topology.link_port(index, j)}",
            "http": f"{topology.tls.scheme}://127.0.0.1:{topology.datastore_port(j)}",
        }
        for j in range(topology.services.datastore.replicas)
        if j != index
    }


def _gateway_upstreams(
    svc: Services, orders_urls: list[str], datastore_urls: list[str]
) -> dict[str, Any]:
    """The gateway's UPSTREAMS: its endpoints, with the topology's policy overrides."""
    endpoints = {
        "orders": [{"url": url, "track": svc.orders.track} for url in orders_urls],
        "datastore": [{"url": url, "track": svc.datastore.track} for url in datastore_urls],
    }
    policies: dict[str, UpstreamPolicy] = {str(k): v for k, v in svc.gateway.upstreams.items()}
    upstreams: dict[str, Any] = {}
    for name, listed in endpoints.items():
        policy = policies.get(name)
        overrides = {} if policy is None else policy.model_dump(mode="json", exclude_unset=True)
        upstreams[name] = {"endpoints": listed, **overrides} if overrides else listed
    return upstreams


def instances(topology: Topology, home: Path) -> list[InstanceSpec]:
    """Every process of the stack, in dependency order (a dependency comes first).

    With `chaos.dependency_links` on, each client's URLs and DSNs name its own link
    proxies; readiness URLs always name the instance itself, so a cut link never looks
    like a dead process to the supervisor.
    """
    home = home.resolve()
    data = home / "data"
    pg_data = data / "postgres"
    svc = topology.services
    via = {(link.src, link.dst): link.listen_port for link in dependency_links(topology)}

    def dial(src: str, dst: str, port: int) -> int:
        """The port `src` connects to for `dst`: its link proxy's, or `dst`'s own."""
        return via.get((src, dst), port)

    def datastore_urls(src: str) -> list[str]:
        return [
            f"{scheme}://127.0.0.1:{dial(src, f'datastore-{j}', topology.datastore_port(j))}"
            for j in range(svc.datastore.replicas)
        ]

    def infra_env(src: str, database: str) -> dict[str, str]:
        pg = dial(src, "postgres", topology.postgres_port)
        nats = dial(src, "nats", topology.nats_port)
        return {
            "DATABASE_URL": infra.postgres_dsn(pg, database),
            "NATS_URL": f"nats://127.0.0.1:{nats}",
        }

    creds = ensure_credentials(home)
    scheme = topology.tls.scheme
    certs = (
        ensure_certificates(home, [*TLS_SERVICES, CHAOS_INSTANCE]) if topology.tls.enabled else None
    )
    ca_file = None if certs is None else str(certs.ca_file)

    def tls_env(name: str) -> dict[str, str]:
        if certs is None:
            return {}
        own = certs.service(name)
        return {
            "TLS_CERT_FILE": str(own.cert_file),
            "TLS_KEY_FILE": str(own.key_file),
            "TLS_CA_FILE": str(certs.ca_file),
        }

    run_as = infra.postgres_run_as()
    specs = [
        InstanceSpec(
            name="nats",
            service="nats",
            command=infra.nats_command(
                port=topology.nats_port,
                monitor_port=topology.nats_monitor_port,
                store_dir=data / "nats",
            ),
            port=topology.nats_port,
            readiness="tcp",
        ),
        InstanceSpec(
            name="postgres",
            service="postgres",
            command=infra.postgres_command(data_dir=pg_data, port=topology.postgres_port),
            port=topology.postgres_port,
            readiness="postgres",
            run_as_uid=run_as.uid,
            run_as_gid=run_as.gid,
            cwd=str(pg_data),
            stop_signal=2,  # SIGINT: Postgres "fast" shutdown, no waiting for clients
            databases=SERVICE_DATABASES,
        ),
        # Before the datastores: their Raft traffic runs through its link proxies.
        InstanceSpec(
            name=CHAOS_INSTANCE,
            service=CHAOS_INSTANCE,
            command=[
                sys.executable,
                "-m",
                "yardarm.chaos",
                "--config",
                str(write_chaos_config(topology, home)),
            ],
            port=topology.chaos_port,
            readiness="http",
            readiness_url=f"{scheme}://127.0.0.1:{topology.chaos_port}/readyz",
            readiness_ca_file=ca_file,
        ),
    ]

    def service(name: str, spec: ServiceSpec, index: int, port: int, **extra: str) -> InstanceSpec:
        prefix = f"YARDARM_{name.upper()}_"
        env = {
            "INSTANCE": f"{name}-{index}",
            "VERSION": spec.version,
            "TRACK": spec.track,
            "ENVIRONMENT": topology.environment,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "STATE_DIR": str(home),
            "FLAGS_FILE": str(flags_file(home)),
            "LOG_LEVEL": "INFO",
            **tls_env(name),
            **extra,
        }
        depends = {
            "datastore": [CHAOS_INSTANCE],
            "orders": ["nats", "postgres", "datastore-0"],
            "fulfillment": ["nats", "postgres"],
            "gateway": [f"orders-{i}" for i in range(svc.orders.replicas)] + ["datastore-0"],
        }[name]
        if via and name != "datastore":  # its connections run through the controller
            depends = [CHAOS_INSTANCE, *depends]
        return InstanceSpec(
            name=f"{name}-{index}",
            service=name,
            command=[sys.executable, "-m", f"yardarm_{name}"],
            env={prefix + key: value for key, value in env.items()},
            port=port,
            readiness="http",
            readiness_url=f"{scheme}://127.0.0.1:{port}/readyz",
            readiness_ca_file=ca_file,
            depends_on=depends,
            version=spec.version,
            track=spec.track,
        )

    for i in range(svc.datastore.replicas):
        specs.append(
            service(
                "datastore",
                svc.datastore,
                i,
                topology.datastore_port(i),
                DATA_DIR=str(data / f"datastore-{i}"),
                REPLICA_ID=str(i + 1),
                RAFT_PORT=str(topology.raft_port(i)),
                PEERS=json.dumps(datastore_peers(topology, i)),
                ACCESS_FILE=str(creds.access_file),
                PEER_TOKEN_FILE=str(creds.peer_secret_file),
            )
        )
    for i in range(svc.orders.replicas):
        specs.append(
            service(
                "orders",
                svc.orders,
                i,
                topology.orders_port(i),
                **infra_env(f"orders-{i}", "orders"),
                DATASTORE_URLS=json.dumps(datastore_urls(f"orders-{i}")),
                DATASTORE_TOKEN_FILE=str(creds.token_file("orders")),
            )
        )
    for i in range(svc.fulfillment.replicas):
        specs.append(
            service(
                "fulfillment",
                svc.fulfillment,
                i,
                topology.fulfillment_port(i),
                **infra_env(f"fulfillment-{i}", "fulfillment"),
            )
        )
    for i in range(svc.gateway.replicas):
        admin = topology.gateway_admin_port(i)
        src = f"gateway-{i}"
        orders_urls = [
            f"{scheme}://127.0.0.1:{dial(src, f'orders-{j}', topology.orders_port(j))}"
            for j in range(svc.orders.replicas)
        ]
        upstreams = _gateway_upstreams(svc, orders_urls, datastore_urls(src))
        spec = service(
            "gateway",
            svc.gateway,
            i,
            topology.gateway_port,
            ROUTES=json.dumps(GATEWAY_ROUTES),
            UPSTREAMS=json.dumps(upstreams),
            DATASTORE_URLS=json.dumps(datastore_urls(src)),
            ADMIN_PORT=str(admin),
            ADMIN_TOKEN=creds.token("admin"),
            DATASTORE_TOKEN_FILE=str(creds.token_file("gateway")),
            REUSE_PORT="true" if svc.gateway.replicas > 1 else "false",
            RATE_LIMIT=svc.gateway.rate_limit.model_dump_json(),
            ROUTE_TIMEOUT_S=str(svc.gateway.route_timeout_s),
        )
        # Replicas share the public port, so each is probed on its own admin port.
        readiness = f"{scheme}://127.0.0.1:{admin}/readyz"
        specs.append(spec.model_copy(update={"readiness_url": readiness}))
    return specs
