"""The fulfillment OpenAPI document: complete, exact, and clean under schemathesis against
a real fulfillment instance (real Postgres and NATS) whose ledgers hold every kind of row."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from yardarm_fulfillment import FulfillmentSettings, create_fulfillment
from yardarm_fulfillment.ledger_api import PaymentsView, ShipmentView

from tests.openapi_checks import documented, routed, run_schemathesis

from .conftest import (
    CARD_DECLINED,
    Bus,
    StartFulfillment,
    base_url,
    cancel,
    charge,
    refund,
    schedule,
    wait_until,
)

# The saga ids schemathesis.toml's `fulfillment-test-sagas` dictionary names: each leaves
# a different kind of ledger row, so the fuzzer reads every shape the views can answer.
SAGAS = {
    "fuzz-charged": [charge("fuzz-charged")],
    "fuzz-declined": [charge("fuzz-declined", card=CARD_DECLINED)],
    "fuzz-refunded": [charge("fuzz-refunded"), refund("fuzz-refunded")],
    "fuzz-refund-first": [refund("fuzz-refund-first")],
    "fuzz-shipped": [schedule("fuzz-shipped")],
    "fuzz-noship": [schedule("fuzz-noship", customer_id="noship-9")],
    "fuzz-cancel-first": [cancel("fuzz-cancel-first")],
}


def _document(tmp_path: Path) -> dict[str, Any]:
    settings = FulfillmentSettings(
        port=1, database_url="postgresql://unused", nats_url="nats://unused", state_dir=tmp_path
    )
    document: dict[str, Any] = create_fulfillment(settings).service.api.document()
    return document


def test_every_route_is_documented_and_every_documented_operation_routed(
    tmp_path: Path,
) -> None:
    settings = FulfillmentSettings(
        port=1, database_url="postgresql://unused", nats_url="nats://unused", state_dir=tmp_path
    )
    service = create_fulfillment(settings).service
    document = service.api.document()
    assert routed(service.app) == documented(document)
    assert {("GET", "/payments/{saga_id}"), ("GET", "/shipments/{saga_id}")} <= documented(document)


def test_the_document_loads_in_schemathesis_and_declares_what_the_views_answer(
    tmp_path: Path,
) -> None:
    document = _document(tmp_path)
    schema = schemathesis.openapi.from_dict(document)
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert {"GET /payments/{saga_id}", "GET /shipments/{saga_id}"} <= labels
    for path in ("/payments/{saga_id}", "/shipments/{saga_id}"):
        operation = document["paths"][path]["get"]
        assert set(operation["responses"]) == {"200", "400", "404", "422", "500", "504"}
        [saga_id] = operation["parameters"]
        assert saga_id["schema"]["maxLength"] == 200
    shipment = document["components"]["schemas"]["ShipmentView"]
    assert shipment["additionalProperties"] is False
    assert set(shipment["required"]) == set(shipment["properties"])
    assert {"type": "null"} in shipment["properties"]["items"]["anyOf"]


async def _seed(bus: Bus, url: str) -> None:
    """Send every saga's commands and wait until the views show their rows. (The replies
    are not waited for: their ids are fixed too, and JetStream drops a reply it saw in
    an earlier test as a duplicate.)"""
    run = uuid.uuid4().hex
    for envelopes in SAGAS.values():
        for envelope in envelopes:
            await bus.send(envelope, msg_id=f"{envelope.id}:{run}")

    async def recorded() -> bool:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for saga_id, envelopes in SAGAS.items():
                view = "payments" if envelopes[0].type.startswith("payments.") else "shipments"
                response = await client.get(f"/{view}/{saga_id}")
                if response.status_code != 200:
                    return False
                if view == "payments" and len(response.json()["entries"]) < len(envelopes):
                    return False
        return True

    await wait_until(recorded, what="every seeded saga's ledger rows")


async def test_the_views_answer_every_row_shape_their_models_declare(
    bus: Bus, start_fulfillment: StartFulfillment
) -> None:
    service = await start_fulfillment()
    url = base_url(service)
    await _seed(bus, url)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        refund_first = PaymentsView.model_validate(
            (await client.get("/payments/fuzz-refund-first")).json()
        )
        [entry] = refund_first.entries
        assert entry.kind == "refund" and entry.amount_cents == 0
        assert entry.card_last4 is None and entry.refund_of is None
        refunded = PaymentsView.model_validate((await client.get("/payments/fuzz-refunded")).json())
        charged, returned = refunded.entries
        assert returned.refund_of == charged.id
        cancelled = ShipmentView.model_validate(
            (await client.get("/shipments/fuzz-cancel-first")).json()
        )
        assert cancelled.status == "cancelled"
        assert cancelled.items is None and cancelled.customer_id is None
        failed = ShipmentView.model_validate((await client.get("/shipments/fuzz-noship")).json())
        assert failed.status == "failed" and failed.reason == "address not serviceable"


async def test_schemathesis_finds_nothing(bus: Bus, start_fulfillment: StartFulfillment) -> None:
    service = await start_fulfillment()
    url = base_url(service)
    await _seed(bus, url)
    run = await run_schemathesis(url)
    assert run.clean, run.report()
