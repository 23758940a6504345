"""Wires a Raft replica into a kit Service: recovery before listening, metrics, admin."""

from __future__ import annotations

from yardarm_kit import Service

from yardarm_datastore.admin import RaftAdmin
from yardarm_datastore.api import KVApi
from yardarm_datastore.raft.types import Role, SoftState
from yardarm_datastore.replica import Hooks, Member, Replica, ReplicaConfig
from yardarm_datastore.settings import DatastoreSettings

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ROLES = tuple(role.value for role in Role)


def replica_config(settings: DatastoreSettings) -> ReplicaConfig:
    return ReplicaConfig(
        node_id=settings.replica_id,
        data_dir=settings.data_dir,
        raft_host=settings.raft_host,
        raft_port=settings.raft_port,
        members={n: Member(raft=p.raft, http=p.http) for n, p in settings.peers.items()},
        tick_s=settings.tick_s,
        election_ticks=settings.election_ticks,
        heartbeat_ticks=settings.heartbeat_ticks,
        snapshot_entries=settings.snapshot_entries,
        commit_timeout_s=settings.commit_timeout_s,
    )


def create_service(settings: DatastoreSettings) -> Service:
    """The datastore process: recovers its Raft log, joins its group, serves the KV API."""
    service = Service(settings)
    m = service.metrics
    append = m.histogram(
        "yardarm_datastore_raft_append_seconds",
        "Time to write one batch of Raft entries and hard state to the log (before fsync).",
        buckets=FSYNC_BUCKETS,
    )
    fsync = m.histogram(
        "yardarm_datastore_wal_fsync_seconds",
        "Time to fsync the Raft log after a write.",
        buckets=FSYNC_BUCKETS,
    )
    batch = m.histogram(
        "yardarm_datastore_wal_batch_size", "Raft entries per log write.", buckets=BATCH_BUCKETS
    )
    term = m.gauge("yardarm_datastore_raft_term", "This replica's current Raft term.")
    role = m.gauge("yardarm_datastore_raft_role", "1 for this replica's current role.", ("role",))
    leader = m.gauge("yardarm_datastore_raft_leader", "The replica id this replica follows.")
    commit = m.gauge("yardarm_datastore_raft_commit_index", "Highest log index known committed.")
    applied = m.gauge("yardarm_datastore_raft_applied_index", "Highest log index applied.")
    changes = m.counter(
        "yardarm_datastore_raft_leader_changes_total", "Times this replica saw a new leader."
    )
    snapshots = m.counter("yardarm_datastore_raft_snapshots_total", "Snapshots taken.")
    snapshot_bytes = m.gauge(
        "yardarm_datastore_raft_snapshot_bytes", "Size of the latest snapshot taken."
    )
    keys = m.gauge("yardarm_datastore_keys", "Keys stored.")
    revision = m.gauge(
        "yardarm_datastore_revision", "The store's revision (count of applied writes)."
    )

    def on_persist(entries: int, write_s: float, fsync_s: float) -> None:
        append.observe(write_s)
        fsync.observe(fsync_s)
        if entries:
            batch.observe(entries)

    def on_soft_state(state: SoftState, leader_changed: bool) -> None:
        term.set(state.term)
        leader.set(state.leader)
        for name in ROLES:
            role.set(1.0 if name == state.role.value else 0.0, role=name)
        if leader_changed:
            changes.inc()

    def on_progress(commit_index: int, applied_index: int) -> None:
        commit.set(commit_index)
        applied.set(applied_index)
        keys.set(len(replica.state.entries))
        revision.set(replica.state.revision)

    def on_snapshot(index: int, size: int) -> None:
        snapshots.inc()
        snapshot_bytes.set(size)

    hooks = Hooks(on_persist, on_soft_state, on_progress, on_snapshot)
    replica = Replica(replica_config(settings), hooks)
    KVApi(service, replica)
    RaftAdmin(service, replica)

    async def recover() -> None:
        with service.tracer.start_as_current_span("datastore.recover") as span:
            await replica.open()
            status = replica.status()
            span.set_attribute("yardarm.raft.term", status["term"])
            span.set_attribute("yardarm.raft.commit", status["commit"])
        service.log.info(
            "replica %d recovered %s: term %d, log to index %d, snapshot at %d; peers %s",
            settings.replica_id, settings.data_dir, status["term"], status["last_index"],
            status["snapshot_index"], sorted(settings.peers) or "none",
            extra={"event": "recovered"},
        )  # fmt: skip

    async def ready() -> bool:
        return replica.ready

    service.on_startup(recover)
    service.on_shutdown(replica.close)
    service.add_readiness_check("raft", ready)
    return service
