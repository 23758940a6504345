"""The stack: the settings, then what `yardarm:target` deploys and what a user needs to
reach it. On Kubernetes: the namespace, the dependencies, the observability stack and the
yardarm chart. On bare metal: the Ansible inventory of the hosts and the playbook run."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pulumi

from yardarm.containers.compose import project_images
from yardarm.kubernetes.values import CHART_DIR, render_values
from yardarm.model import Topology, TopologyError, load_topology
from yardarm.observability import stack
from yardarm_infra import observability as obs
from yardarm_infra.baremetal import BaremetalStack, BaremetalStackArgs, gather_wheelhouse
from yardarm_infra.baremetal_config import plan_inventory, read_baremetal_config
from yardarm_infra.config import ConfigError, StackConfig, read_config, read_target
from yardarm_infra.dependencies import Dependencies, DependenciesArgs
from yardarm_infra.namespace import Namespace, NamespaceArgs
from yardarm_infra.observability import Observability, ObservabilityArgs
from yardarm_infra.release import YardarmRelease, YardarmReleaseArgs

# The repository: Pulumi.yaml, the chart, the rendered observability files, the playbook.
ROOT: Final = Path(__file__).resolve().parents[2]
ANSIBLE_DIR: Final = "ansible"


def topology_of(settings: StackConfig) -> Topology:
    """The stack's model: `yardarm:config`'s file, else the defaults."""
    if settings.config_path is None:
        return Topology()
    try:
        return load_topology(settings.config_path)
    except TopologyError as exc:
        raise ConfigError(f"yardarm:config: {exc}") from exc


def _port_forward(namespace: str, service: str, local: int, remote: int) -> str:
    return f"kubectl -n {namespace} port-forward svc/{service} {local}:{remote}"


def main(root: Path = ROOT, work_root: Path | None = None) -> None:
    """Declare the stack from its settings (`pulumi config`); a baremetal stack's working
    folder is `work_root/<stack>` (by default under `root/.yardarm/baremetal`)."""
    if read_target() == "baremetal":
        baremetal(root, work_root)
    else:
        kubernetes(root)


def baremetal(root: Path, work_root: Path | None = None) -> None:
    """The stack on the hosts `yardarm:hosts` lists, by ansible/site.yml."""
    settings = read_baremetal_config(root, pulumi.get_stack(), work_root=work_root)
    plan = plan_inventory(settings)
    for note in plan.notes:
        pulumi.log.warn(note)
    wheelhouse = settings.wheelhouse or gather_wheelhouse(root, settings.gathered_wheelhouse)
    stack = BaremetalStack(
        "yardarm",
        BaremetalStackArgs(
            files=plan.files,
            inventory_dir=settings.inventory_dir,
            ansible_dir=root / ANSIBLE_DIR,
            wheelhouse=wheelhouse,
            vault_password=settings.vault_password,
            private_key=settings.private_key,
        ),
    )
    pulumi.export("gatewayUrl", plan.gateway_url)
    pulumi.export("inventory", str(settings.inventory_dir))
    pulumi.export("recap", stack.recap)


def kubernetes(root: Path) -> None:
    """The stack in a namespace of the cluster the kubeconfig points at."""
    settings = read_config(root)
    topology = topology_of(settings)
    values = render_values(topology, project_images(root), settings.release)
    ns = settings.namespace

    namespace = Namespace(ns, NamespaceArgs(name=ns))
    dependencies = Dependencies(
        "dependencies",
        DependenciesArgs(
            namespace=namespace.name,
            release=settings.release,
            postgres_password=settings.postgres_password,
        ),
    )
    after: list[pulumi.Resource] = [dependencies]
    if settings.observability:
        after.append(
            Observability("observability", ObservabilityArgs(namespace=namespace.name, root=root))
        )
    release = YardarmRelease(
        "yardarm",
        YardarmReleaseArgs(
            chart_dir=root / CHART_DIR,
            namespace=namespace.name,
            release=settings.release,
            values=values,
            postgres_secret=dependencies.postgres_secret,
            image_registry=settings.image_registry,
            otlp_endpoint=obs.collector_url(ns) if settings.observability else "",
            prometheus_url=obs.prometheus_url(ns) if settings.observability else "",
            observability=settings.observability,
            gateway_service_type=settings.gateway_service_type,
        ),
        opts=pulumi.ResourceOptions(depends_on=after),
    )

    gateway, port = release.gateway_service, release.gateway_port
    pulumi.export("namespace", namespace.name)
    pulumi.export("gatewayUrl", f"http://{gateway}.{ns}.svc:{port}")
    pulumi.export("gatewayPortForward", _port_forward(ns, gateway, port, port))
    if settings.observability:
        pulumi.export("grafanaUrl", obs.grafana_url(ns))
        pulumi.export(
            "grafanaPortForward",
            _port_forward(ns, obs.GRAFANA_SERVICE, stack.GRAFANA_PORT, obs.GRAFANA_SERVICE_PORT),
        )
        pulumi.export("jaegerUrl", obs.jaeger_query_url(ns))
        pulumi.export(
            "jaegerPortForward",
            _port_forward(ns, stack.JAEGER_HOST, stack.JAEGER_QUERY_PORT, stack.JAEGER_QUERY_PORT),
        )
