"""Where things are on Kubernetes, as the chart (`charts/yardarm`) names them.

The chart runs each (service, track) of orders and fulfillment as a Deployment
`<release>-<service>-<track>` behind a Service of the same name, the gateway as
`<release>-gateway`, and the datastore as the StatefulSet `<release>-datastore` whose pods
are reached by their stable names on the headless Service `<release>-datastore-peers`.
Every container listens on its image's port and mounts what the container target
mounts (`yardarm.containers.target`): the credentials Secret at `HOME_MOUNT` in the
stack home's layout, the flags ConfigMap at `FLAGS_MOUNT`, its state at `STATE_MOUNT`.

The addresses a Deployment's pods share are rendered once per workload; what differs
per pod (its instance name, a datastore replica's id) the chart takes from the
downward API.
"""

from __future__ import annotations

from yardarm.containers.target import (
    HOME_MOUNT,
    NATS_PORT,
    POSTGRES_PORT,
    ContainerTarget,
    postgres_dsn,
)
from yardarm.model import Deployment, Instance

DEFAULT_RELEASE = "yardarm"


def workload_name(release: str, service: str, track: str) -> str:
    """A service's workload on one track: `<release>-gateway`, `<release>-datastore`,
    `<release>-orders-stable`, `<release>-orders-canary`."""
    if service in ("gateway", "datastore"):
        return f"{release}-{service}"
    return f"{release}-{service}-{track}"


def peers_service(release: str) -> str:
    """The headless Service that gives each datastore pod its stable DNS name."""
    return f"{release}-datastore-peers"


class KubernetesTarget(ContainerTarget):
    """Service DNS names in the release's namespace; the container target's files."""

    def __init__(
        self,
        deployment: Deployment,
        release: str = DEFAULT_RELEASE,
        *,
        postgres_host: str | None = None,
        nats_host: str | None = None,
    ) -> None:
        super().__init__(deployment)
        self.release = release
        self.postgres_host = postgres_host or f"{release}-postgresql"
        self.nats_host = nats_host or f"{release}-nats"

    def host(self, instance: Instance) -> str:
        """The DNS name a client dials for `instance` (a datastore pod's own; a
        Deployment's Service, which the controller's EndpointSlice watch replaces with
        its pods in the gateway's routing document)."""
        if instance.service == "datastore":
            pod = f"{workload_name(self.release, 'datastore', instance.track)}-{instance.ordinal}"
            return f"{pod}.{peers_service(self.release)}"
        return workload_name(self.release, instance.service, instance.track)

    def url(self, client: Instance, server: Instance) -> str:
        return f"http://{self.host(server)}:{self.port(server)}"

    def raft_address(self, client: Instance, peer: Instance) -> str:
        return f"{self.host(peer)}:{self.topology.raft_port(0)}"

    def postgres_dsn(self, client: Instance, database: str) -> str:
        return postgres_dsn(database, HOME_MOUNT, host=self.postgres_host, port=POSTGRES_PORT)

    def nats_url(self, client: Instance) -> str:
        return f"nats://{self.nats_host}:{NATS_PORT}"
