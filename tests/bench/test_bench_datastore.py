"""The datastore benchmark: its harness against a real datastore process, etcd and a 5xx
server, its fsync probe, and the rows it writes."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bench.datastore import (
    GOAL_CONCURRENCY,
    REPLICAS_ENV,
    FsyncResult,
    Outcome,
    Phase,
    YardarmCluster,
    YardarmKv,
    bench_settings,
    build_rows,
    datastore_env,
    measure_fsync,
    yardarm_cluster,
)
from bench.etcd import ETCD_PATH, EtcdGateway, etcd_cluster, find_etcd
from bench.kvload import (
    Load,
    LoadResult,
    Measured,
    bench_keys,
    bench_value,
    check_one_cluster,
    fill,
    open_session,
    percentile,
    run_load,
)
from bench.loopback import LOOPBACK, free_port
from bench.options import BenchError, Options

KEYS = bench_keys(20)
VALUE = bench_value()


@pytest.fixture(scope="module")
def datastore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[YardarmCluster]:
    """One real single-node datastore process, as the benchmark starts it."""
    root = tmp_path_factory.mktemp("datastore")
    with yardarm_cluster(root, 1, root) as cluster:
        yield cluster


def assert_consistent(result: LoadResult) -> None:
    assert result.requests == result.ok + result.error_count
    assert len(result.latencies_ms) == result.ok
    assert list(result.latencies_ms) == sorted(result.latencies_ms)
    assert result.rps == pytest.approx(result.ok / result.elapsed_s)
    if result.ok:
        assert result.p50_ms is not None and result.p99_ms is not None
        assert 0 < result.latencies_ms[0] <= result.p50_ms <= result.p99_ms
        assert result.p99_ms <= result.latencies_ms[-1]


async def test_writes_and_reads_are_counted_and_timed(datastore: YardarmCluster) -> None:
    dialect = YardarmKv()
    async with open_session(4) as session:
        writes = await run_load(
            dialect, datastore.urls, Load("write", 4, 1.0, 100_000), session, KEYS, VALUE
        )
        filled = await fill(dialect, datastore.urls, session, KEYS, VALUE)
        reads = await run_load(
            dialect, datastore.urls, Load("read", 4, 1.0, 100_000), session, KEYS, VALUE
        )
        stored = await dialect.value(session, datastore.urls[0], KEYS[-1])
    for result in (writes, reads):
        assert result.ok > 0 and result.errors == {}
        assert result.elapsed_s >= 1.0 and not result.capped
        assert_consistent(result)
    assert filled.ok == len(KEYS) and filled.errors == {}
    assert stored == VALUE


async def test_the_request_cap_ends_a_phase_before_its_deadline(
    datastore: YardarmCluster,
) -> None:
    async with open_session(2) as session:
        result = await run_load(
            YardarmKv(), datastore.urls, Load("write", 2, 60.0, 10), session, KEYS, VALUE
        )
    assert result.requests == 10 and result.ok == 10
    assert result.capped
    assert result.elapsed_s < 30.0
    assert_consistent(result)


@pytest.fixture
async def flaky_server() -> AsyncIterator[str]:
    """Answers PUT /kv/{key} with 503 on every other request, 200 otherwise."""
    calls = 0

    async def put(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({}, status=503 if calls % 2 else 200)

    app = web.Application()
    app.router.add_put("/kv/{key}", put)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        await runner.cleanup()


async def test_5xx_answers_are_errors_not_latencies(flaky_server: str) -> None:
    async with open_session(1) as session:
        result = await run_load(
            YardarmKv(), [flaky_server], Load("write", 1, 1.0, 40), session, KEYS, VALUE
        )
    assert result.requests == 40
    assert result.errors == {"HTTP 503": 20}
    assert result.ok == 20
    assert_consistent(result)


async def test_an_unreachable_endpoint_counts_failures_by_kind() -> None:
    nowhere = f"http://{LOOPBACK}:{free_port()}"
    async with open_session(2) as session:
        result = await run_load(
            YardarmKv(), [nowhere], Load("read", 2, 5.0, 20), session, KEYS, VALUE
        )
    assert result.ok == 0 and result.rps == 0.0 and result.p50_ms is None
    assert result.errors == {"ClientConnectorError": 20}


async def test_independent_nodes_are_refused_as_a_cluster(
    datastore: YardarmCluster, tmp_path: Path
) -> None:
    await check_one_cluster(YardarmKv(), datastore.urls, timeout_s=10)
    with yardarm_cluster(tmp_path, 1, tmp_path) as other:
        # Both nodes hold a probe value already: only comparing it exposes them.
        await check_one_cluster(YardarmKv(), other.urls, timeout_s=10)
        with pytest.raises(BenchError, match="not one linearizable cluster"):
            await check_one_cluster(YardarmKv(), [*datastore.urls, *other.urls], timeout_s=10)


def test_each_replica_is_told_its_peers_and_not_itself(tmp_path: Path) -> None:
    env = datastore_env(1, [8001, 8002, 8003], [9001, 9002, 9003], tmp_path)
    assert env["YARDARM_DATASTORE_REPLICA_ID"] == "2"
    assert env["YARDARM_DATASTORE_PORT"] == "8002"
    assert env["YARDARM_DATASTORE_RAFT_PORT"] == "9002"
    assert env["YARDARM_DATASTORE_DATA_DIR"] == str(tmp_path / "datastore-1")
    assert json.loads(env["YARDARM_DATASTORE_PEERS"]) == {
        "1": {"raft": f"{LOOPBACK}:9001", "http": f"http://{LOOPBACK}:8001"},
        "3": {"raft": f"{LOOPBACK}:9003", "http": f"http://{LOOPBACK}:8003"},
    }


def test_fsync_probe_times_the_directory_and_cleans_up(tmp_path: Path) -> None:
    timed = measure_fsync(tmp_path, seconds=0.3)
    assert timed.ops > 0 and 0 < timed.p50_ms <= timed.p99_ms
    assert measure_fsync(tmp_path, seconds=30.0, max_ops=5).ops == 5
    assert list(tmp_path.iterdir()) == []


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99)) == (50.0, 99.0)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def _measured(rps: float, p50: float, p99: float) -> Measured:
    latencies = tuple(sorted([p50] * 98 + [p99] * 2))
    result = LoadResult(100, {}, 100 / rps, latencies, 10.0, False)
    return Measured([result], [50.0])


def test_rows_read_higher_is_better_and_judge_the_goal() -> None:
    phases: dict[Phase, dict[str, Measured]] = {
        ("write", GOAL_CONCURRENCY): {
            "yardarm": _measured(60.0, 10.0, 300.0),
            "etcd": _measured(100.0, 5.0, 100.0),
        }
    }
    versions = {"etcd": "3.4.23", "aiohttp": "3.14", "event_loop": "uvloop"}
    outcome = Outcome(3, "spread", versions, FsyncResult(10, 0.5, 2.0), "ext4", phases, {})
    rows = {row["metric"]: row for row in build_rows(outcome, Options(), "2026-01-01")}
    throughput = rows["write_throughput_rps"]
    assert throughput["ratio"] == 0.6 and throughput["params"]["goal_met"] is True
    assert rows["write_p50_latency_ms (ratio inverted: peer/yardarm)"]["ratio"] == 0.5
    p99 = rows["write_p99_latency_ms (ratio inverted: peer/yardarm)"]
    assert p99["ratio"] == pytest.approx(1 / 3, abs=1e-3)
    assert p99["params"]["goal_met"] is False and "NOT met" in str(p99["params"]["setup"])
    fsync_rows = [row for metric, row in rows.items() if metric.startswith("disk_fsync")]
    assert len(fsync_rows) == 2 and all(row["peer"] is None for row in fsync_rows)
    assert all(row["ratio"] is None for row in fsync_rows)


def test_settings_refuse_a_bad_replica_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPLICAS_ENV, "three")
    with pytest.raises(BenchError, match=REPLICAS_ENV):
        bench_settings()
    monkeypatch.setenv(REPLICAS_ENV, "1")
    assert bench_settings() == (1, "spread")


def test_a_missing_etcd_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("bench.etcd.ETCD_PATH", "/nonexistent/etcd")
    with pytest.raises(BenchError, match="apt-get install -y etcd-server"):
        find_etcd()


ETCD = shutil.which("etcd") or (ETCD_PATH if os.access(ETCD_PATH, os.X_OK) else None)


async def test_etcd_cluster_serves_the_same_harness(tmp_path: Path) -> None:
    if ETCD is None:
        why = "etcd is not installed (apt-get install -y etcd-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run installs it")
        pytest.skip(why)
    dialect = EtcdGateway()
    with etcd_cluster(ETCD, tmp_path / "etcd", 3, tmp_path) as cluster:
        await check_one_cluster(dialect, cluster.client_urls, timeout_s=30)
        assert cluster.leader_url() in cluster.client_urls
        async with open_session(4) as session:
            writes = await run_load(
                dialect, cluster.client_urls, Load("write", 4, 1.0, 100_000), session, KEYS, VALUE
            )
            await fill(dialect, cluster.client_urls, session, KEYS, VALUE)
            reads = await run_load(
                dialect, cluster.client_urls, Load("read", 4, 1.0, 100_000), session, KEYS, VALUE
            )
            stored = await dialect.value(session, cluster.client_urls[2], KEYS[0])
        members = cluster.members
    assert all(not member.alive() for member in members)
    for result in (writes, reads):
        assert result.ok > 0 and result.errors == {}
        assert_consistent(result)
    assert stored == VALUE
