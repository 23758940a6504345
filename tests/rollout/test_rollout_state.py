"""Rollout state in a real datastore: one rollout of a service at a time, changes from
the CLI and the controller at once both kept (compare-and-set), finished rollouts in a
bounded history, newest first."""

from __future__ import annotations

import asyncio

import pytest

from yardarm.control_kv import ControlKv
from yardarm.rollout.spec import RolloutSpec
from yardarm.rollout.state import Rollout, RolloutConflict, RolloutStore


def store(url: str) -> RolloutStore:
    return RolloutStore(ControlKv([url], "no-auth-here", timeout_s=10))


def canary(version: str = "0.2.0") -> Rollout:
    return Rollout(spec=RolloutSpec(service="orders", version=version), stable_version="0.1.0")


async def test_one_rollout_of_a_service_at_a_time(datastore_url: str) -> None:
    rollouts = store(datastore_url)
    started = await rollouts.start(canary())
    current = await rollouts.current("orders")
    assert current is not None and current.id == started.id
    assert [e.kind for e in current.events] == ["started"]
    with pytest.raises(RolloutConflict, match=r"a rollout of orders is running .*abort"):
        await rollouts.start(canary("0.3.0-errors"))
    assert (await rollouts.current("orders")).id == started.id  # type: ignore[union-attr]
    assert await rollouts.current("fulfillment") is None


async def test_concurrent_changes_are_all_kept(datastore_url: str) -> None:
    rollouts = store(datastore_url)
    await rollouts.start(canary())

    def advance(rollout: Rollout) -> None:
        rollout.step += 1
        rollout.record("step", f"step {rollout.step + 1}")

    await asyncio.gather(
        *(rollouts.change("orders", advance, "advance") for _ in range(6)),
        rollouts.change("orders", lambda r: r.record("note", "from the CLI"), "note"),
    )
    current = await rollouts.current("orders")
    assert current is not None
    assert current.step == 6  # no advance overwrote another
    assert sorted(e.kind for e in current.events) == ["note", "started", *["step"] * 6]


async def test_finished_rollouts_go_to_the_history_newest_first(datastore_url: str) -> None:
    rollouts = store(datastore_url)
    ids = []
    for version in ("0.2.0", "0.3.0-errors"):
        rollout = await rollouts.start(canary(version))
        ids.append(rollout.id)

        def abort(r: Rollout) -> None:
            r.phase, r.reason = "aborted", "the canary failed its analysis"

        finished = await rollouts.change("orders", abort, "abort")
        assert not finished.running
    history = await rollouts.history("orders")
    assert [r.id for r in history] == ids[::-1]
    assert history[0].reason == "the canary failed its analysis"
    with pytest.raises(RolloutConflict, match="no rollout of fulfillment was ever started"):
        await rollouts.change("fulfillment", lambda r: None, "nothing")
