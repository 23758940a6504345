"""yardarm_kit: the one place that wires settings, telemetry, HTTP and messaging.

The names below are imported on first use (PEP 562): importing one light submodule
(`yardarm_kit.gateway_policy`, `yardarm_kit.identity`) must not pull in aiohttp,
OpenTelemetry and NATS, which the control plane's CLI would pay for on every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from yardarm_kit.lazy import lazy_exports

if TYPE_CHECKING:
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

# Each re-exported name and the submodule that defines it.
_SOURCES = {
    "TIMEOUT_HEADER": "deadline",
    "Flags": "flags",
    "HttpClient": "httpclient",
    "HttpResponse": "httpclient",
    "UpstreamError": "httpclient",
    "UpstreamTimeout": "httpclient",
    "UpstreamUnavailable": "httpclient",
    "Metrics": "metrics",
    "ApiSpec": "openapi",
    "Header": "openapi",
    "Param": "openapi",
    "Reply": "openapi",
    "params_of": "openapi",
    "Problem": "problem",
    "ROUTE_KEY": "service",
    "Service": "service",
    "ServiceSettings": "settings",
    "parse_json": "validation",
}

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


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
