"""Wires the store into a kit Service: recovery before listening, metrics, readiness."""

from __future__ import annotations

from yardarm_kit import Service

from yardarm_datastore.api import KVApi
from yardarm_datastore.settings import DatastoreSettings
from yardarm_datastore.store import Store

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def create_service(settings: DatastoreSettings) -> Service:
    """The datastore process: recovers its log, then serves the KV API."""
    service = Service(settings)
    fsync = service.metrics.histogram(
        "yardarm_datastore_wal_fsync_seconds",
        "Write-ahead log write+fsync time.",
        buckets=FSYNC_BUCKETS,
    )
    batch = service.metrics.histogram(
        "yardarm_datastore_wal_batch_size", "Records per group commit.", buckets=BATCH_BUCKETS
    )
    keys = service.metrics.gauge("yardarm_datastore_keys", "Keys stored.")
    revision = service.metrics.gauge("yardarm_datastore_revision", "Latest revision.")

    def on_flush(seconds: float, records: int) -> None:
        fsync.observe(seconds)
        batch.observe(records)
        keys.set(len(store.state.entries))
        revision.set(store.state.revision)

    store = Store(settings.data_dir, on_flush=on_flush)
    KVApi(service, store)
    recovered = False

    async def startup() -> None:
        nonlocal recovered
        with service.tracer.start_as_current_span("datastore.recover"):
            store.open()
        await store.start()
        recovered = True
        keys.set(len(store.state.entries))
        revision.set(store.state.revision)
        service.log.info(
            "recovered %d log records (%d bytes of bad tail dropped), revision %d",
            store.recovered_records, store.truncated_bytes, store.state.revision,
            extra={"event": "recovered"},
        )  # fmt: skip

    async def ready() -> bool:
        return recovered

    service.on_startup(startup)
    service.on_shutdown(store.close)
    service.add_readiness_check("recovered", ready)
    return service
