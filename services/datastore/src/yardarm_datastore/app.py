"""Wires the store into a kit Service: recovery before listening, metrics, readiness."""

from __future__ import annotations

from yardarm_kit import Service

from yardarm_datastore.api import KVApi
from yardarm_datastore.settings import DatastoreSettings
from yardarm_datastore.store import Store
from yardarm_datastore.wal import CommitInfo

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def create_service(settings: DatastoreSettings) -> Service:
    """The datastore process: recovers its log, then serves the KV API."""
    service = Service(settings)
    fsync = service.metrics.histogram(
        "yardarm_datastore_wal_fsync_seconds",
        "Time to write and fsync one group commit of the write-ahead log.",
        buckets=FSYNC_BUCKETS,
    )
    batch = service.metrics.histogram(
        "yardarm_datastore_wal_batch_size",
        "Records written by one group commit.",
        buckets=BATCH_BUCKETS,
    )
    keys = service.metrics.gauge("yardarm_datastore_keys", "Keys stored.")
    revision = service.metrics.gauge(
        "yardarm_datastore_revision", "The store's revision (count of applied writes)."
    )

    def observe_state() -> None:
        keys.set(len(store.state.entries))
        revision.set(store.state.revision)

    def on_batch(info: CommitInfo) -> None:
        fsync.observe(info.seconds)
        batch.observe(info.records)
        observe_state()

    store = Store(settings.data_dir, compact_bytes=settings.compact_bytes, on_batch=on_batch)
    KVApi(service, store)

    async def recover() -> None:
        with service.tracer.start_as_current_span("datastore.recover") as span:
            report = await store.open()
            span.set_attribute("yardarm.datastore.replayed", report.replayed)
            span.set_attribute("yardarm.datastore.truncated_bytes", report.truncated_bytes)
            span.set_attribute("yardarm.datastore.revision", report.revision)
        observe_state()
        service.log.info(
            "recovered %s: snapshot at revision %d, %d log records replayed, %d bytes of bad "
            "tail dropped, revision %d, in %.3fs",
            settings.data_dir, report.snapshot_revision, report.replayed,
            report.truncated_bytes, report.revision, report.seconds,
            extra={"event": "recovered"},
        )  # fmt: skip

    async def ready() -> bool:
        return store.ready

    service.on_startup(recover)
    service.on_shutdown(store.close)
    service.add_readiness_check("store", ready)
    return service
