"""The Pulumi program deploying yardarm: to Kubernetes, one component per concern
(`Namespace`, `Dependencies`, `Observability`, `YardarmRelease`), or to plain Linux hosts
(`BaremetalStack`: the Ansible inventory and the `Playbook` run), each with a typed
`*Args` dataclass, declared by `program.main` from the stack's settings."""

from yardarm_infra.baremetal import BaremetalStack, BaremetalStackArgs
from yardarm_infra.baremetal_config import BaremetalConfig, read_baremetal_config
from yardarm_infra.config import ConfigError, StackConfig, read_config, read_target
from yardarm_infra.dependencies import Dependencies, DependenciesArgs
from yardarm_infra.namespace import Namespace, NamespaceArgs
from yardarm_infra.observability import Observability, ObservabilityArgs
from yardarm_infra.playbook import PlaybookError, PlaybookRun, run_playbook
from yardarm_infra.playbook_resource import Playbook, PlaybookArgs
from yardarm_infra.release import YardarmRelease, YardarmReleaseArgs
from yardarm_infra.rollout_owned import ignore_rollout_owned, rollout_owned_fields

__all__ = [
    "BaremetalConfig",
    "BaremetalStack",
    "BaremetalStackArgs",
    "ConfigError",
    "Dependencies",
    "DependenciesArgs",
    "Namespace",
    "NamespaceArgs",
    "Observability",
    "ObservabilityArgs",
    "Playbook",
    "PlaybookArgs",
    "PlaybookError",
    "PlaybookRun",
    "StackConfig",
    "YardarmRelease",
    "YardarmReleaseArgs",
    "ignore_rollout_owned",
    "read_baremetal_config",
    "read_config",
    "read_target",
    "rollout_owned_fields",
    "run_playbook",
]
