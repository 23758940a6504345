"""Schemathesis hooks for fuzzing the datastore (`SCHEMATHESIS_HOOKS=<this module>`).

The fuzzer sends arbitrary Idempotency-Keys, and so sometimes one key with two different
requests: the datastore answers the second with the documented 422 ("Idempotency-Key
reused with a different request"), which is the contract, not a rejected valid request.
Exactly that failure is dropped, recognized by its problem type; every other 422 to a
schema-valid request still fails the run.

In the stateful phase each call gets a fresh Idempotency-Key instead: a chain (create,
delete, read) must not be answered by replays of an identical earlier chain, which apply
nothing (as they should) and so read to the checks as a deleted key that is still there.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

REUSED_TYPE = "urn:yardarm:datastore:idempotency-key-reused"
HEADER = "Idempotency-Key"
VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_fresh = itertools.count(1)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    headers = case.headers
    if meta is None or meta.phase.name != "stateful" or not headers:
        return
    key = headers.get(HEADER)
    if isinstance(key, str) and VALID_KEY.fullmatch(key):  # an invalid one stays invalid
        headers[HEADER] = f"stateful-{os.getpid()}-{next(_fresh)}"


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 422:
        return True
    try:
        problem = response.json()
    except ValueError:
        return True
    return not (isinstance(problem, dict) and problem.get("type") == REUSED_TYPE)
