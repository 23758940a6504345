"""The deployment model: the stack's services, versions, tracks and ports, loaded from
`yardarm.yaml` and rendered by each target (`yardarm.local` for this machine).

It imports no service package and nothing of the control plane above it (a layering
contract in pyproject.toml holds it to that), and stays cheap to import.
"""

from yardarm.model.deployment import Deployment, Instance
from yardarm.model.desired import (
    DesiredState,
    ScaleError,
    current_for,
    deployment,
    deployment_of,
    desired_from,
    fingerprint,
    scaled,
)
from yardarm.model.flags import default_flags, pinned
from yardarm.model.load import (
    CONFIG_FILE,
    TopologyError,
    load_topology,
    project_dir,
    validate_file,
)
from yardarm.model.settings import (
    GATEWAY_ROUTES,
    Target,
    TlsFiles,
    gateway_upstreams,
    instance_settings,
    release_pins,
)
from yardarm.model.specs import (
    DEPENDENCY_LINK_OFFSET,
    MAX_DATASTORES,
    MAX_GATEWAYS,
    ROLLABLE,
    SERVICE_NAMES,
    ChaosSpec,
    DatastoreSpec,
    GatewaySpec,
    OrdersSpec,
    PrometheusSpec,
    RollableSpec,
    Services,
    ServiceSpec,
    TlsSpec,
    Topology,
    TrackSpec,
    VersionSpec,
)
from yardarm.model.track_ports import track_ports

__all__ = [
    "CONFIG_FILE",
    "DEPENDENCY_LINK_OFFSET",
    "GATEWAY_ROUTES",
    "MAX_DATASTORES",
    "MAX_GATEWAYS",
    "ROLLABLE",
    "SERVICE_NAMES",
    "ChaosSpec",
    "DatastoreSpec",
    "Deployment",
    "DesiredState",
    "GatewaySpec",
    "Instance",
    "OrdersSpec",
    "PrometheusSpec",
    "RollableSpec",
    "ScaleError",
    "ServiceSpec",
    "Services",
    "Target",
    "TlsFiles",
    "TlsSpec",
    "Topology",
    "TopologyError",
    "TrackSpec",
    "VersionSpec",
    "current_for",
    "default_flags",
    "deployment",
    "deployment_of",
    "desired_from",
    "fingerprint",
    "gateway_upstreams",
    "instance_settings",
    "load_topology",
    "pinned",
    "project_dir",
    "release_pins",
    "scaled",
    "track_ports",
    "validate_file",
]
