"""Routes registered with their description, so the OpenAPI document cannot drift.

A service adds each operation through `ApiSpec.add`: the aiohttp route, the pydantic
model of its body, its declared parameters (validated here, before the handler runs, by
the same types that produce their JSON Schema) and every response it can give. The
document at `/openapi.json` (OpenAPI 3.1, JSON Schema 2020-12) is built from those
registrations and nothing else.

Responses every operation of a kind can give are added for it: 400/413/415/422 for a
body, 422 for path and query parameters, 400 for header parameters, 401/403 for secured
operations, 504 for a caller's deadline that ran out, 500 for an injected fault (the
`fault.error-rate` flag).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from yardarm_kit.problem import PROBLEM_CONTENT_TYPE, Problem
from yardarm_kit.validation import BODY_KEY, decode_body, validate_document

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Location = Literal["path", "query", "header"]
PARAMS_KEY = web.RequestKey("yardarm.params", dict[str, Any])
OPENAPI_VERSION = "3.1.0"
BEARER_SCHEME = "bearer"
_ROUTE_REGEX = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^}]*\}")


class FieldError(BaseModel):
    """One invalid input: where (`items.0.quantity`, `query.limit`) and why."""

    field: str
    message: str


class ProblemDocument(BaseModel):
    """RFC 9457 problem details; a problem may carry more members (`key`, `state`)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = None


@dataclass(frozen=True)
class Header:
    """A response header: its description, and whether every such response has it."""

    description: str
    required: bool = False
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Reply:
    """One documented response: a JSON body (a model), a problem, or none."""

    description: str
    model: type[BaseModel] | None = None
    problem: bool = False
    headers: Mapping[str, Header] = field(default_factory=dict)
    content_type: str | None = None  # non-JSON media types, comma-separated
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def error(cls, description: str, **headers: Header) -> Reply:
        """A problem+json response (`Reply(..., model, problem=True)` names the members a
        problem of its kind adds, with a `ProblemDocument` subclass)."""
        return cls(description, problem=True, headers=headers)


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter and the type that validates it.

    `annotation` is any type pydantic takes (`Annotated[int, Field(ge=1)]`); raw text is
    validated in pydantic's lax mode, so "12" is an int. A bad path or query value is a
    422 and a bad header a 400, unless `status` says otherwise.
    """

    name: str
    location: Location
    annotation: Any
    description: str
    required: bool = False
    status: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_adapter", TypeAdapter(self.annotation))

    @property
    def adapter(self) -> TypeAdapter[Any]:
        adapter: TypeAdapter[Any] = object.__getattribute__(self, "_adapter")
        return adapter

    @property
    def error_status(self) -> int:
        return self.status or (400 if self.location == "header" else 422)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # the OpenAPI path: `/kv/{key}`
    operation_id: str
    summary: str
    description: str
    tags: tuple[str, ...]
    body: type[BaseModel] | None
    params: tuple[Param, ...]
    responses: Mapping[int, Reply]
    secured: bool
    permission: str | None
    operational: bool


def params_of(request: web.Request) -> dict[str, Any]:
    """The validated values of the operation's declared parameters (absent ones: None)."""
    values: dict[str, Any] = request.get(PARAMS_KEY, {})
    return values


def _raw(request: web.Request, param: Param) -> str | None:
    if param.location == "path":
        return request.match_info.get(param.name)
    if param.location == "query":
        return request.query.get(param.name)
    return request.headers.get(param.name)


def _where(param: Param) -> str:
    return {"path": "path", "query": "query", "header": "header"}[param.location] + f".{param.name}"


def _validate_params(request: web.Request, params: Iterable[Param]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for param in params:
        raw = _raw(request, param)
        if raw is None:
            if param.required:
                raise Problem(
                    param.error_status,
                    f"Missing {param.location} parameter {param.name}",
                    f"send the {param.location} parameter {param.name!r}: {param.description}",
                    errors=[{"field": _where(param), "message": "required"}],
                )
            values[param.name] = None
            continue
        try:
            values[param.name] = param.adapter.validate_python(raw)
        except ValidationError as exc:
            messages = "; ".join(error["msg"] for error in exc.errors(include_url=False))
            raise Problem(
                param.error_status,
                f"Invalid {param.location} parameter {param.name}",
                f"{param.name} {messages.lower()}: {param.description}",
                errors=[{"field": _where(param), "message": messages}],
            ) from None
    return values


def _openapi_path(route_path: str) -> str:
    """aiohttp's `/kv/{key:.+}` as OpenAPI's `/kv/{key}`."""
    return _ROUTE_REGEX.sub(r"{\1}", route_path)


class ApiSpec:
    """The registry of one HTTP API's operations and the document built from it."""

    def __init__(
        self,
        router: web.UrlDispatcher,
        title: str,
        version: str,
        description: str = "",
        *,
        kit_middleware: bool = True,
    ) -> None:
        """`kit_middleware`: the app runs the kit Service's middleware (fault injection,
        deadlines), so every operation can also answer 500 and 504."""
        self.router = router
        self.kit_middleware = kit_middleware
        self.title = title
        self.version = version
        self.description = description
        self.operations: list[Operation] = []

    # -- registration -------------------------------------------------------------

    def add(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        operation_id: str,
        summary: str,
        responses: Mapping[int, Reply],
        description: str = "",
        tags: Iterable[str] = (),
        body: type[BaseModel] | None = None,
        params: Iterable[Param] = (),
        secured: bool = False,
        permission: str | None = None,
        operational: bool = False,
        guard: Callable[[web.Request], None] | None = None,
        validate_body: bool = True,
    ) -> None:
        """Route `method path` to `handler` and describe it.

        Declared parameters are validated before the handler runs (`params_of(request)`
        gives their values); a declared body is decoded and validated as `body`
        (`parse_json(request, body)` in the handler returns it without reading again).
        `secured` marks a bearer-token operation; `permission` says in words what the
        token's roles must allow (documentation; the service enforces it).
        `operational` routes (probes, metrics) bypass fault injection and deadlines.
        `guard` runs before any validation (authentication first: a caller without a
        credential learns nothing of the API's rules); `validate_body=False` leaves the
        declared body to the handler (which parses it with the same model).
        """
        method = method.upper()
        declared = tuple(params)
        openapi_path = _openapi_path(path)
        in_path = set(re.findall(r"\{([^}]+)\}", openapi_path))
        named = {p.name for p in declared if p.location == "path"}
        if in_path != named:
            raise ValueError(f"{method} {path}: path parameters {sorted(in_path)} must be declared")
        if any(op.operation_id == operation_id for op in self.operations):
            raise ValueError(f"duplicate operationId {operation_id!r}")
        self.operations.append(
            Operation(
                method=method,
                path=openapi_path,
                operation_id=operation_id,
                summary=summary,
                description=description,
                tags=tuple(tags),
                body=body,
                params=declared,
                responses=dict(responses),
                secured=secured,
                permission=permission,
                operational=operational,
            )
        )

        checks_body = body is not None and validate_body

        async def validated(request: web.Request) -> web.StreamResponse:
            if guard is not None:
                guard(request)
            request[PARAMS_KEY] = _validate_params(request, declared)
            if body is not None and checks_body:
                request[BODY_KEY] = validate_document(await decode_body(request), body)
            return await handler(request)

        plain = not declared and not checks_body and guard is None
        self.router.add_route(method, path, handler if plain else validated)

    # -- the document ---------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every registered operation."""
        components = _Components()
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method.lower()] = _operation(
                op, components, self.kit_middleware
            )
        doc: dict[str, Any] = {
            "openapi": OPENAPI_VERSION,
            "info": {"title": self.title, "version": self.version},
            "paths": paths,
            "components": {"schemas": components.schemas},
        }
        if self.description:
            doc["info"]["description"] = self.description
        if any(op.secured for op in self.operations):
            doc["components"]["securitySchemes"] = {
                BEARER_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a credential issued by the stack's control plane",
                }
            }
        return doc

    def serve(self, path: str = "/openapi.json") -> None:
        """Serve the document (built once, on the first request)."""
        cached: list[dict[str, Any]] = []

        async def openapi(_: web.Request) -> web.Response:
            if not cached:
                cached.append(self.document())
            return web.json_response(cached[0])

        self.router.add_get(path, openapi)


def portable_pattern(pattern: str) -> str:
    r"""`pattern` with each `$` outside a character class made `$(?!\n)`.

    In ECMA-262 and in pydantic's Rust regex `$` ends the text; in Python's `re`, which
    fuzzers (hypothesis, schemathesis) draw strings with, it also matches before a final
    newline, so `name\n` would be generated as valid and then refused. The lookahead
    changes nothing for the validators and holds the generators to the same end.
    """
    out: list[str] = []
    in_class = escaped = False
    for index, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        elif char == "$" and not in_class and not pattern.startswith(r"(?!\n)", index + 1):
            out.append(r"$(?!\n)")
            continue
        out.append(char)
    return "".join(out)


def _portable(schema: Any) -> Any:
    """Every `pattern` in a JSON Schema made portable (see `portable_pattern`)."""
    if isinstance(schema, dict):
        return {
            key: portable_pattern(value)
            if key == "pattern" and isinstance(value, str)
            else _portable(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_portable(item) for item in schema]
    return schema


class _Components:
    """`components/schemas`, filled as models are referenced."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self._owners: dict[str, type[BaseModel]] = {}

    def ref(self, model: type[BaseModel], mode: Literal["validation", "serialization"]) -> str:
        schema = _portable(
            model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
        )
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        name = str(schema.get("title") or model.__name__)
        owner = self._owners.setdefault(name, model)
        if owner is not model:
            raise ValueError(f"two models are both named {name!r} in one API document")
        self.schemas[name] = schema
        return f"#/components/schemas/{name}"


def _param_schema(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = _portable(param.adapter.json_schema())
    schema.pop("title", None)
    return schema


def _operation(op: Operation, components: _Components, kit_middleware: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.description or op.permission:
        text = op.description
        if op.permission:
            text = f"{text}\n\nPermission: {op.permission}".strip()
        out["description"] = text
    if op.tags:
        out["tags"] = list(op.tags)
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.location,
                "required": p.required or p.location == "path",
                "description": p.description,
                "schema": _param_schema(p),
            }
            for p in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": components.ref(op.body, "validation")}}
            },
        }
    if op.secured:
        out["security"] = [{BEARER_SCHEME: []}]
        out["x-yardarm-permission"] = op.permission or "any valid credential"
    responses = {**_implied(op, kit_middleware), **op.responses}
    problem_ref = components.ref(ProblemDocument, "serialization")
    out["responses"] = {
        str(status): _response(reply, components, problem_ref)
        for status, reply in sorted(responses.items())
    }
    return out


def _implied(op: Operation, kit_middleware: bool) -> dict[int, Reply]:
    """The responses the kit's middleware and parameter checks can give this operation."""
    implied: dict[int, Reply] = {}
    if kit_middleware and not op.operational:
        implied[500] = Reply.error("an injected fault (the fault.error-rate flag)")
        implied[504] = Reply.error("the caller's deadline (yardarm-timeout-ms) ran out")
    if op.body is not None:
        implied[400] = Reply.error("the body is not JSON, or not JSON this API takes")
        implied[413] = Reply.error("the body is larger than the service accepts")
        implied[415] = Reply.error("the body is declared as something other than JSON")
        implied[422] = Reply.error("the body does not validate; `errors` names each field")
    if any(p.location in ("path", "query") for p in op.params):
        implied[422] = Reply.error("a path or query parameter does not validate")
    if any(p.location == "header" for p in op.params):
        implied[400] = Reply.error(
            "a header parameter is missing or invalid"
            + ("; or the body is not JSON this API takes" if op.body is not None else "")
        )

    if op.params or op.body is not None:
        implied.setdefault(400, Reply.error("the request is malformed"))
    if op.secured:
        implied[401] = Reply.error(
            "no valid credential was sent",
            **{"WWW-Authenticate": Header("how to authenticate", required=True)},
        )
        implied[403] = Reply.error("the credential's roles do not allow this")
    return implied


def _response(reply: Reply, components: _Components, problem_ref: str) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.problem:
        # A problem with members of its own (a 409's versions) names its model.
        ref = problem_ref if reply.model is None else components.ref(reply.model, "serialization")
        out["content"] = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": ref}}}
    elif reply.model is not None:
        ref = components.ref(reply.model, "serialization")
        out["content"] = {"application/json": {"schema": {"$ref": ref}}}
    elif reply.content_type is not None:
        out["content"] = {
            media: {"schema": {"type": "string"}} for media in reply.content_type.split(",")
        }
    if reply.headers:
        out["headers"] = {
            name: {
                "description": header.description,
                "required": header.required,
                "schema": dict(header.schema),
            }
            for name, header in reply.headers.items()
        }
    if reply.links:
        out["links"] = {name: dict(link) for name, link in reply.links.items()}
    return out
