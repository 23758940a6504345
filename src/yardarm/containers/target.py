"""Where things are when every instance runs in a container of its own.

Each instance is a container named after it (`orders-0`, `datastore-2`,
`orders-canary-0`) on one network, so a client dials a peer by that name on the port
the service's image listens on (the model's port plan for replica 0: every container
has its own network namespace, so replicas need no ports of their own). NATS and
Postgres listen on their usual ports. Files are mounted at fixed paths: the stack's
credentials (issued by the init container into a volume) under `HOME_MOUNT`, flag
files under `FLAGS_MOUNT`, and each instance's state in its own volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from yardarm.credentials import CredentialFiles, StackCredentials
from yardarm.model import Deployment, Instance, TlsFiles, release_pins

# Container (DNS) names of the dependencies, and their ports inside the network.
NATS_HOST: Final = "nats"
NATS_PORT: Final = 4222
NATS_MONITOR_PORT: Final = 8222
POSTGRES_HOST: Final = "postgres"
POSTGRES_PORT: Final = 5432
POSTGRES_USER: Final = "yardarm"

STATE_MOUNT: Final = "/var/lib/yardarm"  # every image's state volume
HOME_MOUNT: Final = "/run/yardarm"  # the stack's credentials, read-only
FLAGS_MOUNT: Final = "/etc/yardarm/flags"  # the rendered flag files, read-only
FLAGS_FILE: Final = "flags.json"

# Inside the stack's home (the init container's STATE_MOUNT, the services' HOME_MOUNT):
# Postgres' superuser password, readable by the Postgres server's own user, and a
# pgpass file (0600) for the services, which run as the images' uid.
POSTGRES_PASSWORD_FILE: Final = "postgres/password"
PGPASS_FILE: Final = "credentials/pgpass"


def version_flags_file(instance: Instance) -> str:
    """The flag file of a version that pins some (its name, relative to `FLAGS_MOUNT`)."""
    return f"{instance.service}-{instance.version}.json"


class ContainerTarget(CredentialFiles):
    """Container names and image ports; files at the mounts the compose file declares.

    The Kubernetes target keeps its files and ports and names hosts its own way."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.topology = deployment.topology
        self.credentials = StackCredentials(Path(HOME_MOUNT))
        if self.topology.tls.enabled:
            raise ValueError(
                "tls.enabled is not supported by the container target yet: every link stays"
                " on the stack's own network; turn tls off in yardarm.yaml for `yardarm compose`"
            )

    def port(self, instance: Instance) -> int:
        """The port an instance's HTTP listener binds: its image's (replica 0's)."""
        return self.topology.service_port(instance.service, 0)

    def bind(self, instance: Instance) -> tuple[str, int]:
        return "0.0.0.0", self.port(instance)

    def url(self, client: Instance, server: Instance) -> str:
        return f"http://{server.name}:{self.port(server)}"

    def raft_bind(self, instance: Instance) -> tuple[str, int]:
        return "0.0.0.0", self.topology.raft_port(0)

    def raft_address(self, client: Instance, peer: Instance) -> str:
        return f"{peer.name}:{self.topology.raft_port(0)}"

    def postgres_dsn(self, client: Instance, database: str) -> str:
        return postgres_dsn(database, HOME_MOUNT)

    def nats_url(self, client: Instance) -> str:
        return f"nats://{NATS_HOST}:{NATS_PORT}"

    def gateway_admin_port(self, instance: Instance) -> int:
        return self.topology.gateway_admin_port(0)

    def shares_gateway_port(self) -> bool:
        return False  # a container per replica

    def state_dir(self, instance: Instance) -> str:
        return STATE_MOUNT

    def data_dir(self, instance: Instance) -> str:
        return f"{STATE_MOUNT}/data"

    def pins(self, instance: Instance) -> dict[str, str]:
        """The flags the instance's version pins (flag key -> variant)."""
        return release_pins(self.deployment, instance)

    def flags_file(self, instance: Instance) -> str:
        name = version_flags_file(instance) if self.pins(instance) else FLAGS_FILE
        return f"{FLAGS_MOUNT}/{name}"

    def tls(self, instance: Instance) -> TlsFiles | None:
        return None


def postgres_dsn(
    database: str, home: str, *, host: str = POSTGRES_HOST, port: int = POSTGRES_PORT
) -> str:
    """The DSN of a database on the stack's Postgres, its password read from the pgpass
    file in the stack's home mounted at `home`."""
    return f"postgresql://{POSTGRES_USER}@{host}:{port}/{database}?passfile={home}/{PGPASS_FILE}"
