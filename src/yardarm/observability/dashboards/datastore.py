"""The datastore: its Raft group (term, roles, leader, commit and apply), the write-ahead
log (append, fsync, batching), snapshots, and the KV API on top. Every series is per
replica (`instance`)."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from yardarm.observability.dashboards.common import (
    USER_TRAFFIC,
    Query,
    Row,
    Scope,
    agg,
    dashboard,
    error_logs,
    graph,
    latency,
    single,
    states,
    sum_increase,
    sum_rate,
    thresholds,
)

UID = "yardarm-datastore"
SERVICE = "datastore"

_S = Scope(SERVICE)
_BY_REPLICA = ("instance",)
_ROLE_CODES = (("leader", 3), ("candidate", 2), ("pre_candidate", 1))  # follower: 0


def _per_replica(series: str, op: str = "max") -> str:
    return agg(op, _BY_REPLICA, _S(series))


def _role_code() -> str:
    """One number per replica for its role (0 follower, 1 pre-candidate, 2 candidate,
    3 leader): the role gauge is 1 for the current role and 0 for the others."""
    terms = []
    for role, code in _ROLE_CODES:
        selector = _S("yardarm_datastore_raft_role", f'role="{role}"')
        terms.append(f"{code} * {agg('max', _BY_REPLICA, selector)}")
    return " + ".join(terms)


def build() -> dm.Dashboard:
    return dashboard(
        UID,
        "Yardarm: datastore",
        "The Raft group behind the KV store: is there one leader, do terms and leaders "
        "stay put, do commits get applied, how fast is the log on disk, and what the KV "
        "API serves.",
        service=SERVICE,
        rows=[
            Row(
                "Raft group",
                [
                    single(
                        "Replicas without a leader",
                        "How many replicas know no leader right now? Anything above 0 for "
                        "more than an election means the group has lost its quorum or is "
                        "partitioned: writes stall.",
                        "short",
                        Query(
                            agg("sum", (), f"{_S('yardarm_datastore_raft_leader')} == bool 0"),
                            "without a leader",
                        ),
                        colours=thresholds((None, "green"), (1, "red")),
                        width=8,
                    ),
                    single(
                        "Term",
                        "The highest Raft term any replica has seen. It moves only on elections.",
                        "none",
                        Query(agg("max", (), _S("yardarm_datastore_raft_term")), "term"),
                        width=8,
                    ),
                    single(
                        "Leader changes",
                        "How many times did replicas see a new leader in the dashboard's "
                        "time range?",
                        "short",
                        Query(
                            agg(
                                "sum",
                                (),
                                f"increase({_S('yardarm_datastore_raft_leader_changes_total')}"
                                "[$__range])",
                            ),
                            "changes",
                        ),
                        colours=thresholds((None, "green"), (3, "orange"), (10, "red")),
                        width=8,
                    ),
                    states(
                        "Role per replica",
                        "Which role does each replica hold: one leader, the rest followers? "
                        "(Pre-)candidates mean an election is running.",
                        Query(_role_code(), "{{instance}}"),
                        (
                            ("0", "follower", "blue"),
                            ("1", "pre-candidate", "orange"),
                            ("2", "candidate", "orange"),
                            ("3", "leader", "green"),
                        ),
                    ),
                    graph(
                        "Leader followed per replica",
                        "Which replica id does each replica follow (0: none known)? All "
                        "replicas should agree.",
                        "none",
                        [Query(_per_replica("yardarm_datastore_raft_leader"), "{{instance}}")],
                        steps=True,
                    ),
                    graph(
                        "Term per replica",
                        "Each replica's Raft term; a replica whose term runs ahead of the "
                        "others keeps calling elections (it cannot reach the leader).",
                        "none",
                        [Query(_per_replica("yardarm_datastore_raft_term"), "{{instance}}")],
                        steps=True,
                        width=8,
                    ),
                    graph(
                        "Leader changes per replica",
                        "When did each replica see a new leader? Changes per window; "
                        "repeated changes are flapping.",
                        "short",
                        [
                            Query(
                                sum_increase(
                                    _BY_REPLICA,
                                    _S("yardarm_datastore_raft_leader_changes_total"),
                                ),
                                "{{instance}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Apply lag",
                        "How many committed entries has each replica not applied yet? It "
                        "should stay near zero.",
                        "short",
                        [
                            Query(
                                f"{_per_replica('yardarm_datastore_raft_commit_index')} - "
                                f"{_per_replica('yardarm_datastore_raft_applied_index')}",
                                "{{instance}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Commit and applied index",
                        "How far does each replica's log get committed and applied? A "
                        "replica whose lines flatten while others climb has fallen behind.",
                        "none",
                        [
                            Query(
                                _per_replica("yardarm_datastore_raft_commit_index"),
                                "commit {{instance}}",
                            ),
                            Query(
                                _per_replica("yardarm_datastore_raft_applied_index"),
                                "applied {{instance}}",
                            ),
                        ],
                        width=24,
                    ),
                ],
            ),
            Row(
                "Write-ahead log",
                [
                    latency(
                        "Append latency",
                        "How long does writing one batch of entries and the hard state "
                        "take, before fsync?",
                        _S("yardarm_datastore_raft_append_seconds_bucket"),
                        _BY_REPLICA,
                        "{{instance}}",
                        width=8,
                    ),
                    latency(
                        "Fsync latency",
                        "How long does fsync of the log take? Every commit waits for it; "
                        "a slow disk shows here first.",
                        _S("yardarm_datastore_wal_fsync_seconds_bucket"),
                        _BY_REPLICA,
                        "{{instance}}",
                        width=8,
                    ),
                    latency(
                        "Entries per log write",
                        "How many entries does one log write carry? Larger batches under "
                        "load mean fsyncs are being amortised.",
                        _S("yardarm_datastore_wal_batch_size_bucket"),
                        _BY_REPLICA,
                        "{{instance}}",
                        unit="short",
                        width=8,
                    ),
                ],
            ),
            Row(
                "Snapshots",
                [
                    graph(
                        "Snapshots taken",
                        "When did each replica compact its log into a snapshot? "
                        "Snapshots per window.",
                        "short",
                        [
                            Query(
                                sum_increase(
                                    _BY_REPLICA, _S("yardarm_datastore_raft_snapshots_total")
                                ),
                                "{{instance}}",
                            )
                        ],
                    ),
                    graph(
                        "Snapshot size",
                        "How large is each replica's latest snapshot?",
                        "bytes",
                        [
                            Query(
                                _per_replica("yardarm_datastore_raft_snapshot_bytes"),
                                "{{instance}}",
                            )
                        ],
                        steps=True,
                    ),
                ],
            ),
            Row(
                "KV API",
                [
                    graph(
                        "Requests per route and method",
                        "Which KV operations are called, how often, summed over the replicas?",
                        "reqps",
                        [
                            Query(
                                sum_rate(
                                    ("http_route", "http_request_method"),
                                    _S("http_server_request_duration_seconds_count", USER_TRAFFIC),
                                ),
                                "{{http_request_method}} {{http_route}}",
                            )
                        ],
                        width=8,
                    ),
                    latency(
                        "KV latency",
                        "How long do KV requests take (a write waits for a quorum's "
                        "fsync)? Exemplars open the request's trace.",
                        _S("http_server_request_duration_seconds_bucket", USER_TRAFFIC),
                        ("http_request_method",),
                        "{{http_request_method}}",
                        width=8,
                    ),
                    graph(
                        "Writes by operation and outcome",
                        "How do the puts and deletes the replicas answer end (created, "
                        "updated, deleted, conflict, not_found, replayed, unavailable)?",
                        "ops",
                        [
                            Query(
                                sum_rate(("op", "outcome"), _S("yardarm_datastore_writes_total")),
                                "{{op}} {{outcome}}",
                            )
                        ],
                        stacked=True,
                        width=8,
                    ),
                    graph(
                        "Keys per replica",
                        "How many keys does each replica hold? Replicas should agree once "
                        "they have applied the same index.",
                        "short",
                        [Query(_per_replica("yardarm_datastore_keys"), "{{instance}}")],
                        width=24,
                        height=6,
                    ),
                ],
            ),
            Row("Logs", [error_logs(SERVICE)]),
        ],
        tags=(SERVICE,),
    )
