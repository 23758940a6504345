"""yardarm_kit: the one place that wires settings, telemetry, HTTP and messaging."""

from yardarm_kit.deadline import TIMEOUT_HEADER
from yardarm_kit.flags import Flags
from yardarm_kit.httpclient import (
    HttpClient,
    HttpResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from yardarm_kit.metrics import Metrics
from yardarm_kit.openapi import ApiSpec, Header, Param, Reply, params_of
from yardarm_kit.problem import Problem
from yardarm_kit.service import ROUTE_KEY, Service
from yardarm_kit.settings import ServiceSettings
from yardarm_kit.validation import parse_json

__all__ = [
    "ROUTE_KEY",
    "TIMEOUT_HEADER",
    "ApiSpec",
    "Flags",
    "Header",
    "HttpClient",
    "HttpResponse",
    "Metrics",
    "Param",
    "Problem",
    "Reply",
    "Service",
    "ServiceSettings",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "params_of",
    "parse_json",
]
