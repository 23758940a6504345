"""The yardarm chart (`charts/yardarm`) with the values rendered from the stack's model.

The values are `render_values`' (the same rendering as `charts/yardarm/values.yaml`),
with what only this program knows laid over them: the image registry, the Postgres
Secret it created, where the collector and Prometheus are, whether the Prometheus
Operator's resources exist, and how the gateway is exposed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi_kubernetes.helm.v4 import Chart

from yardarm.kubernetes.target import workload_name
from yardarm_infra.rollout_owned import ignore_rollout_owned, rollout_owned_fields


@dataclass(frozen=True)
class YardarmReleaseArgs:
    """The chart, its rendered values and the overrides from the rest of the stack."""

    chart_dir: Path
    namespace: pulumi.Input[str]
    release: str
    values: dict[str, Any]  # render_values(topology, images, release)
    postgres_secret: pulumi.Input[str]
    image_registry: str = ""
    otlp_endpoint: str = ""  # "": the services export no telemetry
    prometheus_url: str = ""  # "": the controller scrapes the pods itself
    observability: bool = False  # the Prometheus Operator's CRDs exist
    gateway_service_type: str = "ClusterIP"


def release_values(args: YardarmReleaseArgs) -> dict[str, Any]:
    """The rendered values with this stack's overrides (the rendering left untouched)."""
    values = copy.deepcopy(args.values)
    values["image"]["registry"] = args.image_registry
    values["postgres"]["existingSecret"] = args.postgres_secret
    values["otlp"]["endpoint"] = args.otlp_endpoint
    values["controller"]["prometheusUrl"] = args.prometheus_url
    values["serviceMonitor"]["enabled"] = args.observability
    values["prometheusRule"]["enabled"] = args.observability
    values["gateway"]["service"]["type"] = args.gateway_service_type
    return values


class YardarmRelease(pulumi.ComponentResource):
    """The chart installed as release `args.release`; the Deployments' rollout-owned
    fields are left alone on updates (`yardarm_infra.rollout_owned`)."""

    gateway_service: str
    gateway_port: int

    def __init__(
        self,
        resource_name: str,
        args: YardarmReleaseArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("yardarm:kubernetes:YardarmRelease", resource_name, None, opts)
        values = release_values(args)
        owned = rollout_owned_fields(args.release, values)
        Chart(
            args.release,
            chart=str(args.chart_dir),
            name=args.release,
            namespace=args.namespace,
            values=values,
            # What the component waits for (the dependencies, the Operator's CRDs for the
            # ServiceMonitor and PrometheusRule), the chart waits for itself.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=opts.depends_on if opts else None,
                transforms=[ignore_rollout_owned(owned)],
            ),
        )
        self.gateway_service = workload_name(args.release, "gateway", "")
        self.gateway_port = int(values["gateway"]["ports"]["http"])
        self.register_outputs({"gatewayService": self.gateway_service})
