"""yardarm fulfillment: the payment and shipping participants of the order saga.

Commands arrive on JetStream (`cmd.payments.*`, `cmd.shipping.*`, schema 1 or 2); each is
applied once (inbox, ledger and reply outbox in one Postgres transaction) and answered on
`evt.*`; a command that keeps failing ends in the DLQ stream.
"""

from yardarm_fulfillment.app import Fulfillment, create_fulfillment
from yardarm_fulfillment.payments import decline_reason, luhn_valid
from yardarm_fulfillment.settings import FulfillmentSettings
from yardarm_fulfillment.shipping import failure_reason

__all__ = [
    "Fulfillment",
    "FulfillmentSettings",
    "create_fulfillment",
    "decline_reason",
    "failure_reason",
    "luhn_valid",
]
