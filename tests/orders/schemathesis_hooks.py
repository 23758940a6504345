"""Schemathesis hooks for fuzzing orders (schemathesis.toml's orders project loads them).

Three refusals of a schema-valid order are the contract, not a document that says less
than the truth, and no schema can state them: an SKU that is not in the catalog (live
data), an Idempotency-Key reused with another body (earlier requests), and one SKU's
lines merged above the line maximum (a sum over array items). Exactly those failures of
`positive_data_acceptance` are dropped, each recognized by its problem; every other
refusal of a schema-valid request still fails the run.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

UNKNOWN_SKU_TYPE = "urn:yardarm:orders:unknown-sku"
KEY_REUSED_TYPE = "urn:yardarm:orders:idempotency-key-reused"
MERGED_QUANTITY = "lines are merged and may total at most"


def contract_refusal(problem: Any) -> bool:
    """Whether a 422 problem is one of the three refusals above."""
    if not isinstance(problem, dict):
        return False
    if problem.get("type") in (UNKNOWN_SKU_TYPE, KEY_REUSED_TYPE):
        return True
    errors = problem.get("errors")
    return (
        isinstance(errors, list)
        and bool(errors)
        and all(
            isinstance(error, dict) and MERGED_QUANTITY in str(error.get("message"))
            for error in errors
        )
    )


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 422:
        return True
    try:
        problem = response.json()
    except ValueError:
        return True
    return not contract_refusal(problem)
