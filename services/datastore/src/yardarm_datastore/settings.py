"""Datastore settings (env prefix YARDARM_DATASTORE_)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings

RaftAddress = Annotated[str, StringConstraints(pattern=r"^[^\s:]+:[0-9]{1,5}$")]


class PeerAddress(BaseModel):
    """How this replica reaches another one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raft: RaftAddress  # host:port of its Raft stream (or of a proxy in front of it)
    http: Annotated[str, StringConstraints(pattern=r"^https?://")]


class DatastoreSettings(ServiceSettings):
    """This replica's identity in its Raft group, its disk, and the group's timing.

    `peers` names the other replicas at bootstrap, as JSON:
    `{"2": {"raft": "127.0.0.1:7061", "http": "http://127.0.0.1:7011"}, ...}`; with none,
    the replica is a group of one. Replicas added later are learned from the log.
    """

    model_config = SettingsConfigDict(env_prefix="YARDARM_DATASTORE_", extra="ignore")

    service: str = "datastore"
    data_dir: Path = Path(".yardarm/data/datastore-0")
    replica_id: int = Field(default=1, ge=1, le=1_000_000)
    raft_host: str = "127.0.0.1"
    raft_port: int = Field(default=0, ge=0, le=65535)  # 0: any free port (a group of one)
    peers: dict[int, PeerAddress] = Field(default_factory=dict)
    tick_s: float = Field(default=0.05, gt=0.0, le=5.0)
    heartbeat_ticks: int = Field(default=2, ge=1, le=100)
    election_ticks: int = Field(default=20, ge=2, le=1000)
    snapshot_entries: int = Field(default=10_000, ge=10)
    commit_timeout_s: float = Field(default=5.0, gt=0.0, le=120.0)

    @model_validator(mode="after")
    def _check(self) -> DatastoreSettings:
        if self.replica_id in self.peers:
            raise ValueError(f"peers must not include this replica ({self.replica_id})")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be larger than heartbeat_ticks")
        return self
