"""The fulfillment service's domain metrics."""

from __future__ import annotations

from yardarm_kit import Metrics

HANDLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class FulfillmentMetrics:
    """Consumer outcomes, participant outcomes and the outbox backlog."""

    def __init__(self, metrics: Metrics) -> None:
        self.messages = metrics.counter(
            "yardarm_consumer_messages_total",
            "Command deliveries by outcome: processed, duplicate (inbox hit) or failed.",
            ("consumer", "subject", "outcome"),
        )
        self.handle_duration = metrics.histogram(
            "yardarm_consumer_handle_duration_seconds",
            "Time to handle one command delivery, transaction included.",
            ("consumer",),
            buckets=HANDLE_BUCKETS,
        )
        self.payments = metrics.counter(
            "yardarm_payments_total",
            "Payment ledger changes: charged, declined, refunded, nothing_to_refund.",
            ("outcome",),
        )
        self.shipments = metrics.counter(
            "yardarm_shipments_total",
            "Shipment changes: scheduled, failed, cancelled.",
            ("outcome",),
        )
        self.outbox_pending = metrics.gauge(
            "yardarm_outbox_pending", "Replies committed but not yet published."
        )
