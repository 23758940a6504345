"""Wires a Raft replica into a kit Service: recovery before listening, metrics, admin,
who may reach what (the access document, the peer secret, TLS), and a stop that hands
leadership over before draining (a rolling restart costs the group no election).

Readiness means caught up: a voter that has applied what its leader had committed a
moment ago. A supervisor that replaces one replica at a time waits for that before it
takes down the next, so the group never runs short of an up-to-date majority.
"""

from __future__ import annotations

import time

from yardarm_kit import Service, tls
from yardarm_kit.access import AccessDocument, Authorizer, read_token

from yardarm_datastore.admin import RaftAdmin
from yardarm_datastore.api import KVApi
from yardarm_datastore.auth import REALM, Guard
from yardarm_datastore.raft.types import Role, SoftState
from yardarm_datastore.replica import Hooks, Member, Replica, ReplicaConfig
from yardarm_datastore.settings import DatastoreSettings

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ROLES = tuple(role.value for role in Role)
# A readiness probe's ReadIndex round: well within the kit's bound on a check (2 s).
READY_ROUND_S = 1.0


class DatastoreService(Service):
    """The kit's Service, with a step before the drain: a leader hands leadership to its
    most up-to-date follower (bounded by `transfer_timeout_s`, logged), so the group
    does not wait out an election timeout once it stops. A follower just drains."""

    def __init__(self, settings: DatastoreSettings) -> None:
        super().__init__(settings)
        self.transfer_timeout_s = settings.transfer_timeout_s
        self.replica: Replica | None = None

    async def drain(self) -> None:
        if self.replica is not None and self.transfer_timeout_s > 0:
            try:
                await hand_off(self, self.replica, self.transfer_timeout_s)
            except Exception:  # the drain goes on whatever happened
                self.log.exception("the leadership hand-over failed")
        await super().drain()


async def hand_off(service: Service, replica: Replica, timeout_s: float) -> None:
    """Hand leadership away if this replica leads, and say how it went."""
    was = replica.status()
    if was.get("role") != Role.LEADER.value:
        return
    started = time.perf_counter()
    successor = await replica.hand_off(timeout_s)
    elapsed = time.perf_counter() - started
    if successor is None:
        service.log.warning(
            "stopping as the leader of term %d: no follower took over within %.3fs; the "
            "group elects a leader once this replica is gone", was["term"], elapsed,
            extra={"event": "leader_transfer", "outcome": "failed", "elapsed_s": elapsed},
        )  # fmt: skip
        return
    service.log.info(
        "stopping: handed leadership to replica %d in %.3fs", successor, elapsed,
        extra={"event": "leader_transfer", "outcome": "transferred", "to": successor,
               "elapsed_s": elapsed},
    )  # fmt: skip


def replica_config(settings: DatastoreSettings) -> ReplicaConfig:
    secret = None
    if settings.peer_token_file is not None:
        secret = read_token(settings.peer_token_file).encode()
    server_ssl = client_ssl = None
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file
    if cert is not None and key is not None and ca is not None:
        server_ssl = tls.server_context(cert, key, ca=ca, require_client_cert=True)
        client_ssl = tls.client_context(ca, cert=cert, key=key)
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
        peer_secret=secret,
        raft_server_ssl=server_ssl,
        raft_client_ssl=client_ssl,
    )


def create_service(settings: DatastoreSettings) -> Service:
    """The datastore process: recovers its Raft log, joins its group, serves the KV API."""
    service = DatastoreService(settings)
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
    elected = m.counter(
        "yardarm_datastore_raft_elections_won_total",
        "Times this replica became the leader, by cause: transfer (handed over by the "
        "leader, as in a rolling restart) or election (no leader heard in time).",
        ("cause",),
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

    def on_elected(cause: str) -> None:
        elected.inc(cause=cause)

    hooks = Hooks(on_persist, on_soft_state, on_progress, on_snapshot, on_elected)
    replica = Replica(replica_config(settings), hooks)
    service.replica = replica
    authorizer = None
    if settings.access_file is not None:
        authorizer = Authorizer(AccessDocument.load(settings.access_file), REALM)
    guard = Guard(service, authorizer)
    KVApi(service, replica, guard)
    RaftAdmin(service, replica, guard)

    async def recover() -> None:
        with service.tracer.start_as_current_span("datastore.recover") as span:
            await replica.open()
            status = replica.status()
            span.set_attribute("yardarm.raft.term", status["term"])
            span.set_attribute("yardarm.raft.commit", status["commit"])
        warn_if_open(service, settings, replica.raft_port)
        service.log.info(
            "replica %d recovered %s: term %d, log to index %d, snapshot at %d; peers %s",
            settings.replica_id, settings.data_dir, status["term"], status["last_index"],
            status["snapshot_index"], sorted(settings.peers) or "none",
            extra={"event": "recovered"},
        )  # fmt: skip

    async def ready() -> bool:
        return await replica.caught_up(READY_ROUND_S)

    service.on_startup(recover)
    service.on_shutdown(replica.close)
    service.add_readiness_check("raft", ready)
    return service


def warn_if_open(service: Service, settings: DatastoreSettings, raft_port: int) -> None:
    """Say loudly, once at start-up, which doors are open."""
    if settings.access_file is None:
        service.log.warning(
            "authentication is OFF (no ACCESS_FILE): anyone who reaches %s:%d can read and "
            "write every key and change the Raft group",
            settings.host, settings.port, extra={"event": "auth_disabled"},
        )  # fmt: skip
    if settings.peer_token_file is None:
        service.log.warning(
            "Raft peers are NOT authenticated (no PEER_TOKEN_FILE): anyone who reaches the "
            "Raft port %s:%d can speak Raft to this replica and rewrite its data",
            settings.raft_host, raft_port, extra={"event": "peer_auth_disabled"},
        )  # fmt: skip
    if settings.tls and not settings.raft_tls:
        service.log.warning(
            "the HTTP listener uses TLS but the Raft streams do not: set TLS_CA_FILE too, "
            "so replicas use mutual TLS between them",
            extra={"event": "raft_plaintext"},
        )  # fmt: skip
