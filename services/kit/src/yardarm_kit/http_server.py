"""aiohttp's server with the kit's answers to requests that never reach a handler.

aiohttp answers a request it cannot parse (a bad request line, an oversized or duplicate
header, a broken chunked body) with a plain-text 400 that quotes the raw bytes back, and
serves HTTP/0.9 request lines as if they were HTTP/1.x. Here both get a problem+json 400
that names the fault without echoing input, the connection is closed, and the count
shows in `yardarm_http_malformed_requests_total`. A request line without a version
(`GET /`, HTTP/0.9) is malformed for us: no client of these APIs speaks it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import http_exceptions, web, web_protocol, web_server
from aiohttp.http import HttpVersion10

from yardarm_kit.problem import PROBLEM_CONTENT_TYPE

log = logging.getLogger("yardarm.http")

OnMalformed = Callable[[str], None]

# The fault, by the parser's exception class (most specific first); never its message,
# which quotes the request.
_FAULTS: tuple[tuple[type[BaseException], str, str], ...] = (
    (http_exceptions.BadHttpMethod, "invalid_method", "the request method is not valid"),
    (http_exceptions.LineTooLong, "too_long", "the request line or a header field is too long"),
    (http_exceptions.InvalidHeader, "invalid_header", "a header is invalid"),
    (http_exceptions.BadStatusLine, "bad_request_line", "the request line is not valid HTTP/1.x"),
    (http_exceptions.InvalidURLError, "invalid_url", "the request target is not a valid URL"),
    (http_exceptions.TransferEncodingError, "bad_encoding", "the chunked body is malformed"),
    (http_exceptions.ContentLengthError, "bad_length", "the body is shorter than its length"),
)


def _fault(exc: BaseException | None, message: str | None) -> tuple[str, str]:
    for kind, label, detail in _FAULTS:
        if isinstance(exc, kind):
            return label, detail
    lowered = (message or str(exc or "")).lower()
    if "duplicate" in lowered:
        return "duplicate_header", "a header that may appear once appears twice"
    if "too many headers" in lowered:
        return "too_many_headers", "the request has too many header fields"
    return "malformed", "the request is not valid HTTP/1.x"


def _problem(status: int, detail: str) -> web.Response:
    title = "Bad Request" if status == 400 else "Request failed"
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    response = web.Response(
        status=status, body=json.dumps(body).encode(), content_type=PROBLEM_CONTENT_TYPE
    )
    response.force_close()
    return response


class _Handler(web_protocol.RequestHandler):
    """One connection: aiohttp's, with problem+json for what the parser refuses."""

    on_malformed: OnMalformed | None = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the answer had begun: nothing can be said
            raise ConnectionError("response already started; closing the connection")
        if isinstance(exc, http_exceptions.HttpProcessingError) and status < 500:
            label, detail = _fault(exc, message)
            log.debug("malformed request from %s: %s", request.remote, label)
            if self.on_malformed is not None:
                self.on_malformed(label)
            return _problem(status, f"malformed request: {detail}")
        log.error("request from %s failed outside the handlers", request.remote, exc_info=exc)
        return _problem(500, "the server failed; see its logs")

    async def _handle_request(
        self, request: web.BaseRequest, start_time: float | None, request_handler: Any
    ) -> Any:
        if request.version < HttpVersion10:
            label, detail = "http09", "HTTP/0.9 request lines are not served; use HTTP/1.1"
            if self.on_malformed is not None:
                self.on_malformed(label)

            async def refuse(_: web.BaseRequest) -> web.StreamResponse:
                return _problem(400, f"malformed request: {detail}")

            request_handler = refuse
        return await super()._handle_request(request, start_time, request_handler)


class _Server(web_server.Server):
    def __init__(self, on_malformed: OnMalformed | None, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_malformed = on_malformed

    def __call__(self) -> web_protocol.RequestHandler:
        handler = _Handler(self, loop=self._loop, **self._kwargs)
        handler.on_malformed = self._on_malformed
        return handler


class AppRunner(web.AppRunner):
    """`aiohttp.web.AppRunner` whose connections answer malformed requests as problems."""

    def __init__(
        self, app: web.Application, *, on_malformed: OnMalformed | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._on_malformed = on_malformed

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        return _Server(
            self._on_malformed,
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
