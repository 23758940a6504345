"""The KV HTTP API over the durable store; every bad input is a precise problem."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from opentelemetry import trace
from yardarm_kit import Problem, Service

from yardarm_datastore.state import Outcome
from yardarm_datastore.store import Store

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 256 * 1024
MAX_IDEMPOTENCY_KEY = 255
CONSISTENCY = ("linearizable", "stale")


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    size = len(key.encode())
    if size == 0 or size > MAX_KEY_BYTES:
        raise Problem(422, "Invalid key", f"keys are 1 to {MAX_KEY_BYTES} bytes (got {size})")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise Problem(422, "Invalid key", "keys may not contain control characters")
    return key


def _int_param(
    request: web.Request, name: str, minimum: int, maximum: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Problem(422, f"Invalid {name}", f"{name} must be an integer (got {raw!r})") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise Problem(422, f"Invalid {name}", f"{name} must be {bound} (got {value})")
    return value


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise Problem(
            422, "Invalid Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )
    return key


def _consistency(request: web.Request) -> None:
    value = request.query.get("consistency", "linearizable")
    if value not in CONSISTENCY:
        raise Problem(
            422, "Invalid consistency", f"consistency must be one of {', '.join(CONSISTENCY)}"
        )


def _answer(outcome: Outcome, replayed: bool) -> web.Response:
    if outcome.status == 409:
        raise Problem(
            409,
            "Version conflict",
            f"{outcome.body['key']} is at version {outcome.body['current_version']}, "
            f"not {outcome.body['expected_version']}",
            extra={"current_version": outcome.body["current_version"]},
        )
    if outcome.status == 404:
        raise Problem(404, "Key not found", f"no key {outcome.body['key']!r}")
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return web.json_response(outcome.body, status=outcome.status, headers=headers)


class KVApi:
    """Routes for /kv."""

    def __init__(self, service: Service, store: Store) -> None:
        self._store = store
        self._writes = service.metrics.counter(
            "yardarm_datastore_writes_total",
            "KV writes by operation and outcome.",
            ("op", "outcome"),
        )
        router = service.app.router
        router.add_get("/kv", self.list)
        router.add_get("/kv/{key:.+}", self.get)
        router.add_put("/kv/{key:.+}", self.put)
        router.add_delete("/kv/{key:.+}", self.delete)

    async def get(self, request: web.Request) -> web.Response:
        key = _key(request)
        _consistency(request)
        entry = await self._store.get(key)
        if entry is None:
            raise Problem(404, "Key not found", f"no key {key!r}")
        return web.json_response({"key": key, "value": entry.value, "version": entry.version})

    async def list(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        after = request.query.get("after")
        limit = _int_param(request, "limit", 1, 1000) or 100
        _consistency(request)
        items, next_key = await self._store.list(prefix, limit, after)
        return web.json_response(
            {
                "items": [{"key": k, "value": e.value, "version": e.version} for k, e in items],
                "next": next_key,
            }
        )

    async def put(self, request: web.Request) -> web.Response:
        key = _key(request)
        idem = _idempotency_key(request)
        raw = await request.read()
        if len(raw) > MAX_VALUE_BYTES + 1024:
            raise Problem(413, "Value too large", f"values are at most {MAX_VALUE_BYTES} bytes")
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Problem(
                400, "Malformed JSON", f"the request body is not valid JSON: {exc}"
            ) from None
        errors = []
        if not isinstance(body, dict) or "value" not in body:
            errors.append(
                {"field": "value", "message": 'required: an object {"value": <any JSON>}'}
            )
        elif len(json.dumps(body["value"], separators=(",", ":"))) > MAX_VALUE_BYTES:
            raise Problem(413, "Value too large", f"values are at most {MAX_VALUE_BYTES} bytes")
        if_version = body.get("if_version") if isinstance(body, dict) else None
        if if_version is not None and (
            not isinstance(if_version, int) or isinstance(if_version, bool) or if_version < 0
        ):
            errors.append({"field": "if_version", "message": "must be an integer >= 0"})
        if isinstance(body, dict):
            unknown = sorted(set(body) - {"value", "if_version"})
            errors.extend({"field": name, "message": "unknown field"} for name in unknown)
        if errors:
            raise Problem(
                422, "Validation failed", "the request body is not a valid KV write", errors=errors
            )
        span = trace.get_current_span()
        span.set_attribute("yardarm.kv.key", key)
        outcome, replayed = await self._store.put(key, body["value"], if_version, idem)
        self._writes.inc(op="put", outcome=str(outcome.status))
        return _answer(outcome, replayed)

    async def delete(self, request: web.Request) -> web.Response:
        key = _key(request)
        idem = _idempotency_key(request)
        if_version = _int_param(request, "if_version", 1)
        outcome, replayed = await self._store.delete(key, if_version, idem)
        self._writes.inc(op="delete", outcome=str(outcome.status))
        return _answer(outcome, replayed)
