"""The kit's one input path: JSON within limits, URLs, deadlines and malformed HTTP.

Each case is a defect found by fuzzing a running stack (a 500, a silent reinterpretation
or an echo of raw bytes); every service reads input through these paths, so the fix and
its test live here once.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import BaseModel, Field
from yardarm_kit import Param, Problem, Reply, Service, ServiceSettings, params_of, parse_json
from yardarm_kit.validation import MAX_DEPTH, MAX_INT_DIGITS, decode_json
from yarl import URL

from tests.conftest import free_port, raw_exchange


class Line(BaseModel):
    name: str
    quantity: int


def _problem(call: Any) -> Problem:
    with pytest.raises(Problem) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("raw", "status", "says"),
    [
        (b"", 400, "empty"),
        (b"{", 400, "not valid JSON"),
        (b"\xff\xfe\x00", 400, "JSON"),
        ('{"a": 1}'.encode("utf-16"), 400, "not valid JSON"),
        (b'\xef\xbb\xbf{"a": 1}', 400, "not valid JSON"),
        (b'{"n": ' + b"9" * 5000 + b"}", 400, f"at most {MAX_INT_DIGITS}"),
        (b'{"n": -' + b"9" * 21 + b"}", 400, "21 digits"),
        (b"[" * 5000 + b"]" * 5000, 400, "nested more than"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), 400, "nested more than"),
        (b'{"n": NaN}', 400, "NaN is not JSON"),
        (b'{"n": -Infinity}', 400, "-Infinity is not JSON"),
        (b'{"n": 1e999}', 400, "finite double range"),
        (b'{"name": "a\\u0000b"}', 422, "U+0000"),
        (b'{"a\\u0000": 1}', 422, "a key at the top contains U+0000"),
        (b'{"x": ["\\ud800"]}', 422, "lone surrogate"),
    ],
)
def test_json_outside_the_profile_is_a_precise_problem(raw: bytes, status: int, says: str) -> None:
    problem = _problem(lambda: decode_json(raw))
    assert problem.status == status
    assert says in (problem.detail or "")


def test_json_within_the_profile_decodes_unchanged() -> None:
    nested: Any = 1
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    doc = {
        "max": 2**64 - 1,
        "min": -(2**63),
        "f": 1.5e300,
        "text": "\u00e9\U0001f600 ok",
        "deep": nested,
    }
    assert decode_json(json.dumps(doc).encode()) == doc


def test_a_nul_deep_inside_names_its_field() -> None:
    problem = _problem(lambda: decode_json(b'{"items": [{"sku": "ok"}, {"sku": "a\\u0000"}]}'))
    assert problem.errors == [{"field": "items.1.sku", "message": "contains U+0000 (NUL), "
                               "which cannot be stored"}]  # fmt: skip


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Service, str]]:
    port = free_port()
    svc = Service(ServiceSettings(service="input", port=port, state_dir=tmp_path))

    async def line(request: web.Request) -> web.Response:
        body = await parse_json(request, Line)
        return web.json_response(body.model_dump())

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"key": request.match_info["key"], **params_of(request)})

    async def slow_read(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    svc.api.add(
        "POST", "/lines", line, operation_id="line", summary="line",
        body=Line, responses={200: Reply("the line", Line)},
    )  # fmt: skip
    svc.api.add(
        "GET", "/keys/{key:.+}", echo, operation_id="key", summary="key",
        params=[
            Param("key", "path", str, "the key"),
            Param("limit", "query", Annotated[int, Field(ge=1, le=10)], "how many"),
            Param("X-Tag", "header", Annotated[str, Field(pattern=r"^[a-z]+$")], "a tag"),
        ],
        responses={200: Reply("the key")},
    )  # fmt: skip
    svc.app.router.add_post("/slow-read", slow_read)
    await svc.start()
    try:
        yield svc, f"http://127.0.0.1:{port}"
    finally:
        await svc.stop()


async def _problem_response(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    doc: dict[str, Any] = await response.json(content_type=None)
    return doc


async def test_bodies_outside_the_profile_are_4xx_on_a_running_service(
    service: tuple[Service, str],
) -> None:
    _, url = service
    async with aiohttp.ClientSession() as http:
        huge = b'{"name": "a", "quantity": ' + b"1" * 4400 + b"}"
        for raw, status in [
            (huge, 400),
            (b"[" * 5000 + b"]" * 5000, 400),
            (b'{"name": "a\\u0000", "quantity": 1}', 422),
            (b'{"name": "a", "quantity": 1.5}', 422),
        ]:
            async with http.post(f"{url}/lines", data=raw) as response:
                await _problem_response(response, status)
        async with http.post(f"{url}/lines", json={"name": "a", "quantity": 2}) as response:
            assert response.status == 200
            assert await response.json() == {"name": "a", "quantity": 2}


async def test_declared_parameters_are_validated_by_their_types(
    service: tuple[Service, str],
) -> None:
    _, url = service
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/keys/a/b?limit=3", headers={"X-Tag": "ok"}) as response:
            assert await response.json() == {"key": "a/b", "limit": 3, "X-Tag": "ok"}
        async with http.get(f"{url}/keys/a?limit=11") as response:
            doc = await _problem_response(response, 422)
            assert doc["errors"][0]["field"] == "query.limit"
        async with http.get(f"{url}/keys/a", headers={"X-Tag": "NO"}) as response:
            doc = await _problem_response(response, 400)
            assert doc["errors"][0]["field"] == "header.X-Tag"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("multipart/form-data", 415),
        ("application/x-www-form-urlencoded", 415),
        ("text/plain", 415),
        ("application/json; charset=latin-1", 415),
        ("application/json; charset=UTF-8", 200),
        ("application/merge-patch+json", 200),
        ("application/octet-stream", 200),
    ],
)
async def test_a_body_declared_as_something_other_than_json_is_415(
    service: tuple[Service, str], content_type: str, status: int
) -> None:
    """The media type is judged before the body: a form or multipart never reaches a handler."""
    _, url = service
    body = b'{"name": "a", "quantity": 2}'
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": content_type}
        async with http.post(f"{url}/lines", data=body, headers=headers) as response:
            if status == 200:
                assert response.status == 200, await response.text()
            else:
                doc = await _problem_response(response, status)
                assert "application/json" in doc["detail"]


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("/keys/a%zz", "not followed by two hex digits"),
        ("/keys/a%2", "not followed by two hex digits"),
        ("/keys/a%ff", "not UTF-8"),
        ("/keys/a?limit=%zz", "not followed by two hex digits"),
        ("/keys/a%00b", "NUL"),
    ],
)
async def test_broken_percent_escapes_are_400_not_literal_text(
    service: tuple[Service, str], target: str, says: str
) -> None:
    _, url = service
    async with aiohttp.ClientSession() as http:
        async with http.get(URL(url + target, encoded=True)) as response:
            doc = await _problem_response(response, 400)
            assert says in doc["detail"]
        # A correctly escaped percent sign is a literal '%' in the key.
        async with http.get(f"{url}/keys/a%25zz") as response:
            assert (await response.json())["key"] == "a%zz"


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", ""])
async def test_a_deadline_header_that_is_not_positive_is_400(
    service: tuple[Service, str], value: str
) -> None:
    _, url = service
    async with aiohttp.ClientSession() as http:
        headers = {"yardarm-timeout-ms": value}
        async with http.get(f"{url}/healthz", headers=headers) as response:
            assert response.status == 200  # operational endpoints ignore deadlines
        async with http.get(f"{url}/keys/a", headers=headers) as response:
            doc = await _problem_response(response, 400)
            assert "positive number of milliseconds" in doc["detail"]
        async with http.get(f"{url}/keys/a", headers={"yardarm-timeout-ms": "1e300"}) as r:
            assert r.status == 200  # far-off deadlines are capped, not refused


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"GET /healthz\r\n\r\n", "HTTP/0.9"),
        (b"GET /healthz HTTP/0.9\r\n\r\n", "HTTP/0.9"),
        (b"SECRET-GARBAGE\r\n\r\n", "not valid"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         "appears twice"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"SECRET" * 2000 + b"\r\n\r\n",
         "too long"),
    ],
)  # fmt: skip
async def test_malformed_http_gets_a_problem_that_echoes_nothing(
    service: tuple[Service, str], raw: bytes, says: str
) -> None:
    _, url = service
    port = int(url.rsplit(":", 1)[1])
    answer = await raw_exchange(port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 400 " in head.split(b"\r\n")[0], answer[:200]
    assert b"application/problem+json" in head
    doc = json.loads(body)
    assert doc["status"] == 400 and says in doc["detail"]
    assert b"SECRET" not in answer and b"/healthz" not in body
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    assert "yardarm_http_malformed_requests_total{" in text


async def test_a_client_leaving_mid_body_is_499_not_an_error(
    service: tuple[Service, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, url = service
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /slow-read HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc")
    await asyncio.sleep(0.2)
    sock.close()
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(f"{url}/metrics") as response:
                text = await response.text()
            if 'http_response_status_code="499"' in text:
                break
            await asyncio.sleep(0.1)
    assert 'http_route="/slow-read"' in text
    assert 'http_response_status_code="499"' in text
    assert 'http_response_status_code="500"' not in text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
