"""The dashboards, rules and `yardarm top` against the real thing: a local stack with its
own Prometheus (Debian's), under `yardarm load`, put through the faults each panel is
about, so that every panel's and every recording rule's query has data to show.

One module-scoped stack, driven as a user would: the CLI for `up`, `scale`, `load`,
`chaos` and `top`; the gateway's admin API for a canary split; the flag file for
consumer failures; NATS for a command no consumer understands. The services run with
short saga timeouts and a small snapshot threshold (settings through the supervisor's
environment) so that timeouts, re-sends and snapshots happen within the run.

Before the faults, the stack's rollout controller rolls out the release that fails half
its requests, and the judge rolls it back: the rollout panels show the controller's
events, verdicts, phase and weights, and its notifications to a webhook that refuses
every connection.

What is asserted: every expression returns series (no misspelt metric or label, no
panel empty after the events it shows), the traffic-driven ones have a non-zero value
(nothing exists only because it was initialised), the datastore-without-leader alert
fires while two of three replicas are paused, and `yardarm top --json` shows every
service working, from Prometheus and from direct scrapes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import pytest
from yardarm_kit.messaging import Envelope, publish

from tests.harness.local import BackgroundLoad, Stack, configured_stack
from tests.observability.binaries import require_binary
from yardarm.local import control
from yardarm.local.render import flags_file
from yardarm.model import default_flags
from yardarm.observability.dashboards import prometheus_queries
from yardarm.observability.rules import recording_rules
from yardarm.rollout.judge import JudgeConfig, judge
from yardarm.rollout.metrics_source import PrometheusSource, ScrapeHistory, Subject
from yardarm.rollout.window import TrackWindow

pytestmark = pytest.mark.e2e

ENVIRONMENT = "live-check"
CONSUMER_ERRORS = "fault.consumer-error-rate"  # fulfillment fails this share of deliveries


def _consumer_errors(variant: str) -> dict[str, Any]:
    # "high": fulfillment's demo release 0.3.0-errors pins it.
    variants = {"off": 0.0, "some": 0.3, "high": 0.5}
    return {"state": "ENABLED", "variants": variants, "defaultVariant": variant}


# The canary that fails half its requests must trip its breakers for the breaker panels
# to have data: over the default window of 100 calls (at a tenth of 15 requests/s) its
# failure rate sits right at the 50% threshold and may never reach it in the run; over
# 20 calls it does within seconds.
TOPOLOGY = f"""
environment: {ENVIRONMENT}
services:
  gateway:
    upstreams:
      orders:
        breaker: {{window_size: 20}}
        track_breaker: {{window_size: 20}}
  orders:
    replicas: 2
flags: {{"{CONSUMER_ERRORS}": {json.dumps(_consumer_errors("off"))}}}
"""
# Saga steps time out (and commands are re-sent) within seconds, snapshots come every
# 50 Raft entries, and a failing delivery is dead-lettered on its third try.
CHARGE_TIMEOUT_S = 4.0
SERVICE_ENV = {
    "YARDARM_ORDERS_CHARGE_TIMEOUT_S": str(CHARGE_TIMEOUT_S),
    "YARDARM_ORDERS_SHIPPING_TIMEOUT_S": str(CHARGE_TIMEOUT_S),
    "YARDARM_ORDERS_RESEND_AFTER_S": "1",
    "YARDARM_ORDERS_RESEND_MAX_S": "2",
    "YARDARM_DATASTORE_SNAPSHOT_ENTRIES": "50",
    "YARDARM_FULFILLMENT_MAX_DELIVER": "3",
    "YARDARM_FULFILLMENT_BACKOFF_S": "[0.2, 0.5]",
    # The rollout controller: short steps, and a webhook where nothing listens.
    "YARDARM_ROLLOUTS_MIN_REQUESTS": "20",
    "YARDARM_ROLLOUTS_MIN_LATENCY_POINTS": "4",
    "YARDARM_ROLLOUTS_WEBHOOK_URL": "http://127.0.0.1:1/hooks/rollouts",
    "YARDARM_ROLLOUTS_WEBHOOK_ATTEMPTS": "2",
}
ROLLOUT_BOUND_S = 150  # starting the tracks, a 10 s step and its extensions, stopping
SCRAPE_S = 1.0  # the stack Prometheus' default scrape interval
LOAD_S = 420  # longer than the whole module needs; killed at the end
# Dashboard variables, as a user with "All" selected would send them.
VARIABLES = {
    "$environment": ENVIRONMENT,
    "$service": ".*",
    "$version": ".*",
    "$track": ".*",
    "$__rate_interval": "30s",
    "$__interval": "5s",
    "$__range": "10m",
}
# Series every request or message moves: a query over them alone, without a filter on
# failures, must show a non-zero value under load.
TRAFFIC = (
    "http_server_request_duration_seconds",
    "yardarm_gateway_route_requests_total",
    "yardarm_gateway_upstream_requests_total",
    "yardarm_gateway_upstream_request_duration_seconds",
    "yardarm_consumer_messages_total",
    "yardarm_consumer_batch_duration_seconds",
    "yardarm_saga_steps_total",
    "yardarm_saga_step_duration_seconds",
    "yardarm_sagas_terminal_total",
    "yardarm_datastore_writes_total",
)
FAILURE_FILTER = re.compile(r"5\.\.|5xx|failed|dead_letter|CANCELLED|declined|error", re.I)


@dataclass
class LiveStack:
    stack: Stack
    prometheus: str
    no_leader_fired: bool
    rolled_back: dict[str, Any]


def _prometheus(stack: Stack) -> str:
    out = stack.cli("status").stdout
    found = re.search(r"prometheus\s+(http://127\.0\.0\.1:\d+)", out)
    assert found, f"`yardarm status` names no Prometheus:\n{out}"
    return found.group(1)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, f"{expr}\n{response.text}"
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _admin(stack: Stack) -> tuple[str, dict[str, str]]:
    token = (stack.home / "admin-token").read_text().strip()
    return f"http://127.0.0.1:{stack.base_port + 1}", {"Authorization": f"Bearer {token}"}


def _split(stack: Stack, weights: dict[str, int]) -> None:
    """Both orders routes move together, as a rollout moves them."""
    admin, auth = _admin(stack)
    for route in ("api-orders", "api-stock"):
        answer = httpx.put(
            f"{admin}/admin/routes/{route}/split",
            json={"weights": weights},
            headers=auth,
            timeout=10,
        )
        assert answer.status_code == 200, answer.text


def _set_consumer_errors(stack: Stack, variant: str) -> None:
    """Rewrite the running stack's flag file (the services watch its mtime)."""
    flags = default_flags() | {CONSUMER_ERRORS: _consumer_errors(variant)}
    path = flags_file(stack.home)
    previous = path.stat().st_mtime
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"flags": flags}, indent=2))
    os.replace(tmp, path)
    stamp = max(time.time(), previous + 1.0)
    os.utime(path, (stamp, stamp))


async def _publish_unknown_command(nats_url: str) -> None:
    """A command fulfillment cannot understand: dead-lettered on arrival."""
    nc = await nats.connect(nats_url)
    try:
        envelope = Envelope(
            type="payments.teleport", id="live-check:teleport", saga_id="live-check", data={}
        )
        await publish(nc.jetstream(), "cmd.payments.teleport", envelope, schema=2)
    finally:
        await nc.close()


def _malformed_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"NOT-HTTP\r\n\r\n")
        sock.recv(4096)


def _wait_alert(base: str, name: str, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        alerts = httpx.get(f"{base}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        if any(a["labels"].get("alertname") == name and a["state"] == "firing" for a in alerts):
            return True
        time.sleep(SCRAPE_S)
    return False


def _failed_rollout(stack: Stack) -> dict[str, Any]:
    """A rollout of the release that fails half its requests, through the stack's rollout
    controller, until the judge rolls it back."""
    stack.cli(
        *("rollout", "start", "orders", "--version", "0.3.0-errors", "--steps", "10,100"),
        *("--step-duration", "10s", "--analysis-interval", "2s"),
    )
    deadline = time.monotonic() + ROLLOUT_BOUND_S
    while time.monotonic() < deadline:
        rollout: dict[str, Any] = json.loads(
            stack.cli("rollout", "status", "orders", "--json").stdout
        )
        if rollout["phase"] not in ("progressing", "paused"):
            return rollout
        time.sleep(1.0)
    raise AssertionError("the rollout of 0.3.0-errors did not end")


def _wait_leader(base: str, bound_s: float) -> None:
    deadline = time.monotonic() + bound_s
    expr = 'max(yardarm_datastore_raft_role{role="leader"})'
    while time.monotonic() < deadline:
        result = query(base, expr)
        if result and float(result[0]["value"][1]) == 1.0:
            return
        time.sleep(SCRAPE_S)
    raise AssertionError("the datastore elected no leader after its quorum came back")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    require_binary("prometheus")
    stack = configured_stack(tmp_path_factory.mktemp("live-telemetry"), TOPOLOGY, 23000)
    stack.prometheus = True
    stack.env = SERVICE_ENV
    stack.up()
    stack.restock()  # every order of the run reaches fulfillment: its series never go quiet
    load = BackgroundLoad(stack, "--rate", "15", "--duration", f"{LOAD_S}s", "--timeout", "3s")
    try:
        base = _prometheus(stack)
        topology_ports = stack.base_port
        rolled_back = _failed_rollout(stack)
        assert rolled_back["phase"] == "failed", rolled_back["events"]
        # A canary of the release that fails half its requests, and a baseline of stable
        # beside it, each taking a tenth of the orders routes.
        stack.cli("scale", "orders", "1", "--track", "canary", "--version", "0.3.0-errors")
        stack.cli("scale", "orders", "1", "--track", "baseline", "--version", "0.1.0")
        _split(stack, {"stable": 80, "canary": 10, "baseline": 10})
        # An operator takes one stable replica out of rotation for a while (the outlier
        # detector may or may not eject the failing canary on its own within the run).
        admin, auth = _admin(stack)
        ejected = httpx.post(
            f"{admin}/admin/upstreams/orders/ejections",
            json={"endpoint": f"http://127.0.0.1:{stack.base_port + 21}", "duration_s": 20},
            headers=auth,
            timeout=10,
        )
        assert ejected.status_code in (200, 201), ejected.text
        # And the canary's only endpoint for a moment: its pool balances in panic mode.
        canary_port = json.loads((stack.home / "ports.json").read_text())["orders-canary-0"]
        ejected = httpx.post(
            f"{admin}/admin/upstreams/orders/ejections",
            json={"endpoint": f"http://127.0.0.1:{canary_port}", "duration_s": 10},
            headers=auth,
            timeout=10,
        )
        assert ejected.status_code in (200, 201), ejected.text
        # Consumers fail a share of deliveries for a while: redeliveries, failures.
        _set_consumer_errors(stack, "some")
        asyncio.run(_publish_unknown_command(f"nats://127.0.0.1:{topology_ports + 40}"))
        time.sleep(10)
        _set_consumer_errors(stack, "off")
        # Fulfillment stops answering for longer than a charge may take: re-sends, then
        # timeouts and compensations.
        stack.cli("chaos", "pause", "fulfillment-0")
        time.sleep(CHARGE_TIMEOUT_S * 3)
        stack.cli("chaos", "resume", "fulfillment-0")
        # What the gateway refuses before any upstream.
        _malformed_request(stack.base_port)
        admin_token = (stack.home / "admin-token").read_text().strip()
        refused = httpx.get(
            f"{stack.gateway}/api/stock/rope-10m",
            headers={"x-yardarm-track": "blue", "x-yardarm-admin-token": admin_token},
            timeout=10,
        )
        assert refused.status_code == 503, refused.text
        # Two of three datastore replicas stop: no quorum, no leader.
        stack.cli("chaos", "pause", "datastore-1")
        stack.cli("chaos", "pause", "datastore-2")
        fired = _wait_alert(base, "DatastoreNoLeader", bound_s=120)
        stack.cli("chaos", "resume", "datastore-1")
        stack.cli("chaos", "resume", "datastore-2")
        _wait_leader(base, bound_s=60)
        time.sleep(20)  # traffic flows again across every panel's window
        assert load.running(), "the load ended before the checks"
        yield LiveStack(stack, base, fired, rolled_back)
    finally:
        load.__exit__()
        stack.cli("down", check=False)


def _expand(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(item["value"][1]) for item in result]


def _traffic_driven(expr: str) -> bool:
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*[{\[])", expr))
    metrics = {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}
    return bool(metrics) and metrics <= set(TRAFFIC) and not FAILURE_FILTER.search(expr)


def test_every_dashboard_query_returns_data_from_the_live_stack(live: LiveStack) -> None:
    empty, flat = [], []
    queries = prometheus_queries()
    assert len(queries) > 30
    for uid, title, expr in queries:
        result = query(live.prometheus, _expand(expr))
        if not result:
            empty.append(f"{uid} / {title}: {expr}")
        elif _traffic_driven(expr) and not any(v > 0 for v in _values(result)):
            flat.append(f"{uid} / {title}: {expr} -> {_values(result)}")
    assert empty == [], "panels with no data:\n" + "\n".join(empty)
    assert flat == [], "traffic panels at zero under load:\n" + "\n".join(flat)


def test_every_recording_rule_has_series(live: LiveStack) -> None:
    missing = []
    records = recording_rules()
    assert records
    for record in records:
        result = query(live.prometheus, record)
        if not result or all(math.isnan(v) for v in _values(result)):
            missing.append(record)
    assert missing == [], f"recording rules without series: {missing}"


def test_the_rollout_panels_see_the_canary_and_its_baseline(live: LiveStack) -> None:
    weights = query(live.prometheus, 'yardarm_gateway_route_weight{route="api-orders"}')
    by_track = {w["metric"]["upstream_track"]: float(w["value"][1]) for w in weights}
    assert by_track == {"stable": 80.0, "canary": 10.0, "baseline": 10.0}
    served = query(
        live.prometheus,
        "sum by (upstream_track) (rate(yardarm_gateway_route_requests_total"
        '{route="api-orders"}[1m]))',
    )
    assert {s["metric"]["upstream_track"] for s in served} >= {"stable", "canary", "baseline"}


def test_the_rollout_controller_is_scraped_and_reports_the_rollout_it_rolled_back(
    live: LiveStack,
) -> None:
    up = query(live.prometheus, 'up{job="rollouts"}')
    assert [(u["metric"]["instance"], u["value"][1]) for u in up] == [("rollouts", "1")]
    events = query(
        live.prometheus, 'sum by (kind) (yardarm_rollout_events_total{rollout_service="orders"})'
    )
    counted = {e["metric"]["kind"]: float(e["value"][1]) for e in events}
    stored = [event["kind"] for event in live.rolled_back["events"]]
    assert counted == {kind: float(stored.count(kind)) for kind in set(stored)}
    analyses = query(
        live.prometheus,
        'sum by (outcome, rule) (yardarm_rollout_analyses_total{rollout_service="orders"})',
    )
    judged = [
        (event["data"]["verdict"]["outcome"], event["data"]["verdict"]["rule"])
        for event in live.rolled_back["events"]
        if event["kind"] == "verdict"
    ]
    assert ("fail", live.rolled_back["verdicts"][-1]["rule"]) in judged
    assert {
        (a["metric"]["outcome"], a["metric"]["rule"]): float(a["value"][1]) for a in analyses
    } == {verdict: float(judged.count(verdict)) for verdict in set(judged)}
    phase = query(live.prometheus, 'yardarm_rollout_phase{rollout_service="orders"} == 1')
    assert [p["metric"]["phase"] for p in phase] == ["failed"]
    weights = query(live.prometheus, 'yardarm_rollout_weight{rollout_service="orders"}')
    assert {w["metric"]["rollout_track"]: w["value"][1] for w in weights} == {"stable": "100"}
    # Nothing listens where the webhook points: both notifications (started, failed)
    # failed, after a retry each, and the rollout went on regardless.
    failed = query(
        live.prometheus,
        'yardarm_rollout_webhook_deliveries_total{rollout_service="orders", outcome="failed"}',
    )
    assert [f["value"][1] for f in failed] == ["2"]


def test_the_datastore_without_a_leader_alert_fired_when_the_quorum_went(
    live: LiveStack,
) -> None:
    assert live.no_leader_fired


def _top(live: LiveStack, *extra: str, window: str = "5s") -> dict[str, Any]:
    out = live.stack.cli("top", "--json", "--window", window, *extra).stdout
    view: dict[str, Any] = json.loads(out)
    return view


def _working(view: dict[str, Any]) -> set[str]:
    return {
        row["service"]
        for row in view["rows"]
        if row["requests_per_s"] > 0 or row["messages_per_s"] > 0
    }


def test_top_shows_every_service_working_from_prometheus(live: LiveStack) -> None:
    view = _top(live, window="15s")  # a busy machine may scrape late: several samples
    assert view["source"] == "prometheus"
    assert _working(view) == {"gateway", "orders", "fulfillment", "datastore"}
    tracks = {(r["service"], r["track"]) for r in view["rows"]}
    assert {("orders", "canary"), ("orders", "baseline")} <= tracks
    # Over a minute the canary (a tenth of the orders routes, so a few requests a
    # second, less while the gateway ejects it) has surely failed some: half fail.
    minute = _top(live, window="60s")
    canary = [r for r in minute["rows"] if (r["service"], r["track"]) == ("orders", "canary")]
    assert canary and canary[0]["error_ratio"] > 0


def test_top_shows_every_service_working_from_direct_scrapes(live: LiveStack) -> None:
    view = _top(live, "--scrape")
    assert view["source"] == "scrape"
    assert _working(view) == {"gateway", "orders", "fulfillment", "datastore"}
    rows = {(r["service"], r["version"], r["track"]): r for r in view["rows"]}
    assert rows[("orders", "0.3.0-errors", "canary")]["instances"] == 1
    assert rows[("orders", "0.1.0", "stable")]["instances"] == 2


ROLLING = Subject(upstream="orders", routes=("api-orders", "api-stock"))


def _check_rollout_windows(windows: dict[str, TrackWindow]) -> None:
    canary, baseline = windows["canary"], windows["baseline"]
    for track in (canary, baseline):
        assert track.requests > 0, track
        assert track.weight == 10.0, track
        assert 0 < track.share < 50, track
        assert track.latency_points and all(0 < p < 30 for p in track.latency_points), track
    assert canary.errors > 0  # the release that fails half its requests


def test_the_rollout_metrics_source_reads_canary_and_baseline_from_prometheus(
    live: LiveStack,
) -> None:
    source = PrometheusSource(live.prometheus)
    try:
        end = time.time()
        windows = source.windows(ROLLING, end - 60, end, sub_window_s=5)
        _check_rollout_windows(windows)
        # The judge fails the release that fails half its requests (or that the gateway
        # ejected for it) on what the source read.
        verdict = judge(windows["canary"], windows["baseline"], JudgeConfig.for_service("orders"))
        assert verdict.outcome == "fail", verdict.as_dict()
    finally:
        source.close()


def test_the_rollout_metrics_source_reads_them_from_direct_scrapes(live: LiveStack) -> None:
    urls = control.metrics_urls(live.stack.home)
    history = ScrapeHistory(ROLLING, urls)
    try:
        start = time.time()
        for _ in range(10):
            history.scrape()
            time.sleep(SCRAPE_S)
        _check_rollout_windows(history.windows(start, time.time()))
    finally:
        history.close()
