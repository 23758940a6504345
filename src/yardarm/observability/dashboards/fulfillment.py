"""Fulfillment: its JetStream consumers (payments, shipping), what they decide, and the
outbox that carries their replies back to orders."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from yardarm.observability.dashboards.common import (
    Query,
    Row,
    Scope,
    agg,
    dashboard,
    error_logs,
    graph,
    latency,
    sum_increase,
    sum_rate,
)

UID = "yardarm-fulfillment"
SERVICE = "fulfillment"

_S = Scope(SERVICE)


def build() -> dm.Dashboard:
    return dashboard(
        UID,
        "Yardarm: fulfillment",
        "The payment and shipping participants: how many commands they consume and with "
        "what verdict, what is redelivered or dead-lettered, how far behind they are, and "
        "what they decide (charges, declines, shipments).",
        service=SERVICE,
        rows=[
            Row(
                "Consumers",
                [
                    graph(
                        "Throughput by outcome",
                        "How many commands does each consumer settle, and with what "
                        "verdict (processed, duplicate, failed, dead_lettered)?",
                        "ops",
                        [
                            Query(
                                sum_rate(
                                    ("consumer", "outcome"),
                                    _S("yardarm_consumer_messages_total"),
                                ),
                                "{{consumer}} {{outcome}}",
                            )
                        ],
                        stacked=True,
                    ),
                    graph(
                        "Lag",
                        "How many commands wait to be delivered to each consumer? It "
                        "should stay near zero; a steady climb means the consumer cannot "
                        "keep up (or is not running).",
                        "short",
                        [
                            Query(
                                agg("max", ("consumer",), _S("yardarm_consumer_lag")),
                                "{{consumer}}",
                            )
                        ],
                    ),
                    graph(
                        "Redeliveries",
                        "How many deliveries are of a message delivered before (a handler "
                        "failed, or its ack did not arrive in time)?",
                        "ops",
                        [
                            Query(
                                sum_rate(("consumer",), _S("yardarm_consumer_redeliveries_total")),
                                "{{consumer}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Dead letters",
                        "Which messages were given up on and stored on the DLQ stream? "
                        "Messages per window; `yardarm dlq` lists and replays them.",
                        "short",
                        [
                            Query(
                                sum_increase(
                                    ("consumer", "subject"),
                                    _S("yardarm_consumer_dead_letters_total"),
                                ),
                                "{{consumer}} {{subject}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "In flight",
                        "How many deliveries are being handled right now?",
                        "short",
                        [
                            Query(
                                agg("sum", ("consumer",), _S("yardarm_consumer_in_flight")),
                                "{{consumer}}",
                            )
                        ],
                        width=8,
                    ),
                    latency(
                        "Batch duration",
                        "How long does a fetched batch take to settle, per consumer? "
                        "Exemplars open the trace of a message in a slow batch.",
                        _S("yardarm_consumer_batch_duration_seconds_bucket"),
                        ("consumer",),
                        "{{consumer}}",
                        width=24,
                    ),
                ],
            ),
            Row(
                "Decisions and outbox",
                [
                    graph(
                        "Payments by outcome",
                        "How many payments are charged, declined or refunded?",
                        "ops",
                        [
                            Query(
                                sum_rate(("outcome",), _S("yardarm_payments_total")),
                                "{{outcome}}",
                            )
                        ],
                        stacked=True,
                        width=8,
                    ),
                    graph(
                        "Shipments by outcome",
                        "How many shipments are scheduled, failed or cancelled?",
                        "ops",
                        [
                            Query(
                                sum_rate(("outcome",), _S("yardarm_shipments_total")),
                                "{{outcome}}",
                            )
                        ],
                        stacked=True,
                        width=8,
                    ),
                    graph(
                        "Outbox pending",
                        "How many replies are committed but not yet published? It should "
                        "drain to zero; a growing backlog means NATS is unreachable.",
                        "short",
                        [
                            Query(
                                agg("max", ("instance",), _S("yardarm_outbox_pending")),
                                "{{instance}}",
                            )
                        ],
                        width=8,
                    ),
                ],
            ),
            Row("Logs", [error_logs(SERVICE)]),
        ],
        tags=(SERVICE,),
    )
