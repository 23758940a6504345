"""The stack's settings (`pulumi config set yardarm:<key> ...`), read and checked once.

Every problem is reported before a resource is declared, each with the command that
fixes it, so a half-configured stack fails in `pulumi preview` rather than half-way
through `pulumi up`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pulumi

NAMESPACE: Final = "yardarm"  # the config namespace, `yardarm:<key>`
TARGETS: Final = ("kubernetes", "baremetal")
SERVICE_TYPES: Final = ("ClusterIP", "NodePort", "LoadBalancer")
DEFAULT_NAMESPACE: Final = "yardarm"
DEFAULT_RELEASE: Final = "yardarm"
# A release names every workload (`<release>-fulfillment-baseline`), and Kubernetes
# names are DNS labels of at most 63 characters: the longest suffix the chart or its
# dependencies append stays under the rest.
MAX_RELEASE: Final = 30
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ConfigError(ValueError):
    """A stack setting is missing or wrong; the message says which and how to set it."""


@dataclass(frozen=True)
class StackConfig:
    """The validated settings of one stack."""

    target: str
    namespace: str
    release: str
    config_path: Path | None  # a yardarm.yaml; None: the model's defaults
    image_registry: str  # prefixed to every project image; "" for the local images
    postgres_password: pulumi.Output[str]  # secret
    observability: bool
    gateway_service_type: str


def _dns_label(key: str, value: str, limit: int = 63) -> str:
    if not _DNS_LABEL.match(value) or len(value) > limit:
        raise ConfigError(
            f"yardarm:{key} must be a lowercase DNS label (letters, digits, '-'; at most "
            f"{limit} characters), got {value!r}: pulumi config set yardarm:{key} <name>"
        )
    return value


def _bool(config: pulumi.Config, key: str, default: bool) -> bool:
    raw = config.get(key)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ConfigError(
        f"yardarm:{key} must be true or false, got {raw!r}: "
        f"pulumi config set yardarm:{key} {str(default).lower()}"
    )


def read_target(config: pulumi.Config | None = None) -> str:
    """Where the stack runs (`yardarm:target`): `kubernetes` unless set."""
    config = config or pulumi.Config(NAMESPACE)
    target = config.get("target") or "kubernetes"
    if target not in TARGETS:
        raise ConfigError(
            f"yardarm:target must be one of {', '.join(TARGETS)}, got {target!r}: "
            "pulumi config set yardarm:target kubernetes"
        )
    return target


def config_file(root: Path, config: pulumi.Config) -> Path | None:
    """`yardarm:config`'s yardarm.yaml (relative to `root`, the directory of Pulumi.yaml);
    None: the model's defaults."""
    raw_path = config.get("config")
    if not raw_path:
        return None
    path = Path(raw_path)
    if not path.is_absolute():
        path = root / path
    if not path.is_file():
        raise ConfigError(
            f"yardarm:config names {raw_path!r}, which is not a file (relative paths "
            f"are taken from {root}): pulumi config set yardarm:config yardarm.yaml"
        )
    return path


def read_config(root: Path, config: pulumi.Config | None = None) -> StackConfig:
    """The settings of a kubernetes stack (a baremetal one's are
    `yardarm_infra.baremetal_config.read_baremetal_config`'s)."""
    config = config or pulumi.Config(NAMESPACE)
    target = read_target(config)
    if target != "kubernetes":
        raise ConfigError(
            f"yardarm:target is {target}, not kubernetes: pulumi config set yardarm:target "
            "kubernetes to deploy to a cluster"
        )
    namespace = _dns_label("namespace", config.get("namespace") or DEFAULT_NAMESPACE)
    release = _dns_label("release", config.get("release") or DEFAULT_RELEASE, MAX_RELEASE)
    config_path = config_file(root, config)
    registry = (config.get("imageRegistry") or "").strip().rstrip("/")
    service_type = config.get("gatewayServiceType") or "ClusterIP"
    if service_type not in SERVICE_TYPES:
        raise ConfigError(
            f"yardarm:gatewayServiceType must be one of {', '.join(SERVICE_TYPES)}, got "
            f"{service_type!r}: pulumi config set yardarm:gatewayServiceType ClusterIP"
        )
    password = config.get_secret("postgresPassword")
    if password is None:
        raise ConfigError(
            "yardarm:postgresPassword is required for the kubernetes target (the "
            "Postgres password, kept as a secret): pulumi config set --secret "
            'yardarm:postgresPassword "$(openssl rand -hex 24)"'
        )
    return StackConfig(
        target=target,
        namespace=namespace,
        release=release,
        config_path=config_path,
        image_registry=registry,
        postgres_password=password,
        observability=_bool(config, "observability", True),
        gateway_service_type=service_type,
    )
