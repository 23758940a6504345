"""`yardarm load`: schedule, bounds, accounting, mix and histogram, against real test servers.

The servers are aiohttp apps (or a raw TCP server) on 127.0.0.1 in the test itself, shaped
like the gateway's public API; no stack is started.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from typer.testing import CliRunner

from yardarm.cli import app
from yardarm.load import (
    KINDS,
    LatencyHistogram,
    LoadConfig,
    LoadOptionError,
    LoadProgress,
    LoadSetupError,
    Mix,
    NoTargetError,
    RequestPlanner,
    build_config,
    parse_duration,
    parse_mix,
    run_load,
)
from yardarm.load.mix import DECLINED_CARD, GOOD_CARD

SKUS = ("rope-10m", "compass", "sextant", "anchor-01")
STOCK_ONLY = Mix(orders=0, reads=0, stock=1)


class FakeStack:
    """The gateway's public API, recording what it was sent.

    Everything but the setup `GET /api/stock` is "load": it is delayed by `delay_s`,
    counted, and its concurrency tracked. `statuses` cycles the answers to stock reads.
    """

    def __init__(
        self,
        skus: tuple[str, ...] = SKUS,
        delay_s: float = 0.0,
        statuses: tuple[int, ...] = (200,),
    ) -> None:
        self.skus = skus
        self.delay_s = delay_s
        self.statuses = statuses
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []
        self.orders: dict[str, dict[str, Any]] = {}
        self.keys: list[str] = []
        self.order_reads: list[str] = []
        self.stock_reads = 0

    def app(self) -> web.Application:
        application = web.Application(middlewares=[self._track])
        application.router.add_get("/api/stock", self._stock)
        application.router.add_get("/api/stock/{sku}", self._sku)
        application.router.add_post("/api/orders", self._place)
        application.router.add_get("/api/orders/{order_id}", self._read)
        return application

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/api/stock":
            return await handler(request)
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def _stock(self, request: web.Request) -> web.Response:
        return web.json_response({"items": [{"sku": sku, "available": 9} for sku in self.skus]})

    async def _sku(self, request: web.Request) -> web.Response:
        status = self.statuses[self.stock_reads % len(self.statuses)]
        self.stock_reads += 1
        return web.json_response({"sku": request.match_info["sku"]}, status=status)

    async def _place(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return web.json_response({"title": "Idempotency-Key required"}, status=400)
        order_id = str(uuid.uuid4())
        self.keys.append(key)
        self.orders[order_id] = await request.json()
        return web.json_response(
            {"id": order_id, "status": "PENDING"},
            status=202,
            headers={"Location": f"/orders/{order_id}"},
        )

    async def _read(self, request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        self.order_reads.append(order_id)
        if order_id not in self.orders:
            return web.json_response({"title": "Order not found"}, status=404)
        return web.json_response({"id": order_id, "status": "CONFIRMED"})


StartStack = Callable[[FakeStack], Awaitable[str]]


@pytest.fixture
async def start_stack() -> AsyncIterator[StartStack]:
    """Serve FakeStacks on loopback in the test's loop; yields their base URLs."""
    runners: list[web.AppRunner] = []

    async def start(stack: FakeStack) -> str:
        runner = web.AppRunner(stack.app(), access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def threaded_stack() -> Iterator[tuple[FakeStack, str]]:
    """A FakeStack in its own thread and loop, for the CLI (which runs its own loop)."""
    stack = FakeStack()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    address: list[str] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(stack.app(), access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        host, port = runner.addresses[0][:2]
        address.append(f"http://{host}:{port}")
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "test server did not start"
    yield stack, address[0]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def config(url: str, **fields: Any) -> LoadConfig:
    return LoadConfig.model_validate({"url": url, **fields})


# open loop


async def test_open_loop_sends_on_schedule_not_as_fast_as_it_can(start_stack: StartStack) -> None:
    stack = FakeStack()
    url = await start_stack(stack)
    summary = await run_load(config(url, rate=100, duration_s=1.0))
    assert summary.mode == "open"
    assert summary.stopped_by == "duration"
    assert summary.requests + summary.dropped == 100  # one slot every 10 ms for 1 s
    assert 80 <= summary.requests <= 100
    # Spread over the second, not sent in a burst: each half got about half.
    start = stack.arrivals[0]
    first_half = sum(1 for t in stack.arrivals if t - start < 0.5)
    assert 25 <= first_half <= 75
    assert summary.send_duration_s >= 0.95
    assert 50 <= summary.achieved_rate <= 150


async def test_open_loop_latency_counts_from_the_schedule_and_drops_over_the_cap(
    start_stack: StartStack,
) -> None:
    # One connection, 100 ms per answer: 10/s served while 50/s are due, so requests
    # queue behind the connection and, once 5 are waiting or on the wire, slots drop.
    stack = FakeStack(delay_s=0.1)
    url = await start_stack(stack)
    seen: list[LoadProgress] = []
    summary = await run_load(
        config(
            url,
            rate=50,
            connections=1,
            max_in_flight=5,
            duration_s=1.0,
            mix=STOCK_ONLY,
            progress_interval_s=0.1,
        ),
        seen.append,
    )
    assert stack.max_in_flight == 1
    assert summary.requests + summary.dropped == 50
    assert summary.dropped >= 20
    # Dropped as the cap is hit, not only when sending stops.
    assert any(progress.dropped > 0 for progress in seen if progress.elapsed_s < 0.8)
    assert summary.requests == stack.stock_reads
    # The server answers in 100 ms; the wait for the connection is part of the latency.
    latency = summary.latency_ms
    assert latency.p50 is not None and latency.max is not None
    assert latency.p50 >= 250
    assert latency.max >= 350
    assert summary.to_dict()["max_in_flight"] == 5


async def test_open_loop_stops_at_max_requests(start_stack: StartStack) -> None:
    stack = FakeStack()
    url = await start_stack(stack)
    started = time.monotonic()
    summary = await run_load(config(url, rate=200, max_requests=20, duration_s=30))
    assert summary.stopped_by == "max_requests"
    assert summary.requests + summary.dropped == 20
    assert len(stack.arrivals) == summary.requests
    assert time.monotonic() - started < 5  # 20 slots at 200/s is 0.1 s, not 30 s


# closed loop


async def test_closed_loop_keeps_at_most_concurrency_requests_in_flight(
    start_stack: StartStack,
) -> None:
    stack = FakeStack(delay_s=0.02)
    url = await start_stack(stack)
    summary = await run_load(config(url, concurrency=3, max_requests=45, duration_s=30))
    assert stack.max_in_flight == 3
    assert summary.workers == 3
    assert summary.stopped_by == "max_requests"
    assert summary.requests == 45 == len(stack.arrivals)
    assert summary.dropped == 0


async def test_closed_loop_stops_at_the_duration(start_stack: StartStack) -> None:
    url = await start_stack(FakeStack(delay_s=0.01))
    started = time.monotonic()
    summary = await run_load(config(url, concurrency=4, duration_s=0.5))
    elapsed = time.monotonic() - started
    assert summary.stopped_by == "duration"
    assert summary.requests > 0
    assert 0.5 <= summary.send_duration_s < 1.5
    assert elapsed < 3.0


async def test_stop_event_ends_a_long_run_early(start_stack: StartStack) -> None:
    url = await start_stack(FakeStack())
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    started = time.monotonic()
    summary = await run_load(config(url, rate=50, duration_s=30), stop=stop)
    assert summary.stopped_by == "interrupted"
    assert time.monotonic() - started < 3.0
    assert summary.requests > 0


async def test_progress_is_reported_while_running_and_at_the_end(
    start_stack: StartStack,
) -> None:
    url = await start_stack(FakeStack(delay_s=0.005))
    seen: list[LoadProgress] = []
    summary = await run_load(
        config(url, concurrency=2, duration_s=0.6, progress_interval_s=0.1), seen.append
    )
    assert len(seen) >= 3
    assert [p.sent for p in seen] == sorted(p.sent for p in seen)
    assert seen[-1].finished == summary.requests
    assert seen[-1].p99_ms is not None and seen[-1].rate > 0


# accounting


async def test_statuses_are_counted_by_class_and_code(start_stack: StartStack) -> None:
    stack = FakeStack(statuses=(200, 404, 500, 503))
    url = await start_stack(stack)
    summary = await run_load(config(url, concurrency=1, max_requests=40, mix=STOCK_ONLY))
    assert (summary.ok, summary.client_errors, summary.server_errors) == (10, 10, 20)
    assert summary.transport_errors == 0
    assert summary.success_rate == 0.25
    assert summary.status_codes == {200: 10, 404: 10, 500: 10, 503: 10}
    document = summary.to_dict()
    assert document["status_codes"] == {"200": 10, "404": 10, "500": 10, "503": 10}
    assert document["kinds"]["stock"]["requests"] == 40
    assert document["kinds"]["stock"]["server_errors"] == 20
    assert document["kinds"]["orders"]["requests"] == 0


async def test_a_server_that_closes_the_connection_is_a_transport_error_not_retried() -> None:
    load_requests = 0
    catalog = json.dumps({"items": [{"sku": "rope-10m"}]}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal load_requests
        try:
            while True:  # answer the catalog with keep-alive; hang up on anything else
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path != b"/api/stock":
                    load_requests += 1
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(catalog), catalog)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        summary = await run_load(
            config(f"http://127.0.0.1:{port}", concurrency=1, max_requests=10, mix=STOCK_ONLY)
        )
    finally:
        server.close()
    assert summary.transport_errors == 10
    assert summary.errors == {"disconnected": 10}
    assert summary.ok == 0 and summary.status_codes == {}
    # The first request reused the catalog's keep-alive connection; it was not resent.
    assert load_requests == 10


async def test_timeouts_are_transport_errors(start_stack: StartStack) -> None:
    url = await start_stack(FakeStack(delay_s=0.5))
    summary = await run_load(
        config(url, concurrency=2, max_requests=4, timeout_s=0.1, mix=STOCK_ONLY)
    )
    assert summary.errors == {"timeout": 4}
    assert summary.transport_errors == 4
    assert summary.success_rate == 0.0


async def test_setup_fails_clearly_when_the_target_is_down_or_has_no_skus(
    start_stack: StartStack,
) -> None:
    with pytest.raises(LoadSetupError, match="could not reach"):
        await run_load(config(f"http://127.0.0.1:{_unused_port()}", max_requests=1))
    url = await start_stack(FakeStack(skus=()))
    with pytest.raises(LoadSetupError, match="no SKUs"):
        await run_load(config(url, max_requests=1))


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# the mix


async def test_the_mix_places_valid_orders_and_reads_back_only_this_runs_orders(
    start_stack: StartStack,
) -> None:
    stack = FakeStack()
    url = await start_stack(stack)
    mix = Mix(orders=30, reads=60, stock=10)
    summary = await run_load(config(url, concurrency=2, max_requests=200, mix=mix, seed=7))
    assert summary.requests == 200
    assert summary.client_errors == 0  # no read of an unknown order, no missing key
    assert set(stack.order_reads) <= set(stack.orders)
    assert len(set(stack.keys)) == len(stack.keys) == len(stack.orders)
    assert summary.kinds["orders"].requests == len(stack.orders)
    assert summary.kinds["reads"].requests == len(stack.order_reads) > 0
    assert summary.kinds["stock"].requests == stack.stock_reads
    assert summary.kinds["reads"].p99_ms is not None
    for body in stack.orders.values():
        assert set(body) == {"customer_id", "items", "payment"}
        assert not body["customer_id"].startswith("noship-")
        skus = [item["sku"] for item in body["items"]]
        assert 1 <= len(skus) <= 3 and len(set(skus)) == len(skus)
        assert set(skus) <= set(SKUS)
        assert all(item["quantity"] in (1, 2) for item in body["items"])
        assert body["payment"]["card"] in (GOOD_CARD, DECLINED_CARD)


def test_reads_fall_back_to_stock_until_an_order_is_known() -> None:
    planner = RequestPlanner(Mix(orders=0, reads=1, stock=0), list(SKUS), random.Random(1))
    first = planner.next_request()
    assert first.kind == "stock" and first.path.startswith("/api/stock/")
    planner.remember_order("0b6e1d2c-4c1e-4a39-9d0e-0c2b8a9d7f11")
    read = planner.next_request()
    assert read.kind == "reads"
    assert read.path == "/api/orders/0b6e1d2c-4c1e-4a39-9d0e-0c2b8a9d7f11"


def test_a_small_share_of_orders_uses_the_declined_card() -> None:
    planner = RequestPlanner(Mix(orders=1, reads=0, stock=0), list(SKUS), random.Random(3))
    cards = [planner.next_request().body["payment"]["card"] for _ in range(4000)]  # type: ignore[index]
    declined = cards.count(DECLINED_CARD) / len(cards)
    assert 0.03 <= declined <= 0.07
    assert set(cards) == {GOOD_CARD, DECLINED_CARD}


def test_a_seed_repeats_the_plan_but_never_the_idempotency_keys() -> None:
    def plan(seed: int) -> list[tuple[str, str, Any, str | None]]:
        planner = RequestPlanner(Mix(), list(SKUS), random.Random(seed))
        requests: list[tuple[str, str, Any, str | None]] = []
        for index in range(300):
            planned = planner.next_request()
            requests.append(
                (planned.kind, planned.path, planned.body, planned.headers.get("Idempotency-Key"))
            )
            if planned.kind == "orders":
                planner.remember_order(f"order-{index}")
        return requests

    first, second = plan(5), plan(5)
    assert [r[:3] for r in first] == [r[:3] for r in second]
    keys = [r[3] for r in first + second if r[3] is not None]
    assert len(keys) == len(set(keys)) > 0
    assert [r[:3] for r in plan(6)] != [r[:3] for r in first]


def test_mix_weights_decide_the_shares() -> None:
    mix = parse_mix("orders=20,reads=70,stock=10")
    rng = random.Random(11)
    drawn = [mix.choose(rng) for _ in range(10_000)]
    assert 0.17 <= drawn.count("orders") / len(drawn) <= 0.23
    assert 0.07 <= drawn.count("stock") / len(drawn) <= 0.13


@pytest.mark.parametrize(
    ("text", "weights"),
    [
        ("orders=20,reads=70,stock=10", (20, 70, 10)),
        ("orders=1", (1, 0, 0)),
        (" stock = 3 , reads=1 ", (0, 1, 3)),
    ],
)
def test_mix_parsing(text: str, weights: tuple[int, int, int]) -> None:
    mix = parse_mix(text)
    assert (mix.orders, mix.reads, mix.stock) == weights


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("orders=20,reads=x", "whole number"),
        ("orders=-1", "whole number"),
        ("orders=1.5", "whole number"),
        ("writes=1", "unknown kind 'writes'"),
        ("orders=0,reads=0", "sum to 0"),
        ("orders", "not name=weight"),
        ("=3", "not name=weight"),
        ("orders=1,orders=2", "twice"),
        ("orders=1,,reads=2", "empty entry"),
        ("", "empty entry"),
    ],
)
def test_mix_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


# options


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("500ms", 0.5), ("2m", 120), ("1m30s", 90), ("1h", 3600), ("1.5", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30x", "", "s", "-5s", "5 s", "1m30", "inf"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def _no_stack() -> str | None:
    return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": -5.0}, "--rate: must be greater than 0"),
        ({"rate": 0.0}, "--rate: must be greater than 0"),
        ({"concurrency": 0}, "--concurrency: must be greater than or equal to 1"),
        ({"rate": 10.0, "concurrency": 2}, "either --rate .* or --concurrency"),
        ({"connections": 4}, "--connections and --max-in-flight apply to the open loop"),
        ({"rate": 5.0, "connections": 9, "max_in_flight": 3}, "cannot exceed --max-in-flight"),
        ({"duration": "30x"}, "--duration: '30x' is not a duration"),
        ({"duration": "0s"}, "--duration: must be greater than 0"),
        ({"timeout": "soon"}, "--timeout: 'soon' is not a duration"),
        ({"max_requests": 0}, "--max-requests: must be greater than or equal to 1"),
        ({"mix": "orders=1,bogus=2"}, "--mix: unknown kind 'bogus'"),
        ({"mix": "orders=0"}, "--mix: the mix weights sum to 0"),
        ({"url": "ftp://127.0.0.1"}, "--url: 'ftp://127.0.0.1' is not an http"),
        ({"url": "http://rate.mix.example"}, "--url: 'rate.mix.example' is not a loopback"),
    ],
)
def test_options_are_validated_before_looking_for_a_stack(
    options: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"url": None, **options}
    with pytest.raises(LoadOptionError, match=message) as caught:
        build_config(default_url=_no_stack, **arguments)
    assert not isinstance(caught.value, NoTargetError)


def test_the_running_stack_is_the_default_target() -> None:
    built = build_config(url=None, default_url=lambda: "http://127.0.0.1:8080", rate=5.0)
    assert built.base_url == "http://127.0.0.1:8080"
    with pytest.raises(NoTargetError, match="no local stack is running"):
        build_config(url=None, default_url=_no_stack)


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.5:8080", "http://example.com", "http://127.0.0.1.nip.io:8080"],
)
def test_non_loopback_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(LoadOptionError, match=r"not a loopback address.*--allow-remote"):
        build_config(url=url, default_url=_no_stack)
    assert LoadConfig(url=url, allow_remote=True).base_url == url


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/", "http://localhost:9080", "http://[::1]:8080", "http://127.9.9.9"],
)
def test_loopback_targets_are_accepted(url: str) -> None:
    assert LoadConfig(url=url).base_url == url.rstrip("/")


def test_defaults_are_a_closed_loop_of_8_bounded_in_time_and_count() -> None:
    built = LoadConfig(url="http://127.0.0.1:8080")
    assert (built.mode, built.workers) == ("closed", 8)
    assert (built.duration_s, built.max_requests, built.timeout_s) == (30.0, 1_000_000, 5.0)
    opened = LoadConfig(url="http://127.0.0.1:8080", rate=10)
    assert (opened.mode, opened.workers, opened.in_flight_cap) == ("open", 64, 1000)
    assert LoadConfig(url="http://127.0.0.1:8080", rate=10, max_in_flight=5).workers == 5


# the histogram


def test_histogram_percentiles_are_within_one_percent() -> None:
    rng = random.Random(42)
    samples = [rng.lognormvariate(math.log(0.005), 1.2) for _ in range(100_000)]
    samples += [0.000_000_5, 3600.0]  # below the smallest bucket, and an hour
    histogram = LatencyHistogram()
    for sample in samples:
        histogram.record(sample)
    ordered = sorted(samples)
    for q in (0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        reported = histogram.percentile(q)
        assert reported is not None
        assert abs(reported - exact) / exact <= 0.01, q
    assert histogram.percentile(1.0) == histogram.max_s == 3600.0
    assert histogram.min_s == 0.000_000_5
    assert histogram.buckets < 1200  # bounded by the range, not by 100,002 samples
    assert LatencyHistogram().percentile(0.99) is None


def test_histogram_on_a_known_small_set() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.record(ms / 1000)
    assert histogram.percentile(0.5) == pytest.approx(0.050, rel=0.01)
    assert histogram.percentile(0.99) == pytest.approx(0.099, rel=0.01)
    assert histogram.mean() == pytest.approx(0.0505)


# the command


JSON_KEYS = {
    "version",
    "target",
    "mode",
    "target_rate",
    "workers",
    "max_in_flight",
    "mix",
    "seed",
    "stopped_by",
    "duration_s",
    "send_duration_s",
    "requests",
    "dropped",
    "achieved_rate",
    "throughput",
    "success_rate",
    "ok",
    "client_errors",
    "server_errors",
    "transport_errors",
    "latency_ms",
    "status_codes",
    "kinds",
    "errors",
}


def test_cli_json_prints_one_documented_document(
    threaded_stack: tuple[FakeStack, str], tmp_path: Path
) -> None:
    stack, url = threaded_stack
    result = CliRunner().invoke(
        app,
        [
            *("load", "--url", url, "--max-requests", "60", "--concurrency", "3", "--json"),
            *("--seed", "1", "--home", str(tmp_path)),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # nothing but the document on stdout
    assert set(document) == JSON_KEYS
    assert document["version"] == 1
    assert (document["mode"], document["workers"], document["target_rate"]) == ("closed", 3, None)
    assert document["requests"] == 60 == len(stack.arrivals)
    assert document["stopped_by"] == "max_requests"
    assert set(document["latency_ms"]) == {"min", "mean", "p50", "p90", "p95", "p99", "max"}
    assert set(document["kinds"]) == set(KINDS)
    for kind in document["kinds"].values():
        assert set(kind) == {
            "requests",
            "ok",
            "client_errors",
            "server_errors",
            "transport_errors",
            "p50_ms",
            "p99_ms",
        }
    assert sum(document["status_codes"].values()) == 60
    assert document["mix"] == {"orders": 20, "reads": 70, "stock": 10}


def test_cli_human_summary_exits_0_even_with_failures(
    threaded_stack: tuple[FakeStack, str], tmp_path: Path
) -> None:
    stack, url = threaded_stack
    stack.statuses = (500,)
    result = CliRunner().invoke(
        app,
        [
            *("load", "--url", url, "--rate", "100", "--duration", "300ms", "--mix", "stock=1"),
            *("--home", str(tmp_path)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "5xx" in result.stdout and "open loop at 100/s" in result.stdout


def test_cli_refuses_remote_targets_and_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    remote = runner.invoke(app, ["load", "--url", "http://192.0.2.7:8080"])
    assert remote.exit_code == 1
    assert "not a loopback address" in remote.stderr
    bad = runner.invoke(app, ["load", "--url", "http://127.0.0.1:1", "--duration", "30x"])
    assert bad.exit_code == 1
    assert "--duration" in bad.stderr


def test_cli_without_a_stack_or_url_says_how_to_start_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["load", "--home", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "no local stack is running" in result.stderr
    assert "uv run yardarm up" in result.stderr


def test_cli_unreachable_target_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["load", "--url", f"http://127.0.0.1:{_unused_port()}", "--json"]
    )
    assert result.exit_code == 1
    assert "could not reach" in result.stderr
    assert result.stdout == ""
