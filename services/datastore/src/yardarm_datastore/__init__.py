"""yardarm datastore: a key-value service replicated by Raft."""

from yardarm_datastore.app import create_service
from yardarm_datastore.settings import DatastoreSettings
from yardarm_datastore.state import Entry, KVState, Outcome

__all__ = ["DatastoreSettings", "Entry", "KVState", "Outcome", "create_service"]
