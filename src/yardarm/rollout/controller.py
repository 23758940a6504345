"""Drive one service's rollout to its end: tick the engine, store each change, sample
metrics every sub-window. The controller process runs one of these per service with a
rollout in progress; a restart starts them again from the stored rollouts."""

from __future__ import annotations

import asyncio
import logging

from yardarm.rollout.engine import Effects, EngineConfig, running_as, tick
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
        seen = running_as(rollout)

        async def reread() -> Rollout | None:
            return await store.current(service)

        edit = await tick(rollout, effects, judge_config, config, reread)
        if edit is not None:
            rollout = await store.change(service, edit, f"rollout {rollout.id}")
            if rollout.phase != "progressing":
                # Paused, or ended: converge at once (a rollback happens as decided).
                await tick(rollout, effects, judge_config, config, reread)
        elif running_as(latest := await store.current(service)) != seen:
            continue  # changed while converging: tick again on what is stored, now
        else:
            rollout = latest or rollout
        if not rollout.running:
            log.info("rollout %s of %s %s", rollout.id, service, rollout.phase)
            return rollout
        await effects.sample(service)
        await asyncio.sleep(sub_window_s)
