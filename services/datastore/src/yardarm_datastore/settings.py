"""Datastore settings (env prefix YARDARM_DATASTORE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings

from yardarm_datastore.store import COMPACT_BYTES


class DatastoreSettings(ServiceSettings):
    """Where this replica keeps its log and snapshot, and when it compacts."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_DATASTORE_", extra="ignore")

    service: str = "datastore"
    data_dir: Path = Path(".yardarm/data/datastore-0")
    compact_bytes: int = Field(default=COMPACT_BYTES, ge=4096)
