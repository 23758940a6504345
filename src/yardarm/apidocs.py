"""The stack's API documents, built from the services' own route registrations.

`yardarm api-docs` writes each OpenAPI 3.1 document to `docs/api/<api>.openapi.json` and
renders them all into `docs/api.md`; `--check` fails when the committed files differ from
what the code registers, so the published description cannot drift. Every service is
built (not started) as the local stack configures it: access control on, credentials
issued into a scratch home.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yardarm.credentials import ensure_credentials

API_NAMES = ("orders", "fulfillment", "datastore", "gateway", "gateway-admin", "chaos")
DOCS_DIR = Path("docs")


def _datastore(home: Path) -> dict[str, Any]:
    from yardarm_datastore.app import create_service
    from yardarm_datastore.settings import DatastoreSettings

    creds = ensure_credentials(home)
    settings = DatastoreSettings(
        port=1,
        state_dir=home,
        data_dir=home / "datastore",
        access_file=creds.access_file,
        peer_token_file=creds.peer_secret_file,
    )
    return create_service(settings).api.document()


def _orders(home: Path) -> dict[str, Any]:
    from yardarm_orders.app import create_orders
    from yardarm_orders.settings import OrdersSettings

    settings = OrdersSettings(
        port=1,
        state_dir=home,
        database_url="postgresql://127.0.0.1:1/orders",
        nats_url="nats://127.0.0.1:1",
        datastore_urls=["http://127.0.0.1:1"],
    )
    return create_orders(settings).service.api.document()


def _fulfillment(home: Path) -> dict[str, Any]:
    from yardarm_fulfillment.app import create_fulfillment
    from yardarm_fulfillment.settings import FulfillmentSettings

    settings = FulfillmentSettings(
        port=1,
        state_dir=home,
        database_url="postgresql://127.0.0.1:1/fulfillment",
        nats_url="nats://127.0.0.1:1",
    )
    return create_fulfillment(settings).service.api.document()


def _gateway(home: Path) -> dict[str, dict[str, Any]]:
    """The public port's document and the admin listener's, from one gateway."""
    from yardarm_gateway.app import admin_document, create_gateway
    from yardarm_gateway.settings import GatewaySettings

    creds = ensure_credentials(home)
    settings = GatewaySettings(
        port=1,
        state_dir=home,
        admin_port=2,
        admin_token_file=creds.token_file("admin"),
    )
    gateway = create_gateway(settings)
    return {"gateway": gateway.api.document(), "gateway-admin": admin_document(gateway)}


def _chaos(home: Path) -> dict[str, Any]:
    from yardarm.chaos.config import ChaosConfig
    from yardarm.chaos.controller import build_service

    creds = ensure_credentials(home)
    config = ChaosConfig(control_port=1, home=home, admin_token_file=creds.token_file("admin"))
    service, _ = build_service(config)
    return service.api.document()


BUILDERS: tuple[Callable[[Path], dict[str, dict[str, Any]]], ...] = (
    lambda home: {"orders": _orders(home)},
    lambda home: {"fulfillment": _fulfillment(home)},
    lambda home: {"datastore": _datastore(home)},
    _gateway,
    lambda home: {"chaos": _chaos(home)},
)


def documents() -> dict[str, dict[str, Any]]:
    """Every API's OpenAPI document, by API name (in `API_NAMES` order)."""
    with tempfile.TemporaryDirectory(prefix="yardarm-apidocs-") as scratch:
        home = Path(scratch)
        built = {name: doc for build in BUILDERS for name, doc in build(home).items()}
    return {name: built[name] for name in API_NAMES}


# --- Markdown --------------------------------------------------------------------------


def _ref_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    ref = schema.get("$ref")
    return f"`{ref.rsplit('/', 1)[1]}`" if isinstance(ref, str) else f"`{schema.get('type')}`"


def _body(operation: dict[str, Any]) -> str:
    content = operation.get("requestBody", {}).get("content", {})
    return ", ".join(_ref_name(media.get("schema")) for media in content.values())


def _responses(operation: dict[str, Any]) -> str:
    parts = []
    for status, response in operation["responses"].items():
        content: dict[str, Any] = response.get("content", {})
        schema = next(iter(content.values())).get("schema") if content else None

        named = _ref_name(schema) if schema and "$ref" in schema else ""
        parts.append(f"{status} {named}".strip())
    return ", ".join(parts)


def _params(operation: dict[str, Any]) -> str:
    return ", ".join(
        f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})"
        for p in operation.get("parameters", [])
    )


def render_markdown(docs: dict[str, dict[str, Any]]) -> str:
    """One page describing every API: operations, parameters, bodies, answers, auth."""
    lines = [
        "# The stack's HTTP APIs",
        "",
        "Generated by `uv run yardarm api-docs` from the services' route registrations",
        "(the same pydantic models validate requests); do not edit by hand. Each service",
        "serves its document at `/openapi.json`; the files are in [api/](api/). Every",
        "error is RFC 9457 `application/problem+json` (`Problem`). Operations marked with",
        "a permission need `Authorization: Bearer <token>` (401 without a valid one, 403",
        'when the token\'s roles do not allow it); see the architecture page, "Access".',
        "",
    ]
    for name, doc in docs.items():
        info = doc["info"]
        lines += [f"## {info['title']} ({name})", ""]
        if info.get("description"):
            lines += [info["description"], ""]
        lines += [
            f"Document: [api/{name}.openapi.json](api/{name}.openapi.json)",
            "",
            "| operation | summary | parameters | body | answers | permission |",
            "|---|---|---|---|---|---|",
        ]
        for path, item in doc["paths"].items():
            for method, op in item.items():
                permission = op.get("x-yardarm-permission", "open") if "security" in op else "open"
                lines.append(
                    f"| `{method.upper()} {path}` | {op.get('summary', '')} | {_params(op)} | "
                    f"{_body(op)} | {_responses(op)} | {permission} |"
                )
        lines.append("")
    return "\n".join(lines)


def write(root: Path) -> list[Path]:
    """Write every document and the Markdown page under `root/docs`; the paths written."""
    docs = documents()
    out_dir = root / DOCS_DIR / "api"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in docs.items():
        path = out_dir / f"{name}.openapi.json"
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.append(path)
    page = root / DOCS_DIR / "api.md"
    page.write_text(render_markdown(docs))
    written.append(page)
    return written


def stale(root: Path) -> list[Path]:
    """The committed files that differ from what the code registers now."""
    docs = documents()
    differs = []
    for name, doc in docs.items():
        path = root / DOCS_DIR / "api" / f"{name}.openapi.json"
        expected = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text() != expected:
            differs.append(path)
    page = root / DOCS_DIR / "api.md"
    if not page.is_file() or page.read_text() != render_markdown(docs):
        differs.append(page)
    return differs
