"""A pinned upstream chart as a `helm.v4.Chart`, the one way this program installs one."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi_kubernetes.helm.v4 import Chart, RepositoryOptsArgs

from yardarm_infra.pins import ChartPin


def pinned_chart(
    name: str,
    pin: ChartPin,
    namespace: pulumi.Input[str],
    values: dict[str, Any],
    opts: pulumi.ResourceOptions,
) -> Chart:
    """`pin` installed as release `name` in `namespace` with `values`."""
    repository = RepositoryOptsArgs(repo=pin.repository) if pin.repository else None
    return Chart(
        name,
        chart=pin.chart,
        version=pin.version,
        repository_opts=repository,
        name=name,
        namespace=namespace,
        values=values,
        opts=opts,
    )
