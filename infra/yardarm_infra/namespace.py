"""The namespace every other resource of the stack lives in."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_kubernetes.core.v1 import Namespace as KubeNamespace
from pulumi_kubernetes.meta.v1 import ObjectMetaArgs


@dataclass(frozen=True)
class NamespaceArgs:
    """The namespace's name (a DNS label, checked by the stack's config)."""

    name: str


class Namespace(pulumi.ComponentResource):
    """The stack's namespace; `name` resolves once it exists, so whatever takes it waits."""

    name: pulumi.Output[str]

    def __init__(
        self, resource_name: str, args: NamespaceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("yardarm:kubernetes:Namespace", resource_name, None, opts)
        namespace = KubeNamespace(
            resource_name,
            metadata=ObjectMetaArgs(
                name=args.name, labels={"app.kubernetes.io/part-of": "yardarm"}
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = namespace.metadata.apply(lambda meta: str(meta.name))
        self.register_outputs({"name": self.name})
