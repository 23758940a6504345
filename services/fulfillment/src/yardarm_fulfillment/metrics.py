"""The fulfillment service's domain metrics (the kit's ConsumerMetrics count deliveries)."""

from __future__ import annotations

from yardarm_kit import Metrics


class FulfillmentMetrics:
    """Participant outcomes and the outbox backlog."""

    def __init__(self, metrics: Metrics) -> None:
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
