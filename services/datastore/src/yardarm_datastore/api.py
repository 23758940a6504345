"""The KV HTTP API over a Raft replica; every bad input is a precise problem.

Any replica answers: a follower hands writes and linearizable reads to the leader over
the Raft stream and answers from its own state machine; `consistency=stale` reads are
served from the replica's own applied state.

Every operation is registered with the types of `models` (the kit validates parameters
and bodies with them before a handler runs, and documents them in /openapi.json) and
guarded by `auth.Guard` (authorization before validation).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from opentelemetry.trace import Span
from yardarm_kit import Header, Param, Problem, Reply, Service, params_of, parse_json
from yardarm_kit.datastore_client import KEY_REUSED_TYPE

from yardarm_datastore import auth
from yardarm_datastore.models import (
    DEFAULT_LIMIT,
    MAX_IDEMPOTENCY_KEY,
    MAX_KEY_CHARS,
    MAX_LIMIT,
    MAX_VALUE_BYTES,
    Consistency,
    IdempotencyKey,
    KeyProblem,
    KeyText,
    KvEntry,
    KvList,
    KvWritten,
    Limit,
    PrefixText,
    PutBody,
    VersionConflict,
    VersionParam,
)
from yardarm_datastore.replica import Replica, Unavailable
from yardarm_datastore.state import REUSED, Command, Outcome, delete_command, put_command

# Any text (the empty key and line breaks too: `.` would leave `/kv/a%0Ab` unrouted, a
# 404 before any check), so every invalid key is a 422 after authorization.
KEY_ROUTE = r"/kv/{key:[\s\S]*}"
REUSED_TYPE = KEY_REUSED_TYPE  # the kit's client recognizes this answer

TAGS = ("kv",)

RETRY = Header("seconds to wait before retrying", required=True)
REPLAYED = Header(
    "`true` when this is the recorded outcome of an earlier write with the same "
    "Idempotency-Key and the same request",
    schema={"type": "string", "enum": ["true"]},
)
UNAVAILABLE = Reply.error(
    "no leader or no quorum now (an election, a partition); a write's outcome is unknown: "
    "retry with the same Idempotency-Key",
    **{"Retry-After": RETRY},
)


def _links(*, delete: bool) -> dict[str, dict[str, Any]]:
    key = {"key": "$response.body#/key"}
    links: dict[str, dict[str, Any]] = {"GetKey": {"operationId": "getKey", "parameters": key}}
    if delete:
        links["DeleteKey"] = {
            "operationId": "deleteKey",
            "parameters": {**key, "if_version": "$response.body#/version"},
        }
    return links


class KVApi:
    """Routes for /kv on the service's app."""

    def __init__(self, service: Service, replica: Replica, guard: auth.Guard) -> None:
        self._service = service
        self._replica = replica
        self._writes = service.metrics.counter(
            "yardarm_datastore_writes_total",
            "KV writes by operation (put, delete) and outcome.",
            ("op", "outcome"),
        )
        key = Param(
            "key", "path", KeyText,
            f"the key: 1 to {MAX_KEY_CHARS} characters, no control characters",
        )  # fmt: skip
        consistency = Param(
            "consistency", "query", Consistency,
            "`linearizable` (the default: confirmed with a quorum) or `stale` (this "
            "replica's applied state)",
        )  # fmt: skip
        idempotency = Param(
            "Idempotency-Key", "header", IdempotencyKey,
            f"names this write: 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters; a retry "
            "with the same key and request applies once",
        )  # fmt: skip
        guard.add(
            "GET", "/kv", self.list, rule=auth.read_prefix,
            permission="read on the prefix (a permission that covers every key under it)",
            operation_id="listKeys", summary="List keys by prefix, in key order", tags=TAGS,
            params=[
                Param("prefix", "query", PrefixText, "only keys that start with this"),
                Param("after", "query", KeyText, "only keys after this one: the `next` of "
                      "the previous page"),
                Param("limit", "query", Limit, f"at most this many items (default "
                      f"{DEFAULT_LIMIT}, at most {MAX_LIMIT})"),
                consistency,
            ],
            responses={200: Reply("a page of entries", KvList), 503: UNAVAILABLE},
        )  # fmt: skip
        guard.add(
            "GET", KEY_ROUTE, self.get, rule=auth.read_key, permission="read on the key",
            operation_id="getKey", summary="Read a key", tags=TAGS,
            params=[key, consistency],
            responses={
                200: Reply("the entry", KvEntry),
                404: Reply("there is no such key", KeyProblem, problem=True),
                503: UNAVAILABLE,
            },
        )  # fmt: skip
        guard.add(
            "PUT", KEY_ROUTE, self.put, rule=auth.write_key, permission="write on the key",
            operation_id="putKey", summary="Write a key (create or update)", tags=TAGS,
            body=PutBody, params=[key, idempotency],
            responses={
                200: Reply("updated", KvWritten, headers={"Idempotent-Replayed": REPLAYED},
                           links=_links(delete=True)),
                201: Reply("created", KvWritten, headers={"Idempotent-Replayed": REPLAYED},
                           links=_links(delete=True)),
                409: Reply(
                    "the key is not at `if_version`; the problem carries `key`, "
                    "`expected_version` and `current_version`", VersionConflict, problem=True,
                ),
                413: Reply.error(f"the value is over {MAX_VALUE_BYTES} bytes as compact JSON"),
                422: Reply.error(
                    "the body or a parameter does not validate (`errors` names each field), "
                    "or the Idempotency-Key was used for a different request"
                ),
                503: UNAVAILABLE,
            },
        )  # fmt: skip
        guard.add(
            "DELETE", KEY_ROUTE, self.delete, rule=auth.write_key, permission="write on the key",
            operation_id="deleteKey", summary="Delete a key", tags=TAGS,
            params=[
                key,
                Param("if_version", "query", VersionParam, "delete only if the key is at "
                      "this version"),
                idempotency,
            ],
            responses={
                200: Reply("deleted; `version` is the revision of the delete", KvWritten,
                           headers={"Idempotent-Replayed": REPLAYED}),
                404: Reply("there is no such key", KeyProblem, problem=True),
                409: Reply(
                    "the key is not at `if_version`; the problem carries `key`, "
                    "`expected_version` and `current_version`", VersionConflict, problem=True,
                ),
                422: Reply.error(
                    "a parameter does not validate, or the Idempotency-Key was used for a "
                    "different request"
                ),
                503: UNAVAILABLE,
            },
        )  # fmt: skip

    async def get(self, request: web.Request) -> web.Response:
        params = params_of(request)
        key: str = params["key"]
        try:
            entry = await self._replica.get(key, linearizable=params["consistency"] != "stale")
        except Unavailable as exc:
            raise _unavailable(exc) from None
        if entry is None:
            raise _not_found(key)
        return web.json_response({"key": key, "value": entry.value, "version": entry.version})

    async def list(self, request: web.Request) -> web.Response:
        params = params_of(request)
        try:
            items, next_key = await self._replica.list(
                params["prefix"] or "",
                params["limit"] or DEFAULT_LIMIT,
                params["after"],
                linearizable=params["consistency"] != "stale",
            )
        except Unavailable as exc:
            raise _unavailable(exc) from None
        return web.json_response(
            {
                "items": [{"key": k, "value": e.value, "version": e.version} for k, e in items],
                "next": next_key,
            }
        )

    async def put(self, request: web.Request) -> web.Response:
        params = params_of(request)
        body = await parse_json(request, PutBody)
        size = len(json.dumps(body.value, separators=(",", ":")).encode())
        if size > MAX_VALUE_BYTES:
            raise Problem(
                413,
                "Value too large",
                f"the value is {size} bytes as compact JSON; the limit is {MAX_VALUE_BYTES} bytes",
            )
        command = put_command(params["key"], body.value, body.if_version, params["Idempotency-Key"])
        return await self._write("put", command)

    async def delete(self, request: web.Request) -> web.Response:
        params = params_of(request)
        command = delete_command(params["key"], params["if_version"], params["Idempotency-Key"])
        return await self._write("delete", command)

    async def _write(self, op: str, command: Command) -> web.Response:
        with self._service.tracer.start_as_current_span(f"kv.{op}") as span:
            _describe(span, command["k"], command.get("iv"), command.get("ik"))
            # A write whose Idempotency-Key was already applied is committed: replay it
            # (or refuse another request under that key) from here.
            outcome = self._replica.state.recorded(command)
            try:
                if outcome is None:  # the span covers the proposal through commit and apply
                    outcome = await self._replica.propose(command)
            except Unavailable as exc:
                self._writes.inc(op=op, outcome="unavailable")
                raise _unavailable(exc) from None
            return self._answer(op, outcome, span)

    def _answer(self, op: str, outcome: Outcome, span: Span) -> web.Response:
        span.set_attribute("yardarm.kv.status", outcome.status)
        span.set_attribute("yardarm.kv.replayed", outcome.replayed)
        self._writes.inc(op=op, outcome=_outcome_label(op, outcome))
        key = outcome.body["key"]
        if outcome.status == 409:
            current = outcome.body["current_version"]
            raise Problem(
                409,
                "Version conflict",
                f"{key!r} is at version {current}, not {outcome.body['expected_version']}; "
                "read it again and retry with if_version set to its current version",
                extra=outcome.body,
            )
        if outcome.status == 404:
            raise _not_found(key)
        if outcome.status == REUSED:
            raise Problem(
                422,
                "Idempotency-Key reused with a different request",
                "this Idempotency-Key was first used for another request (another key, "
                "operation or body); nothing was written. Send a new request with a new key",
                type=REUSED_TYPE,
            )
        span.set_attribute("yardarm.kv.version", outcome.body["version"])
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
        return web.json_response(outcome.body, status=outcome.status, headers=headers)


def _describe(span: Span, key: str, if_version: int | None, idem: str | None) -> None:
    span.set_attribute("yardarm.kv.key", key)
    if if_version is not None:
        span.set_attribute("yardarm.kv.if_version", if_version)
    if idem is not None:
        span.set_attribute("yardarm.kv.idempotency_key", idem)


def _outcome_label(op: str, outcome: Outcome) -> str:
    if outcome.replayed:
        return "replayed"
    if outcome.status == 409:
        return "conflict"
    if outcome.status == 404:
        return "not_found"
    if outcome.status == REUSED:
        return "key_reused"
    if op == "delete":
        return "deleted"
    return "created" if outcome.status == 201 else "updated"


def _not_found(key: str) -> Problem:
    return Problem(404, "Key not found", f"there is no key {key!r}", extra={"key": key})


def _unavailable(exc: Exception) -> Problem:
    return Problem(503, "Datastore unavailable", str(exc), headers={"Retry-After": "1"})
