"""yardarm datastore: a key-value service over a durable write-ahead log."""

from yardarm_datastore.app import create_service
from yardarm_datastore.settings import DatastoreSettings
from yardarm_datastore.state import Entry, KVState, Outcome
from yardarm_datastore.store import RecoveryReport, Store, StoreUnavailable

__all__ = [
    "DatastoreSettings",
    "Entry",
    "KVState",
    "Outcome",
    "RecoveryReport",
    "Store",
    "StoreUnavailable",
    "create_service",
]
