"""The Ansible inventory of a bare-metal stack, rendered from the deployment model and a
host list.

`inventory.yml` says how Ansible reaches each host and which groups it is in (one per
service it runs an instance of, and one per shared part: `nats`, `postgres`, `haproxy`,
`prometheus`); `group_vars/all/main.yml` holds what the whole stack shares
(flag files, databases, where the shared parts listen, where the credentials go: paths
only, never a secret); `host_vars/<host>.yml` lists the instances a host runs, each with
every setting `instance_settings` gives it through `BareMetalTarget`. The roles only
copy these into place, so a bare-metal stack runs with the settings every other target
gives the same model.

The instances are those of the desired state (`desired.json` beside the inventory, which
the rollout controller keeps: a rollout's tracks, a promoted version), else the model's
own; a desired state left from another model is ignored, as `yardarm up` ignores one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from yardarm.baremetal.hosts import Host, HostList
from yardarm.baremetal.target import (
    CONFIG_DIR,
    FLAGS_DIR,
    FLAGS_FILE,
    POSTGRES_USER,
    SHARED_PARTS,
    STATE_ROOT,
    BareMetalTarget,
    Placement,
    place,
    version_flags_file,
)
from yardarm.databases import SERVICE_DATABASES
from yardarm.model import (
    SERVICE_NAMES,
    Deployment,
    DesiredState,
    Instance,
    Topology,
    current_for,
    deployment_of,
    pinned,
)
from yardarm.observability.scrape import (
    duration,
    prometheus_config,
    scrape_job,
    scrape_targets,
    target_groups,
)

COMMAND: Final = "yardarm ansible inventory"
SOURCE: Final = "the deployment model (yardarm.yaml) and the host list"
INVENTORY_FILE: Final = "inventory.yml"
DESIRED_FILE: Final = "desired.json"  # the desired state, beside the inventory
# Each instance off its primary track and the port it was given (kept, as the local
# target keeps its own, so a running instance never changes port).
TRACK_PORTS_FILE: Final = "track-ports.json"
GROUP_VARS_FILE: Final = "group_vars/all/main.yml"
HOST_VARS_DIR: Final = "host_vars"
PROMETHEUS_DIR: Final = "/etc/yardarm/prometheus"  # its config and rule files
# HAProxy is the stack's public entry; port 80 sits outside the port plan (base >= 1024),
# so it never collides with an instance on the same host.
HAPROXY_PORT: Final = 80
# HAProxy asks each gateway's /readyz every interval and takes it out after `fall`
# failures; a stopping gateway fails /readyz at once and keeps serving for its drain
# delay, one interval longer than HAProxy needs to notice (a check may be in flight).
HAPROXY_CHECK_INTERVAL_MS: Final = 1000
HAPROXY_CHECK_FALL: Final = 2
HAPROXY_CHECK_RISE: Final = 2
GATEWAY_DRAIN_DELAY_S: Final = (HAPROXY_CHECK_FALL + 1) * HAPROXY_CHECK_INTERVAL_MS / 1000
# HAProxy's statistics (CSV), on the HAProxy host's loopback only: the rolling upgrade
# reads whether a restarted gateway is back in the rotation.
HAPROXY_STATS_PORT: Final = 8404
# Ansible renders a variable's value as a template when it holds one of these.
JINJA_MARKERS: Final = ("{{", "{%", "{#")
COMPACT: Final = (",", ":")


def host_vars_file(host: Host) -> str:
    return f"{HOST_VARS_DIR}/{host.name}.yml"


def _inventory(hosts: HostList, placement: Placement, planned: Deployment) -> dict[str, Any]:
    """Every host with its connection, and a group per service and per shared part
    (hosts in the host list's order)."""

    def members(on: list[Host]) -> dict[str, None]:
        return {host.name: None for host in hosts.hosts if host in on}

    groups = {
        service: {
            "hosts": members([placement.instances[inst.name] for inst in planned.of(service)])
        }
        for service in SERVICE_NAMES
    }
    groups |= {
        part: {"hosts": members([placement.shared[part]])}
        for part in SHARED_PARTS
        if part in placement.shared
    }
    return {
        "all": {
            "hosts": {
                host.name: {
                    "ansible_host": host.ssh_address or host.address,
                    "ansible_port": host.ssh_port,
                    "ansible_user": host.user,
                }
                for host in hosts.hosts
            },
            "children": groups,
        }
    }


def flag_files(topology: Topology) -> dict[str, str]:
    """Every flag file by name: the stack's, and each declared version's that pins flags
    (a rollout or a rolling restart may start any declared version)."""
    files = {FLAGS_FILE: json.dumps({"flags": topology.flags}, separators=COMPACT)}
    for service in SERVICE_NAMES:
        for version, release in topology.services.spec(service).versions.items():
            if release.flags:
                name = version_flags_file(Instance(service, "stable", 0, version))
                files[name] = json.dumps(
                    {"flags": pinned(topology.flags, release.flags)}, separators=COMPACT
                )
    return files


def _credentials(target: BareMetalTarget) -> dict[str, Any]:
    """Where each credential file goes and what the access document grants (the tokens
    themselves are issued on the hosts, never rendered here)."""
    from yardarm.credentials import PRINCIPALS, ROLES

    return {
        "directory": str(target.credentials.directory),
        "tokens": {name: target.credential_file(name) for name in PRINCIPALS},
        "access": target.access_file(),
        "peer_secret": target.peer_secret_file(),
        "pgpass": target.pgpass_file(),
        "roles": {name: role.model_dump(mode="json") for name, role in ROLES.items()},
        "principals": {name: list(roles) for name, roles in PRINCIPALS.items()},
    }


def _group_vars(planned: Deployment, target: BareMetalTarget) -> dict[str, Any]:
    topology = planned.topology
    shared = target.placement.shared
    gateways = planned.of("gateway")
    document: dict[str, Any] = {
        "yardarm_environment": topology.environment,
        "yardarm_paths": {"config": CONFIG_DIR, "flags": FLAGS_DIR, "state": STATE_ROOT},
        "yardarm_credentials": _credentials(target),
        "yardarm_flags": flag_files(topology),
        "yardarm_databases": list(SERVICE_DATABASES),
        "yardarm_nats": {
            "host": shared["nats"].address,
            "port": topology.nats_port,
            "monitor_port": topology.nats_monitor_port,
        },
        "yardarm_postgres": {
            "host": shared["postgres"].address,
            "port": topology.postgres_port,
            "user": POSTGRES_USER,
        },
        "yardarm_haproxy": {
            "host": shared["haproxy"].address,
            "port": HAPROXY_PORT,
            "stats_port": HAPROXY_STATS_PORT,
            "check": {
                "interval_ms": HAPROXY_CHECK_INTERVAL_MS,
                "fall": HAPROXY_CHECK_FALL,
                "rise": HAPROXY_CHECK_RISE,
            },
            # Each gateway replica's public listener, checked on its admin port's /readyz.
            "backends": [
                {
                    "name": inst.name,
                    "host": target.host(inst).name,
                    "address": target.host(inst).netloc(target.port(inst)),
                    "check": target.host(inst).netloc(target.gateway_admin_port(inst)),
                    "check_port": target.gateway_admin_port(inst),
                }
                for inst in gateways
            ],
        },
        # Every datastore replica's URL (the catalog is seeded through them).
        "yardarm_datastore": {
            "urls": [target.url(inst, inst) for inst in planned.of("datastore")],
        },
        "yardarm_rolling": _rolling(planned, target),
    }
    prometheus = topology.prometheus
    document["yardarm_prometheus"] = {"enabled": prometheus.enabled}
    if prometheus.enabled:

        def metrics(inst: Instance) -> str:
            return target.host(inst).netloc(_probe_port(target, inst))

        # The rollout controller runs off the hosts (where Ansible is): not scraped.
        targets = {
            job: target_groups(found, topology.environment)
            for job, found in scrape_targets(planned, metrics).items()
        }
        interval = duration(prometheus.scrape_interval_s)
        document["yardarm_prometheus"] |= {
            "host": shared["prometheus"].address,
            "port": topology.prometheus_port,
            "scrape_interval": interval,
            "retention": prometheus.retention,
            "targets": targets,
            # prometheus.yml itself, as every target renders it (the rules beside it).
            "config": prometheus_config(
                [scrape_job(job, scheme="http", static=groups) for job, groups in targets.items()],
                environment=topology.environment,
                scrape_interval=interval,
                evaluation_interval=interval,
                rule_files=[f"{PROMETHEUS_DIR}/rules/*.yml"],
            ),
        }
    return document


def _rolling(planned: Deployment, target: BareMetalTarget) -> dict[str, Any]:
    """What the rolling upgrade needs to take a host out of service and back
    (`yardarm.baremetal.rolling`): the endpoints the gateways route to, by host, and
    the datastore's replicas with their Raft ids."""
    from yardarm.baremetal.rolling import PlanEndpoint, Replica, RollingPlan
    from yardarm.model.settings import replica_id

    gateways = planned.of("gateway")
    plan = RollingPlan(
        datastore_urls=[target.url(inst, inst) for inst in planned.of("datastore")],
        gateway_admin_urls=[
            f"http://{target.host(inst).netloc(target.gateway_admin_port(inst))}"
            for inst in gateways
        ],
        admin_token_file=target.credential_file("admin"),
        endpoints={
            upstream: [
                PlanEndpoint(
                    url=target.url(gateways[0], inst), track=inst.track, host=target.host(inst).name
                )
                for inst in planned.of(upstream)
            ]
            for upstream in ("orders", "datastore")
        },
        replicas=[
            Replica(id=replica_id(inst), url=target.url(inst, inst), host=target.host(inst).name)
            for inst in planned.of("datastore")
        ],
    )
    return plan.model_dump(mode="json")


def _probe_port(target: BareMetalTarget, inst: Instance) -> int:
    return target.gateway_admin_port(inst) if inst.service == "gateway" else target.port(inst)


def _host_vars(planned: Deployment, target: BareMetalTarget, host: Host) -> dict[str, Any]:
    from yardarm.model import instance_settings

    def env(inst: Instance) -> dict[str, str]:
        settings = instance_settings(planned, inst, target)
        if inst.service == "gateway":  # behind HAProxy (a version's own value wins)
            settings.setdefault("YARDARM_GATEWAY_DRAIN_DELAY_S", str(GATEWAY_DRAIN_DELAY_S))
        return settings

    return {
        "yardarm_instances": [
            {
                "name": inst.name,
                "service": inst.service,
                "track": inst.track,
                "version": inst.version,
                "port": target.port(inst),
                # Where its process manager's health gate asks (gateways: the admin port).
                "ready_url": f"http://{host.netloc(_probe_port(target, inst))}/readyz",
                "env": env(inst),
            }
            for inst in planned.instances
            if target.host(inst) == host
        ]
    }


def _templated(value: Any, path: str) -> str | None:
    """The first place in `value` whose text Ansible would take for a template."""
    if isinstance(value, str):
        return path if any(marker in value for marker in JINJA_MARKERS) else None
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _templated(item, f"{path}.{key}")
        if found is not None:
            return found
    return None


def planned_deployment(topology: Topology, desired: DesiredState | None = None) -> Deployment:
    """What the hosts run: the desired state's instances when it derives from this
    topology, else the topology's own."""
    return deployment_of(topology, current_for(topology, desired))


def render_inventory(
    topology: Topology,
    hosts: HostList,
    shared: Mapping[str, str] | None = None,
    desired: DesiredState | None = None,
    recorded_ports: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """The inventory's files by path relative to the inventory directory, for the
    deployment `desired` gives (see `planned_deployment`) on `hosts` (`shared`: part ->
    host name, see `place`), the track ports `recorded_ports` kept."""
    from yardarm.observability.yamltext import dump

    planned = planned_deployment(topology, desired)
    placement = place(planned, hosts, shared)
    target = BareMetalTarget(planned, placement, recorded_ports)
    documents = {
        INVENTORY_FILE: _inventory(hosts, placement, planned),
        GROUP_VARS_FILE: _group_vars(planned, target),
    }
    documents |= {host_vars_file(host): _host_vars(planned, target, host) for host in hosts.hosts}
    for path, document in documents.items():
        where = _templated(document, path)
        if where is not None:
            raise ValueError(
                f"{where}: Ansible would read this value as a template ({', '.join(JINJA_MARKERS)}"
                "); change it in yardarm.yaml"
            )
    files = {path: dump(document, SOURCE, COMMAND) for path, document in documents.items()}
    files[TRACK_PORTS_FILE] = json.dumps(target.track_ports, indent=2, sort_keys=True) + "\n"
    return files


def read_state(directory: Path) -> tuple[DesiredState | None, dict[str, int]]:
    """The desired state and the track ports kept beside an inventory (None and {} when
    there are none yet); a file that cannot be read is an error, never skipped, since
    rendering without it would move or stop running instances."""
    desired: DesiredState | None = None
    ports: dict[str, int] = {}
    try:
        # lexists: a directory or a dangling link there is an error too, not "none".
        if os.path.lexists(directory / DESIRED_FILE):
            desired = DesiredState.model_validate_json((directory / DESIRED_FILE).read_text())
        if os.path.lexists(directory / TRACK_PORTS_FILE):
            found = json.loads((directory / TRACK_PORTS_FILE).read_text())
            if not isinstance(found, dict) or not all(
                isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535
                for port in found.values()
            ):
                raise ValueError("expected an object of instance names and ports")
            ports = found
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot read the state kept in {directory}: {exc}; fix or remove the file"
        ) from exc
    return desired, ports
