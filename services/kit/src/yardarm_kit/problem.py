"""RFC 9457 problem details: the one error shape every service answers with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise from a handler to answer `application/problem+json` with this status."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail or ''}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type or "about:blank"
        self.errors = errors
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """The JSON document of this problem."""
        doc: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail is not None:
            doc["detail"] = self.detail
        if self.errors is not None:
            doc["errors"] = self.errors
        doc.update(self.extra)
        return doc

    def response(self) -> web.Response:
        """The aiohttp response for this problem."""
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )
