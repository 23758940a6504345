"""The Deployment fields the rollout controller and the autoscalers own, which
`pulumi up` must leave as they are.

A rollout scales the canary, baseline and green tracks up and down and gives their pods
the version it is rolling out (image, env, flags file); each HorizontalPodAutoscaler
sets its workload's replicas. Pulumi would put the chart's rendering back on the next
`pulumi up` (replicas from the model, the primary version on every track), ending a
rollout half-way or undoing a scale-out. So, on the chart's Deployments only:

- `spec.replicas` is ignored on every orders/fulfillment track and on the gateway (each
  autoscaled or scaled by a rollout);
- `spec.template.spec.containers` and `spec.template.metadata.labels` are ignored on the
  tracks other than a service's primary one: what a rollout runs there (the image, the
  version's settings, the pods' version label the controller patches with them) is the
  rollout's.

A primary track's containers stay Pulumi's: a changed model (a new primary version in
yardarm.yaml, a new image registry) still reaches the stable pods. After a rollout is
promoted, set the new version in yardarm.yaml so the next `pulumi up` agrees with it.
Ignored fields still take the chart's values when the Deployment is first created.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import pulumi

from yardarm.kubernetes.target import workload_name
from yardarm.model import ROLLABLE

DEPLOYMENT: Final = "kubernetes:apps/v1:Deployment"
REPLICAS: Final = "spec.replicas"
CONTAINERS: Final = "spec.template.spec.containers"
POD_LABELS: Final = "spec.template.metadata.labels"

Transform = Callable[[pulumi.ResourceTransformArgs], pulumi.ResourceTransformResult | None]


def rollout_owned_fields(release: str, values: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Each Deployment's name (as the chart names it) -> the fields left to others."""
    owned: dict[str, tuple[str, ...]] = {}
    if values["gateway"]["autoscaling"]["enabled"]:
        owned[workload_name(release, "gateway", "")] = (REPLICAS,)
    for service in ROLLABLE:
        primary = values[service]["primaryTrack"]
        for track in values[service]["tracks"]:
            fields = (REPLICAS,) if track == primary else (REPLICAS, CONTAINERS, POD_LABELS)
            owned[workload_name(release, service, track)] = fields
    return owned


def _name(args: pulumi.ResourceTransformArgs) -> str:
    """The object's own name: its metadata's, else the tail of the chart's resource name
    (`<chart>:<namespace>/<name>`)."""
    metadata = args.props.get("metadata") if isinstance(args.props, Mapping) else None
    if isinstance(metadata, Mapping) and isinstance(metadata.get("name"), str):
        return str(metadata["name"])
    return args.name.rsplit("/", 1)[-1]


def ignore_rollout_owned(owned: Mapping[str, tuple[str, ...]]) -> Transform:
    """A transform adding `ignoreChanges` for `owned`'s fields to those Deployments."""

    def transform(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
        if args.type_ != DEPLOYMENT:
            return None
        fields = owned.get(_name(args))
        if not fields:
            return None
        ignore = pulumi.ResourceOptions(ignore_changes=list(fields))
        return pulumi.ResourceTransformResult(
            props=args.props, opts=pulumi.ResourceOptions.merge(args.opts, ignore)
        )

    return transform
