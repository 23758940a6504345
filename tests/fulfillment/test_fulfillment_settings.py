"""Settings that would make redelivery misbehave stop the start with a clear error."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from yardarm_fulfillment import FulfillmentSettings

REQUIRED = {"port": 8090, "database_url": "postgresql://db/f", "nats_url": "nats://n:4222"}


def settings(**overrides: Any) -> FulfillmentSettings:
    return FulfillmentSettings(**{**REQUIRED, **overrides})


def test_defaults_back_off_in_growing_steps_within_max_deliver() -> None:
    s = settings()
    assert s.backoff_s == [1.0, 5.0, 15.0, 30.0]
    assert s.max_deliver > len(s.backoff_s)
    assert s.max_batches_in_flight >= 1


@pytest.mark.parametrize("raw", ["[0.5, 2, 10]", "0.5,2,10", " 0.5 , 2 , 10 "])
def test_backoff_reads_json_or_comma_separated_from_the_environment(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YARDARM_FULFILLMENT_BACKOFF_S", raw)
    assert settings().backoff_s == [0.5, 2.0, 10.0]


def test_max_deliver_must_exceed_the_backoff_steps() -> None:
    with pytest.raises(ValidationError, match=r"max_deliver \(4\) must exceed .* \(4\)"):
        settings(max_deliver=4, backoff_s=[1, 2, 3, 4])
    assert settings(max_deliver=5, backoff_s=[1, 2, 3, 4]).max_deliver == 5


@pytest.mark.parametrize(
    ("backoff", "message"),
    [([], "at least one delay"), ([1, 0], "above 0 seconds"), ([-1], "above 0 seconds")],
)
def test_backoff_needs_positive_delays(backoff: list[float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(backoff_s=backoff)


def test_the_pool_must_hold_every_batch_in_flight() -> None:
    with pytest.raises(ValidationError, match=r"pool_max_size \(10\) is below 20"):
        settings(max_batches_in_flight=8)
    assert settings(max_batches_in_flight=8, pool_max_size=20).max_batches_in_flight == 8


def test_a_non_number_in_the_backoff_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YARDARM_FULFILLMENT_BACKOFF_S", "1,soon")
    with pytest.raises(ValidationError, match="backoff_s"):
        settings()
