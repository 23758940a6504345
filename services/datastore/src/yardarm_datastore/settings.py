"""Datastore settings (env prefix YARDARM_DATASTORE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings

from yardarm_datastore.models import HttpBase, RaftAddress


class PeerAddress(BaseModel):
    """How this replica reaches another one (the same rules as `POST /raft/members`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raft: RaftAddress  # host:port of its Raft stream (or of a proxy in front of it)
    http: HttpBase  # the base URL of its HTTP API


class DatastoreSettings(ServiceSettings):
    """This replica's identity in its Raft group, its disk, and the group's timing.

    `peers` names the other replicas at bootstrap, as JSON:
    `{"2": {"raft": "127.0.0.1:7061", "http": "http://127.0.0.1:7011"}, ...}`; with none,
    the replica is a group of one. Replicas added later are learned from the log. It may
    name this replica too (a StatefulSet gives every pod the same list): that entry is
    left out. `pod_index` (a StatefulSet pod's ordinal, from its
    `apps.kubernetes.io/pod-index` label) sets `replica_id` to the ordinal + 1.

    `access_file` is the access document (`yardarm_kit.access`) that guards the KV and
    Raft admin APIs; unset, anyone who reaches the port may read and write every key.
    `peer_token_file` holds the group's shared secret, which a replica proves it knows
    when it opens a Raft stream; unset, anyone who reaches the Raft port may speak Raft.
    With `tls_cert_file`, `tls_key_file` and `tls_ca_file` all set, the Raft streams use
    mutual TLS as well (certificates signed by that CA, both ways).

    The HTTP API binds the kit's `host` and the Raft stream listener `raft_host` (both
    127.0.0.1 by default; `0.0.0.0` in a container, with `peers` naming addresses the
    other replicas can reach). `data_dir` is the one place the replica writes (its log
    and snapshots): a volume in a container, whatever `state_dir` is. On SIGTERM the
    HTTP API drains (the kit's `drain_delay_s`) while the replica stays in its group;
    the Raft listener closes after the HTTP listener, with the replica. A leader first
    hands leadership to its most up-to-date follower (`transfer_timeout_s` at most; 0
    turns the hand-over off), so the group goes on without waiting out an election.
    """

    model_config = SettingsConfigDict(env_prefix="YARDARM_DATASTORE_", extra="ignore")

    service: str = "datastore"
    data_dir: Path = Path(".yardarm/data/datastore-0")
    replica_id: int = Field(default=1, ge=1, le=1_000_000)
    pod_index: int | None = Field(default=None, ge=0, lt=1_000_000)
    raft_host: str = "127.0.0.1"
    raft_port: int = Field(default=0, ge=0, le=65535)  # 0: any free port (a group of one)
    peers: dict[int, PeerAddress] = Field(default_factory=dict)
    tick_s: float = Field(default=0.05, gt=0.0, le=5.0)
    heartbeat_ticks: int = Field(default=2, ge=1, le=100)
    election_ticks: int = Field(default=20, ge=2, le=1000)
    snapshot_entries: int = Field(default=10_000, ge=10)
    commit_timeout_s: float = Field(default=5.0, gt=0.0, le=120.0)
    # On SIGTERM a leader hands leadership over before it drains, for at most this long.
    transfer_timeout_s: float = Field(default=3.0, ge=0.0, le=60.0)
    access_file: Path | None = None
    peer_token_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> DatastoreSettings:
        if self.pod_index is not None:
            if "replica_id" in self.model_fields_set and self.replica_id != self.pod_index + 1:
                raise ValueError(
                    f"replica_id {self.replica_id} disagrees with pod_index {self.pod_index}"
                    " (the replica id is the pod index + 1): set one of them"
                )
            self.replica_id = self.pod_index + 1
        self.peers.pop(self.replica_id, None)
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be larger than heartbeat_ticks")
        for path in (self.access_file, self.peer_token_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{str(path)!r} does not exist")
        return self

    @property
    def raft_tls(self) -> bool:
        """Whether the Raft streams use mutual TLS (certificate, key and CA all set)."""
        return None not in (self.tls_cert_file, self.tls_key_file, self.tls_ca_file)
