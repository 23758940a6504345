"""Drive one service's rollout to its end: tick the engine, store each change, sample
metrics every sub-window. The controller process runs one of these per service with a
rollout in progress; a restart starts them again from the stored rollouts."""

from __future__ import annotations

import asyncio
import logging

from yardarm.rollout.engine import Effects, EngineConfig, tick
from yardarm.rollout.judge import JudgeConfig
from yardarm.rollout.state import Rollout, RolloutStore

log = logging.getLogger("yardarm.rollout")


async def drive(
    store: RolloutStore,
    effects: Effects,
    service: str,
    judge_config: JudgeConfig,
    config: EngineConfig,
    sub_window_s: float = 2.0,
) -> Rollout | None:
    """Until the service's rollout has ended and the world matches its end; the rollout
    as it ended (None when none was ever started)."""
    while True:
        rollout = await store.current(service)
        if rollout is None:
            return None
        edit = await tick(rollout, effects, judge_config, config)
        if edit is not None:
            rollout = await store.change(service, edit, f"rollout {rollout.id}")
            if rollout.phase != "progressing":
                # Paused, or ended: converge at once (a rollback happens as decided).
                await tick(rollout, effects, judge_config, config)
        if not rollout.running:
            log.info("rollout %s of %s %s", rollout.id, service, rollout.phase)
            return rollout
        await effects.sample(service)
        await asyncio.sleep(sub_window_s)
