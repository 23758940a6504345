"""The one input-decoding path: JSON bodies within limits, then pydantic, as problems.

Every service reads request bodies through here, so one set of limits holds everywhere
(I-JSON, RFC 7493, is the model): nesting at most `MAX_DEPTH` deep, integers of at most
`MAX_INT_DIGITS` digits (beyond that, Python's int-string limit or a database column
would fail later, as a 500), finite numbers only, and strings (keys too) free of U+0000
and of lone surrogates, which no database column or UTF-8 encoder takes. Anything else
is a 400 (not JSON we take) or a 422 (JSON of the wrong shape), never a stack trace.
A body declared as anything but JSON (a form, multipart, another charset) is a 415
before a byte of it is read: it was never meant for this API, and whatever the handler
would do first (ask the Raft leader, open a transaction) should not happen for it.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from yardarm_kit.problem import Problem

T = TypeVar("T", bound=BaseModel)

BODY_KEY = web.RequestKey("yardarm.body", BaseModel)
MAX_DEPTH = 32
MAX_INT_DIGITS = 20  # a signed or unsigned 64-bit integer fits


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as `{"field": "items.0.quantity", "message": ...}` items."""
    out = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"]) or "body"
        out.append({"field": loc, "message": error["msg"]})
    return out


class _Unacceptable(ValueError):
    """JSON that parses but falls outside what the services take."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Unacceptable(
            f"an integer has {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS} are "
            "accepted (64-bit range)"
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unacceptable(f"the number {text[:40]} is out of the finite double range")
    return value


def _parse_constant(name: str) -> Any:
    raise _Unacceptable(f"{name} is not JSON; numbers must be finite")


def _bad_text(text: str) -> str | None:
    """Why a string cannot be stored or encoded, or None."""
    if "\x00" in text:
        return "contains U+0000 (NUL), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


def check_text(text: str, where: str) -> None:
    """422 when `text` (a decoded path segment, a query value) has NUL or a surrogate."""
    reason = _bad_text(text)
    if reason is not None:
        raise Problem(422, "Invalid text", f"{where} {reason}", errors=[_err(where, reason)])


def _err(where: str, reason: str) -> dict[str, str]:
    return {"field": where or "body", "message": reason}


def _refuse_text(text: str, where: str, what: str) -> None:
    reason = _bad_text(text)
    if reason is not None:
        raise Problem(422, "Invalid text", f"{what} {reason}", errors=[_err(where, reason)])


def _check_tree(document: Any) -> None:
    """Depth and string content, walked without recursion (a deep document cannot
    exhaust the stack here)."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, str):
            _refuse_text(node, where, where or "the body")
        elif isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                raise _Unacceptable(f"the document is nested more than {MAX_DEPTH} levels deep")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                path = f"{where}.{key}" if where else str(key)
                if isinstance(key, str):
                    _refuse_text(key, where, f"a key at {where or 'the top'}")
                stack.append((child, path, depth + 1))


def decode_json(raw: bytes) -> Any:
    """`raw` as a JSON document within the limits above; Problem 400/422 otherwise."""
    if not raw.strip():
        raise Problem(400, "Malformed JSON", "the request body is empty; send a JSON document")
    try:
        # UTF-8 only, no byte-order mark (RFC 8259 section 8.1): json.loads would also
        # take UTF-16 and UTF-32 bytes, which no client of these APIs sends on purpose.
        document = json.loads(
            raw.decode("utf-8"),
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
        _check_tree(document)
    except _Unacceptable as exc:
        raise Problem(400, "Unsupported JSON", str(exc)) from None
    except RecursionError:
        raise Problem(
            400, "Unsupported JSON", f"the document is nested more than {MAX_DEPTH} levels deep"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "Malformed JSON", f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:  # anything else the decoder refuses
        raise Problem(
            400, "Malformed JSON", f"the request body is not usable JSON: {exc}"
        ) from None
    return document


def check_media_type(request: web.Request) -> None:
    """415 unless the body is declared JSON (`application/json`, `application/*+json`).

    No Content-Type at all is taken as JSON, and so is `application/octet-stream` (what
    clients send for bytes they did not label); a charset other than UTF-8 is refused,
    since JSON on the wire is UTF-8 (RFC 8259).
    """
    if "Content-Type" not in request.headers:
        return
    media = request.content_type
    charset = (request.charset or "utf-8").lower()
    json_media = media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )
    if (json_media or media == "application/octet-stream") and charset in ("utf-8", "utf8"):
        return
    raise Problem(
        415,
        "Unsupported media type",
        "the body must be JSON in UTF-8: send Content-Type: application/json",
        headers={"Accept-Post": "application/json"},
    )


async def decode_body(request: web.Request) -> Any:
    """The request body as a JSON document (see `decode_json`), once its type is JSON."""
    check_media_type(request)
    return decode_json(await request.read())


def validate_document(document: Any, model: type[T]) -> T:
    """`document` as `model`; 422 with one error per invalid field."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise Problem(
            422,
            "Validation failed",
            "the request body does not match the expected shape",
            errors=field_errors(exc),
        ) from None


async def parse_json(request: web.Request, model: type[T]) -> T:
    """The request body validated as `model`; 400 for bad JSON, 422 for invalid fields.

    An operation registered with this body model was validated before its handler ran:
    that result is returned without reading the body again.
    """
    done = request.get(BODY_KEY)
    if isinstance(done, model):
        return done
    return validate_document(await decode_body(request), model)
