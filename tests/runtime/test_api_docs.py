"""The published API description is what the code registers, never a hand-kept copy."""

from __future__ import annotations

import json
from pathlib import Path

import schemathesis

from yardarm import apidocs

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_api_docs_match_the_registrations() -> None:
    stale = apidocs.stale(ROOT)
    assert not stale, f"regenerate with `uv run yardarm api-docs`: {stale}"


def test_every_document_is_valid_openapi_and_names_every_api() -> None:
    for name in apidocs.API_NAMES:
        doc = json.loads((ROOT / "docs" / "api" / f"{name}.openapi.json").read_text())
        assert doc["openapi"] == "3.1.0"
        schema = schemathesis.openapi.from_dict(doc)
        assert [result.ok() for result in schema.get_all_operations()], name
    page = (ROOT / "docs" / "api.md").read_text()
    for name in apidocs.API_NAMES:
        assert f"api/{name}.openapi.json" in page
