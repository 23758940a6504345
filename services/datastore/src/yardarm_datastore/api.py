"""The KV HTTP API over a Raft replica; every bad input is a precise problem.

Any replica answers: a follower hands writes and linearizable reads to the leader over
the Raft stream and answers from its own state machine; `consistency=stale` reads are
served from the replica's own applied state.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Any

from aiohttp import web
from opentelemetry.trace import Span
from pydantic import BaseModel, ConfigDict, Field
from yardarm_kit import Problem, Service, parse_json

from yardarm_datastore.replica import Replica, Unavailable
from yardarm_datastore.state import Command, Outcome, delete_command, put_command

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 256 * 1024
MAX_IDEMPOTENCY_KEY = 255
MAX_VERSION = 2**63 - 1
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CONSISTENCY = ("linearizable", "stale")
VERSION_TEXT = re.compile(r"[0-9]{1,19}")


class PutBody(BaseModel):
    """`{"value": <any JSON>, "if_version": <int >= 0, optional>}`."""

    model_config = ConfigDict(extra="forbid")

    value: Any
    if_version: Annotated[int, Field(strict=True, ge=0, le=MAX_VERSION)] | None = None


def _text(raw: str, what: str, *, minimum: int) -> str:
    """A key-like string: valid UTF-8, minimum..512 bytes, no control characters."""
    try:
        size = len(raw.encode())
    except UnicodeEncodeError:
        raise Problem(422, f"Invalid {what}", f"the {what} is not valid UTF-8") from None
    if not minimum <= size <= MAX_KEY_BYTES:
        raise Problem(
            422,
            f"Invalid {what}",
            f"the {what} must be {minimum} to {MAX_KEY_BYTES} bytes of UTF-8 (got {size})",
        )
    bad = next((ch for ch in raw if unicodedata.category(ch) == "Cc"), None)
    if bad is not None:
        raise Problem(
            422,
            f"Invalid {what}",
            f"the {what} contains the control character U+{ord(bad):04X}; use printable text",
        )
    return raw


def _key(request: web.Request) -> str:
    return _text(request.match_info["key"], "key", minimum=1)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise Problem(
            422, "Invalid limit", f"limit must be an integer from 1 to {MAX_LIMIT} (got {raw!r})"
        )
    return int(raw)


def _if_version_param(request: web.Request) -> int | None:
    raw = request.query.get("if_version")
    if raw is None:
        return None
    if not VERSION_TEXT.fullmatch(raw) or int(raw) > MAX_VERSION:
        raise Problem(
            422, "Invalid if_version", f"if_version must be an integer >= 0 (got {raw!r})"
        )
    return int(raw)


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise Problem(
            400,
            "Invalid Idempotency-Key",
            f"the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} characters "
            f"(got {len(key)})",
        )
    return key


def _linearizable(request: web.Request) -> bool:
    value = request.query.get("consistency", "linearizable")
    if value not in CONSISTENCY:
        raise Problem(
            422,
            "Invalid consistency",
            f"consistency must be one of {', '.join(CONSISTENCY)} (got {value!r})",
        )
    return value == "linearizable"


async def _put_body(request: web.Request) -> PutBody:
    try:
        body = await parse_json(request, PutBody)
    except RecursionError:
        raise Problem(422, "Invalid value", "the JSON document is nested too deeply") from None
    try:
        size = len(json.dumps(body.value, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise Problem(
            422,
            "Invalid value",
            "the value is not portable JSON: NaN and Infinity are not allowed",
            errors=[{"field": "value", "message": "NaN and Infinity are not JSON"}],
        ) from None
    except RecursionError:
        raise Problem(422, "Invalid value", "the value is nested too deeply") from None
    if size > MAX_VALUE_BYTES:
        raise Problem(
            413,
            "Value too large",
            f"the value is {size} bytes as compact JSON; the limit is {MAX_VALUE_BYTES} bytes",
        )
    return body


class KVApi:
    """Routes for /kv on the service's app."""

    def __init__(self, service: Service, replica: Replica) -> None:
        self._service = service
        self._replica = replica
        self._writes = service.metrics.counter(
            "yardarm_datastore_writes_total",
            "KV writes by operation (put, delete) and outcome.",
            ("op", "outcome"),
        )
        router = service.app.router
        router.add_get("/kv", self.list)
        for method in ("GET", "PUT", "DELETE"):
            router.add_route(method, "/kv/", self.empty_key)
        router.add_get("/kv/{key:.+}", self.get)
        router.add_put("/kv/{key:.+}", self.put)
        router.add_delete("/kv/{key:.+}", self.delete)

    async def empty_key(self, request: web.Request) -> web.Response:
        raise Problem(422, "Invalid key", f"the key must be 1 to {MAX_KEY_BYTES} bytes: /kv/<key>")

    async def get(self, request: web.Request) -> web.Response:
        key = _key(request)
        linearizable = _linearizable(request)
        try:
            entry = await self._replica.get(key, linearizable=linearizable)
        except Unavailable as exc:
            raise _unavailable(exc) from None
        if entry is None:
            raise Problem(404, "Key not found", f"there is no key {key!r}", extra={"key": key})
        return web.json_response({"key": key, "value": entry.value, "version": entry.version})

    async def list(self, request: web.Request) -> web.Response:
        prefix = _text(request.query.get("prefix", ""), "prefix", minimum=0)
        after = request.query.get("after")
        if after is not None:
            after = _text(after, "after", minimum=1)
        limit = _limit(request)
        linearizable = _linearizable(request)
        try:
            items, next_key = await self._replica.list(
                prefix, limit, after, linearizable=linearizable
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
        key = _key(request)
        idem = _idempotency_key(request)
        body = await _put_body(request)
        command = put_command(key, body.value, body.if_version, idem)
        return await self._write("put", command)

    async def delete(self, request: web.Request) -> web.Response:
        key = _key(request)
        idem = _idempotency_key(request)
        if_version = _if_version_param(request)
        return await self._write("delete", delete_command(key, if_version, idem))

    async def _write(self, op: str, command: Command) -> web.Response:
        with self._service.tracer.start_as_current_span(f"kv.{op}") as span:
            _describe(span, command["k"], command.get("iv"), command.get("ik"))
            # A write whose key was already applied is committed: replay it from here.
            outcome = self._replica.state.recorded(command.get("ik"))
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
            raise Problem(404, "Key not found", f"there is no key {key!r}", extra={"key": key})
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
    if op == "delete":
        return "deleted"
    return "created" if outcome.status == 201 else "updated"


def _unavailable(exc: Exception) -> Problem:
    return Problem(503, "Datastore unavailable", str(exc), headers={"Retry-After": "1"})
