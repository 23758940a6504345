"""Windows from direct scrapes: counter increases per track (resets included), weights,
the observed share, latency points per (instance, sub-window, quantile), and every way
the gateway keeps a track's endpoints from traffic; for a queue consumer, its own
deliveries and batch durations."""

from __future__ import annotations

import pytest

from yardarm.rollout.metrics_source import Scrape, Subject, reduce_exposition, windows_between

SUBJECT = Subject(upstream="orders", routes=("api-orders", "api-stock"))
GW = 'service="gateway",version="0.1.0",track="stable",instance="gateway-0"'
CANARY_URL = "http://127.0.0.1:1"


def gateway(stable: int, canary: int, canary_5xx: int, *, unhealthy: bool = False,
            breaker: float = 0.0) -> str:  # fmt: skip
    rows = [
        f'yardarm_gateway_route_requests_total{{{GW},route="api-orders",upstream="orders",'
        f'upstream_track="stable",code="200"}} {stable}',
        f'yardarm_gateway_route_requests_total{{{GW},route="api-orders",upstream="orders",'
        f'upstream_track="canary",code="200"}} {canary - canary_5xx}',
        f'yardarm_gateway_route_requests_total{{{GW},route="api-orders",upstream="orders",'
        f'upstream_track="canary",code="500"}} {canary_5xx}',
        # another route's traffic is not the rolling service's
        f'yardarm_gateway_route_requests_total{{{GW},route="api-kv",upstream="datastore",'
        f'upstream_track="*",code="200"}} 1000',
        f'yardarm_gateway_route_weight{{{GW},route="api-orders",upstream="orders",'
        f'upstream_track="canary"}} 10.0',
        f'yardarm_gateway_route_weight{{{GW},route="api-orders",upstream="orders",'
        f'upstream_track="stable"}} 90.0',
        f'yardarm_gateway_endpoint_healthy{{{GW},upstream="orders",endpoint="{CANARY_URL}",'
        f'upstream_track="canary"}} {0.0 if unhealthy else 1.0}',
        f'yardarm_gateway_breaker_state{{{GW},breaker="orders/track:canary"}} {breaker}',
    ]
    return "\n".join(rows) + "\n"


def instance(count_fast: int, count_slow: int, instance: str = "orders-canary-0") -> str:
    labels = (
        f'service="orders",version="0.2.0",track="canary",instance="{instance}",'
        'http_route="/orders",http_request_method="POST",http_response_status_code="202"'
    )
    total = count_fast + count_slow
    rows = [
        f'http_server_request_duration_seconds_bucket{{{labels},le="0.01"}} {count_fast}',
        f'http_server_request_duration_seconds_bucket{{{labels},le="0.1"}} {total}',
        f'http_server_request_duration_seconds_bucket{{{labels},le="+Inf"}} {total}',
        f"http_server_request_duration_seconds_count{{{labels}}} {total}",
    ]
    return "# TYPE http_server_request_duration_seconds histogram\n" + "\n".join(rows) + "\n"


def scrape(at: float, *texts: str) -> Scrape:
    s = Scrape(at=at)
    for text in texts:
        reduce_exposition(text, SUBJECT, s)
    return s


def test_requests_errors_weights_share_and_latency_points() -> None:
    scrapes = [
        scrape(0, gateway(0, 0, 0), instance(0, 0)),
        scrape(5, gateway(90, 10, 1), instance(10, 0)),
        scrape(10, gateway(180, 20, 3), instance(10, 10)),
    ]
    windows = windows_between(SUBJECT, scrapes, 0, 10)
    canary = windows["canary"]
    assert (canary.requests, canary.errors, canary.weight) == (20, 3, 10.0)
    assert canary.share == pytest.approx(10.0)
    assert canary.route_requests == 200  # every track's requests on the routes
    assert canary.unavailable == ()
    # sub-window 1: all 10 under 10 ms; sub-window 2: all 10 between 10 and 100 ms
    assert canary.latency_points == pytest.approx((0.005, 0.009, 0.055, 0.091))
    assert windows["baseline"].requests == 0 and windows["baseline"].latency_points == ()


def test_a_restarted_gateway_replica_counts_from_zero() -> None:
    scrapes = [scrape(0, gateway(900, 100, 0)), scrape(5, gateway(45, 5, 5))]
    canary = windows_between(SUBJECT, scrapes, 0, 5)["canary"]
    assert (canary.requests, canary.errors) == (5, 5)


def test_the_gateway_hiding_a_track_is_reported_for_that_track() -> None:
    scrapes = [
        scrape(0, gateway(0, 0, 0)),
        scrape(5, gateway(100, 0, 0, unhealthy=True, breaker=2.0)),
        scrape(10, gateway(200, 0, 0, unhealthy=True, breaker=2.0)),
    ]
    canary = windows_between(SUBJECT, scrapes, 0, 10)["canary"]
    assert canary.unavailable == (
        "circuit orders/track:canary is open",
        f"{CANARY_URL} fails its health checks",
    )
    assert canary.share == 0.0


def test_a_track_hidden_for_a_moment_is_not_unavailable() -> None:
    """Two health checks timed out on a busy machine, then passed: not a failing release."""
    scrapes = [
        scrape(0, gateway(0, 0, 0)),
        scrape(5, gateway(100, 0, 0)),
        scrape(8, gateway(160, 0, 0, unhealthy=True)),
    ]
    assert windows_between(SUBJECT, scrapes, 0, 8)["canary"].unavailable == ()


def test_fewer_than_two_scrapes_in_the_window_say_nothing_happened() -> None:
    windows = windows_between(SUBJECT, [scrape(0, gateway(5, 5, 0))], 0, 10)
    assert windows["canary"].requests == 0 and windows["canary"].share == 0.0


CONSUMER = Subject(upstream="fulfillment", routes=(), tracks=("canary", "baseline"))


def consumer(track: str, processed: int, failed: int, dead: int, fast: int, slow: int) -> str:
    """One fulfillment instance's own series: deliveries by outcome (two consumers), and
    its batch histogram."""
    own = f'service="fulfillment",version="0.2.0",track="{track}",instance="fulfillment-{track}-0"'
    rows = [
        f'yardarm_consumer_messages_total{{{own},consumer="payments",outcome="processed"}} '
        f"{processed}",
        f'yardarm_consumer_messages_total{{{own},consumer="shipping",outcome="failed"}} {failed}',
        f'yardarm_consumer_messages_total{{{own},consumer="shipping",outcome="dead_lettered"}} '
        f"{dead}",
        f'yardarm_consumer_batch_duration_seconds_bucket{{{own},consumer="payments",le="0.01"}} '
        f"{fast}",
        f'yardarm_consumer_batch_duration_seconds_bucket{{{own},consumer="payments",le="0.1"}} '
        f"{fast + slow}",
        f'yardarm_consumer_batch_duration_seconds_bucket{{{own},consumer="payments",le="+Inf"}} '
        f"{fast + slow}",
        f'yardarm_consumer_batch_duration_seconds_count{{{own},consumer="payments"}} {fast + slow}',
        # orders' deliveries are another service's
        'yardarm_consumer_messages_total{service="orders",version="0.1.0",track="canary",'
        'instance="orders-canary-0",consumer="saga",outcome="failed"} 500',
    ]
    return (
        "# TYPE yardarm_consumer_messages_total counter\n"
        "# TYPE yardarm_consumer_batch_duration_seconds histogram\n" + "\n".join(rows) + "\n"
    )


def test_a_consumer_is_judged_on_its_deliveries_and_batch_durations() -> None:
    def at(t: float, *texts: str) -> Scrape:
        s = Scrape(at=t)
        for text in texts:
            reduce_exposition(text, CONSUMER, s)
        return s

    scrapes = [
        at(0, consumer("canary", 0, 0, 0, 0, 0), consumer("stable", 0, 0, 0, 0, 0)),
        at(5, consumer("canary", 40, 8, 2, 10, 0), consumer("stable", 100, 0, 0, 10, 0)),
        at(10, consumer("canary", 80, 16, 4, 10, 10), consumer("stable", 200, 0, 0, 20, 0)),
    ]
    windows = windows_between(CONSUMER, scrapes, 0, 10)
    canary = windows["canary"]
    # Every delivery is a request; a failed or dead-lettered one is an error.
    assert (canary.requests, canary.errors) == (100, 20)
    assert canary.route_requests == 300 and canary.share == pytest.approx(100 / 3)
    assert canary.weight == 0.0 and canary.unavailable == ()  # no router to read
    assert canary.latency_points == pytest.approx((0.005, 0.009, 0.055, 0.091))
    assert windows["baseline"].requests == 0
