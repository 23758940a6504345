"""NATS and Postgres, from their upstream charts, named as the yardarm chart expects.

`KubernetesTarget` renders every service's settings with the hosts `<release>-nats` and
`<release>-postgresql`; each chart's `fullnameOverride` makes its Service exactly that
(both charts name their Service after the fullname, which by default also depends on the
release and chart names). The Postgres password is the stack's secret: the program
writes it into one Secret that Postgres reads and the yardarm chart mounts (its
`pgpass` in the stack home's layout), so it never appears in a chart's values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pulumi
from pulumi_kubernetes.core.v1 import Secret
from pulumi_kubernetes.meta.v1 import ObjectMetaArgs

from yardarm.containers.target import POSTGRES_PORT, POSTGRES_USER
from yardarm_infra import pins
from yardarm_infra.charts import pinned_chart

ADMIN_DATABASE: Final = "postgres"  # the database the init job connects to first
# The Secret's keys: the Postgres chart's (`auth.secretKeys`; the user's password and, as
# `auth.enablePostgresUser` is on, the admin's) and the stack home's pgpass.
PASSWORD_KEY: Final = "password"
ADMIN_PASSWORD_KEY: Final = "postgres-password"
PGPASS_KEY: Final = "pgpass"


def postgres_service(release: str) -> str:
    """The Postgres Service's name (`KubernetesTarget.postgres_host`)."""
    return f"{release}-postgresql"


def nats_service(release: str) -> str:
    """The NATS Service's name (`KubernetesTarget.nats_host`)."""
    return f"{release}-nats"


def postgres_secret_name(release: str) -> str:
    return f"{release}-postgres"


def pgpass_line(password: str) -> str:
    """A libpq password file line for the yardarm user on any host, port and database
    (`:` and `\\` in the password escaped, as libpq reads them)."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:{POSTGRES_USER}:{escaped}\n"


@dataclass(frozen=True)
class DependenciesArgs:
    """Where the dependencies go and the password Postgres is set up with."""

    namespace: pulumi.Input[str]
    release: str
    postgres_password: pulumi.Input[str]


def nats_values(release: str) -> dict[str, Any]:
    """The NATS chart's values: JetStream on (the services' streams), one server.

    Checked against nats-io/k8s `helm/charts/nats` 2.14.2 (commit 957650f, values.yaml and
    files/service.yaml): the Service is named `service.name`, which defaults to the
    fullname (`fullnameOverride` verbatim), and always carries the client port
    `config.nats.port` (4222). The chart has no values.schema.json.
    """
    return {
        "fullnameOverride": nats_service(release),
        "config": {"jetstream": {"enabled": True, "fileStore": {"pvc": {"size": "1Gi"}}}},
        "natsBox": {"enabled": False},
    }


def postgres_values(release: str) -> dict[str, Any]:
    """The Postgres chart's values: the yardarm user, its password from the Secret.

    Checked against bitnami/charts `bitnami/postgresql` 16.7.27 (commit 36f8598, values.yaml,
    values.schema.json, templates/primary/svc.yaml and statefulset.yaml, bundled `common`
    2.31.4): with the default `architecture: standalone` the Service is named the fullname
    (`fullnameOverride` verbatim) with port `primary.service.ports.postgresql`.

    The init job creates the services' databases as the yardarm user, and nothing more is
    needed for that: the chart hands `auth.username` to the image as `POSTGRES_USER`, and the
    image's first start creates that role `WITH LOGIN CREATEDB` (bitnami/containers
    `postgresql/17` libpostgresql.sh, `postgresql_create_admin_user`), owning
    `auth.database`. Hence no `primary.initdb.scripts`: one would be sourced by the
    image's setup on every start until it succeeds once, so a failing script would keep
    Postgres from ever starting.
    """
    return {
        "fullnameOverride": postgres_service(release),
        # The chart's own image tag, from the registry that still serves it. The bundled
        # `common` chart only warns about a `bitnamilegacy` repository, and fails on any
        # other one it does not know unless this is set; set, it warns in both cases.
        "image": {"repository": pins.POSTGRES_IMAGE_REPOSITORY},
        "global": {"security": {"allowInsecureImages": True}},
        "auth": {
            "username": POSTGRES_USER,
            "database": ADMIN_DATABASE,
            "existingSecret": postgres_secret_name(release),
            "secretKeys": {
                "adminPasswordKey": ADMIN_PASSWORD_KEY,
                "userPasswordKey": PASSWORD_KEY,
            },
        },
        "primary": {"service": {"ports": {"postgresql": POSTGRES_PORT}}},
    }


class Dependencies(pulumi.ComponentResource):
    """The Postgres Secret, Postgres and NATS; `postgres_host` and `nats_host` are the
    Service names the charts are configured with."""

    postgres_host: str
    nats_host: str
    postgres_secret: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        args: DependenciesArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("yardarm:kubernetes:Dependencies", resource_name, None, opts)
        release = args.release
        password = pulumi.Output.secret(args.postgres_password)
        secret = Secret(
            postgres_secret_name(release),
            metadata=ObjectMetaArgs(name=postgres_secret_name(release), namespace=args.namespace),
            type="Opaque",
            string_data={
                PASSWORD_KEY: password,
                ADMIN_PASSWORD_KEY: password,
                PGPASS_KEY: password.apply(pgpass_line),  # secret, as `password` is
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        after_secret = pulumi.ResourceOptions(parent=self, depends_on=[secret])
        pinned_chart(
            postgres_service(release), pins.POSTGRES, args.namespace,
            postgres_values(release), after_secret,
        )  # fmt: skip
        pinned_chart(
            nats_service(release), pins.NATS, args.namespace, nats_values(release),
            pulumi.ResourceOptions(parent=self),
        )  # fmt: skip
        self.postgres_host = postgres_service(release)
        self.nats_host = nats_service(release)
        self.postgres_secret = secret.metadata.apply(lambda meta: str(meta.name))
        self.register_outputs(
            {"postgresHost": self.postgres_host, "natsHost": self.nats_host,
             "postgresSecret": self.postgres_secret}
        )  # fmt: skip
