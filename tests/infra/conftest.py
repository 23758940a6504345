"""The Pulumi program lives outside the packages (`infra/`, the directory Pulumi.yaml's
`main` names and Pulumi puts on the path); its tests put it on the path the same way."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pulumi.runtime import MockCallArgs, MockResourceArgs, Mocks

INFRA = Path(__file__).resolve().parents[2] / "infra"
if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))


@pytest.fixture(autouse=True)
def event_loop_for_pulumi() -> Iterator[None]:
    """`pulumi.runtime.test` runs on the thread's current event loop; asyncio tests that
    ran before leave none set, so each test here gets its own."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@dataclass
class Recorder(Mocks):
    """Every resource the program registers under Pulumi's mocks, with its inputs."""

    resources: list[MockResourceArgs] = field(default_factory=list)

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None

    def of_type(self, typ: str) -> list[MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]
