"""Grafana dashboards as code (grafana-foundation-sdk, the Grafana 11.6 build).

`render_files()` is what `observability/dashboards/` holds: one JSON file per dashboard,
named by its uid, that Grafana's dashboard provisioning loads as is. `prometheus_queries()`
lists every PromQL expression of every panel, for the test that runs them against a
Prometheus scraping a stack under load.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Final

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from yardarm.observability import stack
from yardarm.observability.dashboards import (
    datastore,
    fulfillment,
    gateway,
    orders,
    overview,
    rollouts,
)

BUILDERS: Final[tuple[Callable[[], dm.Dashboard], ...]] = (
    overview.build,
    gateway.build,
    orders.build,
    fulfillment.build,
    datastore.build,
    rollouts.build,
)

DIRECTORY: Final = "dashboards"


def documents() -> dict[str, dict[str, Any]]:
    """Every dashboard as the JSON document Grafana reads, by uid."""
    found: dict[str, dict[str, Any]] = {}
    for build in BUILDERS:
        document = json.loads(json.dumps(build(), cls=JSONEncoder))
        found[document["uid"]] = document
    return found


def encode(document: dict[str, Any]) -> str:
    """The committed text of one dashboard: stable key order, one trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def render_files() -> dict[str, str]:
    """Path under `observability/` -> the exact text of each dashboard file."""
    return {f"{DIRECTORY}/{uid}.json": encode(doc) for uid, doc in documents().items()}


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside collapsed rows too; rows excluded."""
    for panel in document.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def prometheus_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every Prometheus target, in panel order.

    The expressions still hold Grafana's variables ($environment, $service, $version,
    $track, $__rate_interval, $__interval, $__range); a caller running them substitutes
    those first.
    """
    found: list[tuple[str, str, str]] = []
    for uid, document in documents().items():
        for panel in panels(document):
            if panel.get("datasource", {}).get("uid") != stack.PROMETHEUS_UID:
                continue
            found.extend((uid, panel["title"], t["expr"]) for t in panel.get("targets", []))
    return found


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, variable name, `label_values(...)` query) of every variable."""
    return [
        (uid, variable["name"], variable["query"])
        for uid, document in documents().items()
        for variable in document.get("templating", {}).get("list", [])
    ]
