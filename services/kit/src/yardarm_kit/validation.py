"""Request body parsing with precise 400/422 problems instead of stack traces."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from yardarm_kit.problem import Problem

T = TypeVar("T", bound=BaseModel)


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as `{"field": "items.0.quantity", "message": ...}` items."""
    out = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"]) or "body"
        out.append({"field": loc, "message": error["msg"]})
    return out


async def parse_json(request: web.Request, model: type[T]) -> T:
    """The request body validated as `model`; 400 for bad JSON, 422 for invalid fields."""
    raw = await request.read()
    if not raw:
        raise Problem(400, "Malformed JSON", "the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "Malformed JSON", f"the request body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Problem(
            422,
            "Validation failed",
            "the request body does not match the expected shape",
            errors=field_errors(exc),
        ) from None
