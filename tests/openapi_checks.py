"""Checks shared by the services' OpenAPI tests: the document against the router, and
schemathesis run against a live service.

Schemathesis runs as its CLI (`st run`) in a subprocess with the repository's
`schemathesis.toml`, the way a developer reproduces a finding; its exit status and
report are the verdict.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "schemathesis.toml"
SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1"))
# Examples per operation and phase: 50 at scale 1 keeps each service's run well under a
# minute and a half on a 2-core machine.
MAX_EXAMPLES = max(5, round(50 * SCALE))
# Served by the kit for the document itself; it is not an operation of the API.
NOT_OPERATIONS = {"/openapi.json"}


def routed(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves (HEAD twins of GETs aside);
    aiohttp's canonical form of `/kv/{key:.+}` is OpenAPI's `/kv/{key}`."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical not in NOT_OPERATIONS
        and route.method != "HEAD"
    }


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every operation in an OpenAPI document."""
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options"}
    }


@dataclass(frozen=True)
class FuzzRun:
    returncode: int
    output: str

    @property
    def clean(self) -> bool:
        return self.returncode == 0

    def report(self, limit: int = 20_000) -> str:
        """The end of the output (failures, warnings and the summary come last)."""
        return self.output[-limit:]


async def run_schemathesis(
    base_url: str,
    *,
    max_examples: int = MAX_EXAMPLES,
    timeout_s: float = 240,
    schema_url: str | None = None,
    headers: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> FuzzRun:
    """`st run <schema_url> --url <base_url> --checks all` with the repository's config.

    `schema_url` defaults to `<base_url>/openapi.json` (another base: a service's own
    document fuzzed through the gateway); `headers` go with every request; `env` adds to
    the environment (`SCHEMATHESIS_HOOKS`)."""
    st = Path(sys.executable).with_name("st")
    sent = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]

    command = [
        str(st), "--config-file", str(CONFIG), "--no-color", "run",
        schema_url or f"{base_url}/openapi.json", "--url", base_url, *sent, *extra_args,
        "--checks", "all", "--max-examples", str(max_examples),
        # One worker: CPython 3.11.7's ast.parse is not thread-safe (gh-106905), and
        # hypothesis parses lambdas' source while generating ("AST constructor recursion
        # depth mismatch" from two workers at once).
        "--workers", "1", "--generation-database", "none", "--request-timeout", "20",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "160", **(env or {})},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return FuzzRun(-1, f"schemathesis ran past {timeout_s}s:\n{out.decode(errors='replace')}")
    assert proc.returncode is not None
    return FuzzRun(proc.returncode, out.decode(errors="replace"))
