"""The OpenAPI document is built from the registrations, so it says what the code does."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
import schemathesis
from aiohttp import web
from pydantic import BaseModel, Field
from yardarm_kit import ApiSpec, Header, Param, Reply


class Body(BaseModel):
    name: str = Field(min_length=1)


class Answer(BaseModel):
    id: int
    note: str | None


async def handler(_: web.Request) -> web.Response:
    return web.json_response({})


def _spec() -> ApiSpec:
    app = web.Application()
    spec = ApiSpec(app.router, "yardarm test", "1.2.3", "for tests")
    spec.add(
        "PUT", "/things/{thing_id:[0-9]+}", handler, operation_id="putThing", summary="put",
        body=Body, tags=("things",),
        params=[
            Param("thing_id", "path", Annotated[int, Field(ge=1)], "the thing"),
            Param("Idempotency-Key", "header", Annotated[str, Field(max_length=8)], "once"),
        ],
        responses={
            200: Reply("updated", Answer),
            201: Reply("created", Answer, headers={"Location": Header("where", required=True)}),
            409: Reply.error("conflict"),
        },
        secured=True, permission="write on things",
    )  # fmt: skip
    spec.add(
        "GET", "/status", handler, operation_id="status", summary="status",
        responses={200: Reply("ok", content_type="text/plain")}, operational=True,
    )  # fmt: skip
    return spec


def test_an_operation_is_documented_with_its_body_params_and_every_response() -> None:
    doc = _spec().document()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "yardarm test", "version": "1.2.3", "description": "for tests"}
    op = doc["paths"]["/things/{thing_id}"]["put"]
    assert op["operationId"] == "putThing"
    assert op["security"] == [{"bearer": []}]
    assert op["x-yardarm-permission"] == "write on things"
    params = {p["name"]: p for p in op["parameters"]}
    assert params["thing_id"]["in"] == "path" and params["thing_id"]["required"] is True
    assert params["thing_id"]["schema"] == {"type": "integer", "minimum": 1}
    assert params["Idempotency-Key"]["schema"] == {"type": "string", "maxLength": 8}
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Body"}
    assert doc["components"]["schemas"]["Body"]["required"] == ["name"]
    # Declared and implied: body (400/413/415/422), header (400), secured (401/403), kit
    # (500/504).
    assert set(op["responses"]) == {"200", "201", "400", "401", "403", "409", "413", "415",
                                    "422", "500", "504"}  # fmt: skip
    assert op["responses"]["201"]["headers"]["Location"]["required"] is True
    assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    problem = op["responses"]["409"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    answer = doc["components"]["schemas"]["Answer"]["properties"]["note"]
    assert answer == {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Note"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_operational_routes_bypass_the_kit_faults_so_document_none() -> None:
    status = _spec().document()["paths"]["/status"]["get"]
    assert set(status["responses"]) == {"200"}
    assert "security" not in status


def test_the_document_is_valid_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(_spec().document())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.label for op in operations) == ["GET /status", "PUT /things/{thing_id}"]


def test_registration_refuses_undeclared_path_params_and_duplicate_ids() -> None:
    spec = _spec()
    with pytest.raises(ValueError, match="must be declared"):
        spec.add("GET", "/a/{x}", handler, operation_id="a", summary="a", responses={})
    with pytest.raises(ValueError, match="duplicate operationId"):
        spec.add("GET", "/b", handler, operation_id="status", summary="b", responses={})


def test_two_models_with_one_name_are_refused() -> None:
    other = type("Answer", (BaseModel,), {"__annotations__": {"x": int}})
    spec = _spec()
    spec.add("GET", "/c", handler, operation_id="c", summary="c",
             responses={200: Reply("clash", other)})  # fmt: skip
    with pytest.raises(ValueError, match="both named 'Answer'"):
        spec.document()


def _routes(app: web.Application) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info: dict[str, Any] = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        out.add((route.method, path))
    return out


def test_every_registered_operation_is_routed() -> None:
    app = web.Application()
    spec = ApiSpec(app.router, "t", "1")
    spec.add("GET", "/x/{k:.+}", handler, operation_id="x", summary="x",
             params=[Param("k", "path", str, "k")], responses={})  # fmt: skip
    assert _routes(app) >= {("GET", "/x/{k}")}
