"""yardarm datastore: a key-value service over a durable write-ahead log."""

from yardarm_datastore.app import create_service
from yardarm_datastore.settings import DatastoreSettings
from yardarm_datastore.store import Store

__all__ = ["DatastoreSettings", "Store", "create_service"]
