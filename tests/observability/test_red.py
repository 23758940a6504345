"""`yardarm top`'s arithmetic without Prometheus: counter increases between two scrapes
and Prometheus' `histogram_quantile`, checked on expositions with known answers."""

from __future__ import annotations

import pytest

from yardarm.red import _Sample, histogram_quantile, parse_exposition, rows_between

LABELS = 'service="orders",version="0.1.0",track="stable",instance="orders-0"'


def exposition(requests: int, errors: int, fast: int, messages: int) -> str:
    """One instance's exposition: `requests` POST /orders (of which `errors` 500s, and
    `fast` under 10 ms, the rest under 100 ms), 7 readiness probes, `messages` handled."""
    ok = requests - errors
    lines = ["# TYPE http_server_request_duration_seconds histogram"]
    for code, count in (("202", ok), ("500", errors)):
        route = f'{LABELS},http_route="/orders",http_request_method="POST"'
        series = f'{route},http_response_status_code="{code}"'
        share = fast if code == "202" else 0
        for le, n in (("0.01", share), ("0.1", count), ("+Inf", count)):
            lines.append(f'http_server_request_duration_seconds_bucket{{{series},le="{le}"}} {n}')
        lines.append(f"http_server_request_duration_seconds_count{{{series}}} {count}")
        lines.append(f"http_server_request_duration_seconds_sum{{{series}}} 1.0")
    probe = (
        f'{LABELS},http_route="/readyz",http_request_method="GET",http_response_status_code="200"'
    )
    lines.append(f"http_server_request_duration_seconds_count{{{probe}}} 7")
    lines.append(f'http_server_request_duration_seconds_bucket{{{probe},le="+Inf"}} 7')
    lines.append("# TYPE yardarm_consumer_messages_total counter")
    lines.append(
        f'yardarm_consumer_messages_total{{{LABELS},consumer="orders",subject="evt.x",'
        f'outcome="processed"}} {messages}'
    )
    return "\n".join(lines) + "\n"


def sample(at: float, text: str) -> _Sample:
    s = _Sample(at=at)
    parse_exposition(text, s)
    return s


def test_rates_and_error_ratio_come_from_the_increase_between_scrapes() -> None:
    first = sample(0.0, exposition(requests=100, errors=0, fast=50, messages=10))
    later = sample(10.0, exposition(requests=300, errors=20, fast=150, messages=60))
    (row,) = rows_between(first, later).rows
    assert (row.service, row.version, row.track, row.instances) == ("orders", "0.1.0", "stable", 1)
    assert row.requests_per_s == pytest.approx(20.0)  # probes are not requests
    assert row.error_ratio == pytest.approx(0.1)
    assert row.messages_per_s == pytest.approx(5.0)
    # 200 new requests: 100 under 10 ms, all under 100 ms.
    assert row.p50_s == pytest.approx(0.01)
    assert row.p99_s == pytest.approx(0.01 + 0.09 * (198 - 100) / 100)


def test_a_restarted_instance_counts_from_zero() -> None:
    first = sample(0.0, exposition(requests=500, errors=0, fast=500, messages=0))
    later = sample(5.0, exposition(requests=50, errors=0, fast=50, messages=0))
    (row,) = rows_between(first, later).rows
    assert row.requests_per_s == pytest.approx(10.0)
    assert row.p99_s is not None and row.p99_s <= 0.01


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # from 0 up
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    # The rank past every finite bucket answers with the highest finite bound.
    assert histogram_quantile(0.99, {0.1: 90.0, float("inf"): 100.0}) == pytest.approx(0.1)
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
