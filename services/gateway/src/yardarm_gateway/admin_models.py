"""The admin API's bodies: what it takes and what it answers, as pydantic models.

The OpenAPI document of the admin listener is built from these, so each request model
says exactly what the handlers accept (strict types, no NUL in any string: the kit
refuses it) and every answer is produced by validating it through its model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema, field_validator
from yardarm_kit.gateway_policy import Policy
from yardarm_kit.openapi import portable_pattern

from yardarm_gateway.routeconfig import Ejection
from yardarm_gateway.routing import SPLIT_SCHEMA, Route, Weight, check_split
from yardarm_gateway.settings import EndpointSpec
from yardarm_gateway.split import STICKY_SCHEMA, StickyConfig

MAX_EJECTION_S = 7 * 24 * 3600
MAX_REASON = 200

_TEXT = portable_pattern(r"^[^\x00]*$")
_SOME_TEXT = portable_pattern(r"^[^\x00]+$")

SomeText = Annotated[
    str, Field(min_length=1), WithJsonSchema({"type": "string", "pattern": _SOME_TEXT})
]
"""A non-empty string as a path or query value (`%00` in a URL is refused with 400)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RoutesBody(_Body):
    """The new route list, replacing the current one."""

    routes: list[Route]


class SplitBody(_Body):
    """New weights; `sticky` is kept unless given (`null` turns stickiness off)."""

    model_config = ConfigDict(
        json_schema_extra={
            "properties": {
                "weights": SPLIT_SCHEMA,
                "sticky": {"anyOf": [STICKY_SCHEMA, {"type": "null"}]},
            }
        }
    )

    weights: dict[str, Weight]
    sticky: StickyConfig | None = None

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, Weight]) -> dict[str, int]:
        return check_split(value)


class EjectBody(_Body):
    """Which endpoint to take out of rotation, for how long and why."""

    endpoint: str = Field(
        min_length=1,
        description="the endpoint's URL as configured (a trailing '/' is ignored)",
        json_schema_extra={"pattern": _SOME_TEXT},
    )
    duration_s: float = Field(default=60.0, gt=0, le=MAX_EJECTION_S)
    reason: str = Field(
        default="admin", max_length=MAX_REASON, json_schema_extra={"pattern": _TEXT}
    )


class RoutingView(BaseModel):
    """The routing document in force and where it comes from.

    `version` is the datastore version of the document in force (0: the built-in
    routes; a stored document that was refused as invalid never shows here);
    `persistent` is false when the gateway has no datastore and keeps changes in memory.
    `endpoints` is the document's endpoint lists as the control plane wrote them; an
    upstream not listed routes to the endpoints the gateway was started with
    (`GET /admin/upstreams` shows every upstream's live set).
    """

    version: int = Field(ge=0)
    persistent: bool
    strip_prefix: str
    routes: list[Route]
    ejections: list[Ejection]
    endpoints: dict[str, list[EndpointSpec]]


class BreakerView(BaseModel):
    """One circuit breaker's state and the rates it was judged on."""

    name: str
    enabled: bool
    state: Literal["closed", "open", "half_open"]
    window: Literal["count", "time", "half_open_trial"]
    calls: int
    failed_calls: int
    slow_calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    minimum_calls: int
    retry_after_s: float
    half_open_in_flight: int | None = None
    half_open_permits_left: int | None = None


class HealthView(BaseModel):
    healthy: bool
    streak: int = Field(description="passes in a row (> 0) or failures in a row (< 0)")


class OutlierView(BaseModel):
    url: str
    ejected: bool
    until: float | None
    reason: str | None
    ejections: int
    total_ejections: int
    consecutive_5xx: int
    consecutive_gateway_failure: int
    interval_requests: int
    interval_successes: int


class EndpointView(BaseModel):
    """One endpoint; `draining`: it left the routing document and only finishes the
    requests it has in flight (`active`), then is gone from this list."""

    url: str
    track: str
    weight: int
    active: int
    usable: bool
    draining: bool
    health: HealthView
    outlier: OutlierView
    breaker: BreakerView


class TrackView(BaseModel):
    breaker: BreakerView
    endpoints: int
    panic: bool


class RetryBudgetView(BaseModel):
    active_requests: int
    active_retries: int
    rejected: int


class UpstreamView(BaseModel):
    """One upstream's live state: endpoints, health, ejections, breakers, budget."""

    balancer: Policy
    active: int
    max_concurrent: int
    retry_budget: RetryBudgetView
    tracks: dict[str, TrackView]
    endpoints: list[EndpointView]


class UpstreamsView(RootModel[dict[str, UpstreamView]]):
    """Every upstream by name."""


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
