"""The metric catalog says what the services and the rollout controller really register,
and its PromQL reader catches the mistakes it exists for (a misspelt series, a label a
series lacks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from yardarm.observability import metrics_catalog
from yardarm.observability.metrics_catalog import reference_problems, selectors

# Builds every service as its process would (without serving), and the rollout
# controller's service with its telemetry, and prints each one's registry: family name ->
# (type, labels beyond the base ones). In a subprocess, since building a service installs
# its logging and tracer globally.
_DUMP = """
import json, sys, tempfile
from pathlib import Path
from yardarm_kit.metrics import BASE_LABELS
from yardarm_kit import Service, ServiceSettings
from yardarm_datastore.app import create_service
from yardarm_datastore.settings import DatastoreSettings
from yardarm_fulfillment.app import create_fulfillment
from yardarm_fulfillment.settings import FulfillmentSettings
from yardarm_gateway.app import create_gateway
from yardarm_gateway.settings import GatewaySettings
from yardarm_orders.app import create_orders
from yardarm_orders.settings import OrdersSettings
from yardarm.rollout.telemetry import RolloutTelemetry, WebhookConfig

root = Path(tempfile.mkdtemp())
common = dict(port=1, span_files=False)
apps = {
    "gateway": lambda: create_gateway(GatewaySettings(state_dir=root / "g", **common)),
    "orders": lambda: create_orders(OrdersSettings(
        state_dir=root / "o", database_url="postgresql://x@127.0.0.1:1/x",
        nats_url="nats://127.0.0.1:1", datastore_urls=["http://127.0.0.1:1"], **common,
    )).service,
    "fulfillment": lambda: create_fulfillment(FulfillmentSettings(
        state_dir=root / "f", database_url="postgresql://x@127.0.0.1:1/x",
        nats_url="nats://127.0.0.1:1", **common,
    )).service,
    "datastore": lambda: create_service(DatastoreSettings(
        state_dir=root / "d", data_dir=root / "d" / "data", **common,
    )),
}


def controller():
    service = Service(ServiceSettings(service="rollouts", state_dir=root / "r", **common))
    RolloutTelemetry(
        service.metrics, service.tracer, webhook=WebhookConfig("http://127.0.0.1:1/hook")
    )
    return service


apps["rollouts"] = controller
found = {}
for name, build in apps.items():
    registry = build().metrics.registry
    # prometheus_client keeps no public list of a registry's (still empty) metrics, nor
    # of their label names (the kit's own collectors keep them in the same attribute).
    families = {}
    for collector in set(registry._names_to_collectors.values()):
        described = next(iter(collector.describe()))
        kind = described.type
        family = described.name + ("_total" if kind == "counter" else "")
        labels = [label for label in collector._labelnames if label not in BASE_LABELS]
        families[family] = [kind, sorted(labels)]
    found[name] = families
json.dump(found, sys.stdout)
"""


@pytest.fixture(scope="module")
def registered() -> dict[str, dict[str, list[object]]]:
    out = subprocess.run([sys.executable, "-c", _DUMP], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, dict[str, list[object]]] = json.loads(out.stdout)
    return result


def test_the_catalog_is_what_each_service_registers(
    registered: dict[str, dict[str, list[object]]],
) -> None:
    """Same names, kinds and labels. The kit registers some families in every service
    that only some fill (the HTTP client histogram): the catalog names the services
    whose series can appear, and each of those must register the family."""
    catalog = {m.name: [m.kind, sorted(m.labels)] for m in metrics_catalog.METRICS}
    for service, families in registered.items():
        for name, shape in families.items():
            assert catalog.get(name) == shape, f"{service} registers {name} as {shape}"
        for metric in metrics_catalog.METRICS:
            if service in metric.services:
                assert metric.name in families, f"{service} does not register {metric.name}"
    assert set(registered) == {*metrics_catalog.SERVICES, *metrics_catalog.CONTROLLERS}


def test_every_catalogued_series_carries_the_identity_and_scrape_labels() -> None:
    for series, labels in metrics_catalog.SERIES_LABELS.items():
        assert {"service", "version", "track", "instance", "environment", "job"} <= labels
        assert ("le" in labels) == series.endswith("_bucket"), series


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('rate(yardarm_gateway_route_request_total{code="500"}[1m])', "unknown series"),
        ('yardarm_gateway_route_requests_total{status="500"}', "has no label status"),
        ("sum by (step) (rate(yardarm_payments_total[1m]))", "by (step)"),
        ("histogram_quantile(0.9, sum by (le) (rate(yardarm_consumer_lag[1m])))", "by (le)"),
        ("yardarm_saga_steps_total / on (consumer) yardarm_sagas_terminal_total", "on (consumer)"),
        ("sum(yardarm_outbox_pending) + yardarm_outbox_pendng", "unknown series"),
    ],
)
def test_the_reader_reports_what_does_not_exist(expr: str, problem: str) -> None:
    problems = reference_problems(expr)
    assert any(problem in found for found in problems), problems


def test_the_reader_accepts_what_exists() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, step) (rate(yardarm_saga_step_duration_seconds"
        '_bucket{environment=~"$environment", step!="x"}[$__rate_interval]))) '
        "/ on (step) group_left sum by (step) (rate(yardarm_saga_steps_total[5m])) "
        "+ 2 * yardarm_datastore_keys offset 5m"
    )
    assert reference_problems(expr) == []
    assert [s.name for s in selectors(expr)] == [
        "yardarm_saga_step_duration_seconds_bucket",
        "yardarm_saga_steps_total",
        "yardarm_datastore_keys",
    ]
