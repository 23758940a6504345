"""Datastore settings (env prefix YARDARM_DATASTORE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings


class DatastoreSettings(ServiceSettings):
    """Where this replica keeps its log and snapshot."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_DATASTORE_", extra="ignore")

    service: str = "datastore"
    data_dir: Path = Path(".yardarm/data/datastore-0")
