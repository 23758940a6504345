"""The datastore as the orders API sees it: no usable answer is a 503 the client may
retry, whatever the cause; the cause goes to the log, not to the client.

A refused credential (401/403, `DatastoreRefused`) is to a client the same outage, but
to an operator a misconfiguration no retry mends (a wrong or rotated
`DATASTORE_TOKEN_FILE`, an access document without the `orders` role), so the log says
so in words.
"""

from __future__ import annotations

import logging

from yardarm_kit import Header, Problem, Reply
from yardarm_kit.datastore_client import DatastoreRefused, DatastoreUnavailable

RETRY_AFTER_S = 1
UNAVAILABLE = Reply.error(
    "the stock catalog (the datastore) gave no usable answer; retry after Retry-After",
    **{"Retry-After": Header("seconds to wait before retrying", required=True)},
)


def log_failure(log: logging.Logger, exc: DatastoreUnavailable, doing: str) -> None:
    """Log why the datastore did not answer `doing`; a refused credential as an error."""
    if isinstance(exc, DatastoreRefused):
        log.error(
            "the datastore refused this replica's credential while %s (status %d): check "
            "YARDARM_ORDERS_DATASTORE_TOKEN_FILE and the `orders` role in the datastore's "
            "access document",
            doing,
            exc.status,
            extra={"event": "datastore_credential_refused", "status": exc.status},
        )
    else:
        log.warning("the datastore did not answer while %s: %s", doing, exc)


def unavailable(log: logging.Logger, exc: DatastoreUnavailable, doing: str) -> Problem:
    """The 503 for a request that needed the datastore, after logging the cause."""
    log_failure(log, exc, doing)
    return Problem(
        503,
        "Stock unavailable",
        "the stock catalog could not be reached; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
