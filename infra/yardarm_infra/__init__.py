"""The Pulumi program deploying yardarm to Kubernetes: one component per concern
(`Namespace`, `Dependencies`, `Observability`, `YardarmRelease`), each with a typed
`*Args` dataclass, declared by `program.main` from the stack's settings."""

from yardarm_infra.config import ConfigError, StackConfig, read_config
from yardarm_infra.dependencies import Dependencies, DependenciesArgs
from yardarm_infra.namespace import Namespace, NamespaceArgs
from yardarm_infra.observability import Observability, ObservabilityArgs
from yardarm_infra.release import YardarmRelease, YardarmReleaseArgs
from yardarm_infra.rollout_owned import ignore_rollout_owned, rollout_owned_fields

__all__ = [
    "ConfigError",
    "Dependencies",
    "DependenciesArgs",
    "Namespace",
    "NamespaceArgs",
    "Observability",
    "ObservabilityArgs",
    "StackConfig",
    "YardarmRelease",
    "YardarmReleaseArgs",
    "ignore_rollout_owned",
    "read_config",
    "rollout_owned_fields",
]
