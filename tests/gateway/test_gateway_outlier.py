"""Outlier detection: Envoy's consecutive-error and success-rate ejection."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.outlier import OutlierConfig, OutlierDetector, OutlierEvent


def endpoints(count: int) -> list[Endpoint]:
    return [Endpoint(f"http://10.0.0.{i}:8080") for i in range(count)]


def detector(
    pool: list[Endpoint], events: list[OutlierEvent] | None = None, **overrides: Any
) -> OutlierDetector:
    settings: dict[str, Any] = {"max_ejection_percent": 50.0}
    settings.update(overrides)
    return OutlierDetector(
        OutlierConfig(**settings), pool, events.append if events is not None else None
    )


def respond(
    od: OutlierDetector, endpoint: Endpoint, status: int | None, times: int, now: float
) -> None:
    for _ in range(times):
        od.record(endpoint, status, now)


def test_five_consecutive_5xx_eject_for_the_base_time() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events)
    respond(od, pool[0], 500, 4, now=1.0)
    assert not od.is_ejected(pool[0], 1.0)
    od.record(pool[0], 500, 2.0)
    assert od.is_ejected(pool[0], 2.0)
    assert not od.is_ejected(pool[1], 2.0)
    assert events == [OutlierEvent(pool[0], "eject", "consecutive_5xx", 1, 32.0)]


def test_a_success_in_between_resets_the_count() -> None:
    pool = endpoints(4)
    od = detector(pool)
    for _ in range(3):
        respond(od, pool[0], 500, 4, now=0.0)
        od.record(pool[0], 404, 0.0)  # a client error is the endpoint working
    assert not od.is_ejected(pool[0], 0.0)
    assert od.snapshot(pool[0], 0.0)["consecutive_5xx"] == 0


def test_gateway_failures_eject_and_count_as_5xx() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events, consecutive_5xx=0)
    for status in (502, None, 503, 504):
        od.record(pool[0], status, 0.0)
    assert not od.is_ejected(pool[0], 0.0)
    od.record(pool[0], None, 0.0)  # connect failure / timeout
    assert od.is_ejected(pool[0], 0.0)
    assert events[0].reason == "consecutive_gateway_failure"

    # With only the 5xx check on, gateway failures still count toward it.
    od = detector(pool, events, consecutive_gateway_failure=0, consecutive_5xx=3)
    respond(od, pool[1], 502, 2, now=0.0)
    od.record(pool[1], None, 0.0)
    assert od.is_ejected(pool[1], 0.0)
    assert events[-1].reason == "consecutive_5xx"


def test_other_5xx_break_a_run_of_gateway_failures() -> None:
    pool = endpoints(4)
    od = detector(pool, consecutive_5xx=0, consecutive_gateway_failure=3)
    respond(od, pool[0], 503, 2, now=0.0)
    od.record(pool[0], 500, 0.0)
    respond(od, pool[0], 503, 2, now=0.0)
    assert not od.is_ejected(pool[0], 0.0)
    od.record(pool[0], 503, 0.0)
    assert od.is_ejected(pool[0], 0.0)


def test_zero_disables_a_consecutive_check() -> None:
    pool = endpoints(4)
    od = detector(pool, consecutive_5xx=0, consecutive_gateway_failure=0)
    respond(od, pool[0], None, 50, now=0.0)
    respond(od, pool[0], 500, 50, now=0.0)
    assert not od.is_ejected(pool[0], 0.0)


def test_ejection_ends_after_its_time_with_an_uneject_event() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events)
    respond(od, pool[0], 500, 5, now=10.0)
    assert od.is_ejected(pool[0], 39.9)
    assert not od.is_ejected(pool[0], 40.0)
    assert events[-1] == OutlierEvent(pool[0], "uneject", "expired", 1, None)
    assert not od.is_ejected(pool[0], 41.0)
    assert len(events) == 2  # the uneject is reported once


def test_sweep_ends_expired_ejections_nobody_asked_about() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events)
    respond(od, pool[0], 500, 5, now=0.0)
    od.sweep(30.0)
    assert [e.action for e in events] == ["eject", "uneject"]
    assert od.snapshot(pool[0], 30.0)["ejected"] is False


def test_repeat_ejections_last_longer_up_to_the_cap() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events, base_ejection_time_s=30.0, max_ejection_time_s=100.0)
    now = 0.0
    durations = []
    for _ in range(5):
        respond(od, pool[0], 500, 5, now=now)
        eject = events[-1]
        assert eject.action == "eject" and eject.until is not None
        durations.append(eject.until - now)
        now = eject.until
        assert not od.is_ejected(pool[0], now)  # back, and failing again at once
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0]
    assert od.snapshot(pool[0], now)["total_ejections"] == 5


def test_multiplier_decays_one_step_per_interval_in_service() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events, base_ejection_time_s=30.0, max_ejection_time_s=300.0)
    respond(od, pool[0], 500, 5, now=0.0)  # out for 30 s, multiplier 1
    assert not od.is_ejected(pool[0], 30.0)
    respond(od, pool[0], 500, 5, now=30.0)  # out for 60 s, multiplier 2
    assert od.snapshot(pool[0], 30.0)["ejections"] == 2
    od.sweep(40.0)  # still ejected: no decay
    assert od.snapshot(pool[0], 40.0)["ejections"] == 2
    od.sweep(90.0)  # the ejection ends in this sweep: no decay yet
    assert od.snapshot(pool[0], 90.0)["ejections"] == 2
    od.sweep(100.0)
    assert od.snapshot(pool[0], 100.0)["ejections"] == 1
    respond(od, pool[0], 500, 5, now=100.0)
    assert events[-1].until == 100.0 + 60.0  # multiplier 2 again, not 3
    od.sweep(160.0)
    for t in (170.0, 180.0, 190.0):
        od.sweep(t)
    assert od.snapshot(pool[0], 190.0)["ejections"] == 0
    respond(od, pool[0], 500, 5, now=190.0)
    assert events[-1].until == 190.0 + 30.0  # fully forgiven


def test_multiplier_stops_at_the_cap_so_it_can_decay_back() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events, base_ejection_time_s=10.0, max_ejection_time_s=30.0)
    now = 0.0
    for _ in range(10):
        respond(od, pool[0], 500, 5, now=now)
        assert events[-1].until is not None
        now = events[-1].until
    assert od.snapshot(pool[0], now)["ejections"] == 3
    od.is_ejected(pool[0], now)
    od.sweep(now + 1)
    respond(od, pool[0], 500, 5, now=now + 1)
    assert events[-1].until == now + 1 + 30.0  # 2 + 1 = 3: still the cap
    assert events[-1].ejections == 3


def test_max_ejection_percent_limits_simultaneous_ejections() -> None:
    pool = endpoints(10)
    od = detector(pool, max_ejection_percent=20.0)
    for endpoint in pool[:4]:
        respond(od, endpoint, 500, 5, now=0.0)
    assert [od.is_ejected(e, 0.0) for e in pool[:4]] == [True, True, False, False]
    # Once an ejection ends there is room again (found without asking is_ejected first).
    respond(od, pool[2], 500, 5, now=30.0)
    assert od.is_ejected(pool[2], 30.0)
    assert not od.is_ejected(pool[0], 30.0)


def test_at_least_one_endpoint_may_always_be_ejected() -> None:
    pool = endpoints(3)  # 10% of 3 rounds down to 0
    od = detector(pool, max_ejection_percent=10.0)
    respond(od, pool[0], 500, 5, now=0.0)
    respond(od, pool[1], 500, 5, now=0.0)
    assert od.is_ejected(pool[0], 0.0)
    assert not od.is_ejected(pool[1], 0.0)

    # Even at 0% one endpoint may go: a lone bad replica is never kept in rotation.
    pair = endpoints(2)
    od = detector(pair, max_ejection_percent=0.0)
    respond(od, pair[0], None, 5, now=0.0)
    respond(od, pair[1], None, 5, now=0.0)
    assert [od.is_ejected(e, 0.0) for e in pair] == [True, False]


def test_capped_endpoint_needs_a_new_run_of_errors() -> None:
    pool = endpoints(3)
    od = detector(pool, max_ejection_percent=10.0)
    respond(od, pool[0], 500, 5, now=0.0)
    respond(od, pool[1], 500, 5, now=0.0)  # refused: the one slot is taken
    od.uneject(pool[0], 1.0)
    od.record(pool[1], 500, 1.0)
    assert not od.is_ejected(pool[1], 1.0)
    respond(od, pool[1], 500, 4, now=1.0)
    assert od.is_ejected(pool[1], 1.0)


def test_success_rate_ejects_the_outlier_among_five_hosts() -> None:
    pool = endpoints(6)
    events: list[OutlierEvent] = []
    od = detector(pool, events, consecutive_5xx=0, consecutive_gateway_failure=0)
    for endpoint in pool[:5]:
        for i in range(100):
            od.record(endpoint, 500 if i < 2 else 200, 0.0)  # 98%
    for i in range(100):
        od.record(pool[5], 500 if i % 2 else 200, 0.0)  # 50%
    od.sweep(10.0)
    assert [e.endpoint for e in events] == [pool[5]]
    assert events[0].reason == "success_rate"
    assert events[0].until == 40.0
    assert not any(od.is_ejected(e, 10.0) for e in pool[:5])


def test_success_rate_needs_enough_hosts_with_enough_volume() -> None:
    pool = endpoints(6)
    od = detector(pool, consecutive_5xx=0, consecutive_gateway_failure=0)
    for endpoint in pool[:4]:
        respond(od, endpoint, 200, 100, now=0.0)
    respond(od, pool[4], 200, 99, now=0.0)  # one short of the volume
    for i in range(100):
        od.record(pool[5], 500 if i % 2 else 200, 0.0)
    od.sweep(10.0)  # 5 qualify (the 99-request one does not): enough to judge
    assert od.is_ejected(pool[5], 10.0)

    od = detector(pool, consecutive_5xx=0, consecutive_gateway_failure=0)
    for endpoint in pool[:3]:
        respond(od, endpoint, 200, 100, now=0.0)
    respond(od, pool[4], 200, 99, now=0.0)
    for i in range(100):
        od.record(pool[5], 500 if i % 2 else 200, 0.0)
    od.sweep(10.0)  # 4 qualify: too few to judge
    assert not od.is_ejected(pool[5], 10.0)


def test_success_rate_counts_reset_every_interval() -> None:
    pool = endpoints(5)
    od = detector(pool, consecutive_5xx=0, consecutive_gateway_failure=0)
    for endpoint in pool[:4]:
        respond(od, endpoint, 200, 60, now=0.0)
    respond(od, pool[4], 503, 60, now=0.0)
    od.sweep(10.0)  # 60 < 100 requests each: nobody judged, counts dropped
    for endpoint in pool[:4]:
        respond(od, endpoint, 200, 60, now=15.0)
    respond(od, pool[4], 503, 60, now=15.0)
    od.sweep(20.0)
    assert not od.is_ejected(pool[4], 20.0)
    assert od.snapshot(pool[4], 20.0)["interval_requests"] == 0


def test_equal_success_rates_eject_nobody() -> None:
    pool = endpoints(5)
    od = detector(pool, consecutive_5xx=0, consecutive_gateway_failure=0)
    for endpoint in pool:
        for i in range(150):
            od.record(endpoint, 500 if i % 3 == 0 else 200, 0.0)  # 66.67% each
    od.sweep(10.0)
    assert not any(od.is_ejected(e, 10.0) for e in pool)


def test_manual_eject_and_uneject() -> None:
    pool = endpoints(10)
    events: list[OutlierEvent] = []
    od = detector(pool, events, max_ejection_percent=10.0)
    assert od.eject(pool[0], 0.0)
    assert od.eject(pool[1], 0.0, duration_s=5.0)  # the percentage does not bind an admin
    assert not od.eject(pool[1], 1.0)  # already out
    assert od.is_ejected(pool[0], 29.0) and od.is_ejected(pool[1], 4.0)
    assert not od.is_ejected(pool[1], 5.0)
    assert od.uneject(pool[0], 6.0)
    assert not od.uneject(pool[0], 6.0)
    assert not od.is_ejected(pool[0], 6.0)
    assert [(e.endpoint, e.action, e.reason, e.until) for e in events] == [
        (pool[0], "eject", "admin", 30.0),
        (pool[1], "eject", "admin", 5.0),
        (pool[1], "uneject", "expired", None),
        (pool[0], "uneject", "admin", None),
    ]
    # A computed-time ejection counts toward the multiplier; a fixed hold does not.
    assert od.snapshot(pool[0], 6.0)["ejections"] == 1
    assert od.snapshot(pool[1], 6.0)["ejections"] == 0


def test_manual_eject_rejects_bad_input() -> None:
    pool = endpoints(2)
    od = detector(pool)
    with pytest.raises(ValueError, match="not an endpoint"):
        od.eject(Endpoint("http://elsewhere:1"), 0.0)
    with pytest.raises(ValueError, match="positive"):
        od.eject(pool[0], 0.0, duration_s=0.0)
    with pytest.raises(ValueError, match="positive"):
        od.eject(pool[0], 0.0, duration_s=float("inf"))


def test_an_unknown_endpoint_is_ignored_on_the_request_path() -> None:
    od = detector(endpoints(2))
    stranger = Endpoint("http://10.0.0.0:8080")  # same URL, different endpoint
    respond(od, stranger, 500, 10, now=0.0)
    assert not od.is_ejected(stranger, 0.0)


def test_snapshot_reports_counters_and_ejection() -> None:
    pool = endpoints(4)
    od = detector(pool)
    od.record(pool[0], 200, 0.0)
    respond(od, pool[0], 502, 3, now=0.0)
    od.record(pool[0], 500, 0.0)
    snap = od.snapshot(pool[0], 0.0)
    assert snap["consecutive_5xx"] == 4
    assert snap["consecutive_gateway_failure"] == 0
    assert (snap["interval_requests"], snap["interval_successes"]) == (5, 1)
    assert (snap["ejected"], snap["until"]) == (False, None)
    od.record(pool[0], 504, 1.0)
    snap = od.snapshot(pool[0], 1.0)
    assert (snap["ejected"], snap["until"], snap["reason"]) == (True, 31.0, "consecutive_5xx")
    assert snap["consecutive_5xx"] == 0  # a new bout starts


def test_disabled_detector_never_ejects_on_its_own() -> None:
    pool = endpoints(5)
    events: list[OutlierEvent] = []
    od = detector(pool, events, enabled=False)
    for endpoint in pool[:4]:
        respond(od, endpoint, 200, 200, now=0.0)
    respond(od, pool[4], None, 200, now=0.0)
    od.sweep(10.0)
    assert not any(od.is_ejected(e, 10.0) for e in pool)
    assert events == []
    # An admin's ejection is an explicit decision and still holds.
    assert od.eject(pool[4], 10.0)
    assert od.is_ejected(pool[4], 11.0)


def test_a_passing_health_check_returns_an_ejected_endpoint_before_its_time() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events)
    assert od.config.successful_active_health_check_uneject_host  # Envoy's default
    respond(od, pool[0], None, 5, now=10.0)  # out until 40
    assert od.health_check_passed(pool[0], probed_at=11.0, now=11.5)
    assert not od.is_ejected(pool[0], 11.5)
    assert not od.ejected(pool[0])
    assert events[-1] == OutlierEvent(pool[0], "uneject", "active_health_check", 1, None)
    # The multiplier stays: a relapse is ejected for twice the base time.
    assert od.snapshot(pool[0], 11.5)["ejections"] == 1
    respond(od, pool[0], None, 5, now=12.0)
    assert events[-1].action == "eject" and events[-1].until == 12.0 + 60.0
    # The slot it held is free again for another endpoint (max_ejection_percent 50 of 4).
    assert od.health_check_passed(pool[0], probed_at=13.0, now=13.0)
    respond(od, pool[1], None, 5, now=14.0)
    respond(od, pool[2], None, 5, now=14.0)
    assert od.is_ejected(pool[1], 14.0) and od.is_ejected(pool[2], 14.0)


def test_a_health_check_begun_before_the_ejection_ends_nothing() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events)
    respond(od, pool[0], None, 5, now=10.0)
    assert not od.health_check_passed(pool[0], probed_at=9.9, now=10.1)
    assert od.is_ejected(pool[0], 10.1)
    assert [e.action for e in events] == ["eject"]


def test_a_health_check_never_ends_an_admins_ejection() -> None:
    pool = endpoints(4)
    od = detector(pool)
    assert od.eject(pool[0], 0.0)
    assert od.eject(pool[1], 0.0, duration_s=100.0)
    for endpoint in pool[:2]:
        assert not od.health_check_passed(endpoint, probed_at=1.0, now=1.0)
        assert od.is_ejected(endpoint, 1.0)
    # Once the admin's ejection is over, the detector's next one is health-checked again.
    od.uneject(pool[0], 2.0)
    respond(od, pool[0], 500, 5, now=3.0)
    assert od.health_check_passed(pool[0], probed_at=4.0, now=4.0)


def test_with_uneject_on_health_check_off_only_the_time_ends_an_ejection() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events, successful_active_health_check_uneject_host=False)
    respond(od, pool[0], None, 5, now=10.0)
    assert not od.health_check_passed(pool[0], probed_at=11.0, now=11.0)
    assert od.is_ejected(pool[0], 39.9)
    assert not od.is_ejected(pool[0], 40.0)
    assert [(e.action, e.reason) for e in events] == [
        ("eject", "consecutive_gateway_failure"),
        ("uneject", "expired"),
    ]


def test_a_health_check_of_an_endpoint_in_service_changes_nothing() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events)
    assert not od.health_check_passed(pool[0], probed_at=1.0, now=1.0)
    respond(od, pool[0], None, 5, now=10.0)
    # Past its time it ends as expired, whoever notices first.
    assert not od.health_check_passed(pool[0], probed_at=41.0, now=41.0)
    assert [(e.action, e.reason) for e in events][-1] == ("uneject", "expired")
    assert not od.health_check_passed(Endpoint("http://elsewhere:1"), 1.0, 1.0)


def test_expire_ends_every_ejection_that_is_over_and_only_those() -> None:
    pool = endpoints(4)
    events: list[OutlierEvent] = []
    od = detector(pool, events)
    respond(od, pool[0], None, 5, now=0.0)  # until 30
    assert od.eject(pool[1], 10.0, duration_s=5.0)  # until 15
    od.expire(14.9)
    assert od.ejected(pool[0]) and od.ejected(pool[1])
    od.expire(15.0)
    assert od.ejected(pool[0]) and not od.ejected(pool[1])
    od.expire(29.0)
    assert od.ejected(pool[0])
    od.expire(30.0)
    assert not od.ejected(pool[0])
    assert [(e.endpoint, e.action) for e in events] == [
        (pool[0], "eject"),
        (pool[1], "eject"),
        (pool[1], "uneject"),
        (pool[0], "uneject"),
    ]
    # An ejection that ended otherwise is not ended twice.
    respond(od, pool[2], None, 5, now=31.0)
    od.uneject(pool[2], 32.0)
    od.expire(100.0)
    assert [e.action for e in events[-2:]] == ["eject", "uneject"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_5xx", -1),
        ("interval_s", 0.0),
        ("base_ejection_time_s", 0.0),
        ("max_ejection_percent", 101.0),
        ("success_rate_minimum_hosts", 0),
        ("success_rate_request_volume", 0),
        ("success_rate_stdev_factor", -0.1),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as excinfo:
        OutlierConfig.model_validate({field: value})
    assert field in str(excinfo.value)


def test_config_rejects_a_max_ejection_time_below_the_base() -> None:
    with pytest.raises(ValidationError, match="max_ejection_time_s"):
        OutlierConfig(base_ejection_time_s=60.0, max_ejection_time_s=30.0)
    with pytest.raises(ValidationError, match="ejection_percent"):
        OutlierConfig.model_validate({"ejection_percent": 5})
