"""Stopping background loops: let the work in hand finish, but never wait forever."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def finish_task(task: asyncio.Task[Any], grace_s: float) -> None:
    """Wait up to `grace_s` for a loop that was told to stop, then cancel it."""
    try:
        await asyncio.wait_for(task, timeout=grace_s)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def cancel_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background loop that has nothing to finish, and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
