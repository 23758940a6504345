"""Drive a run over one keep-alive session: an open loop or a closed loop.

Open loop (wrk2's model): slot i is due at start + i/rate whatever the answers. `workers`
senders (one per connection) take due slots off a backlog; a slot due while
`in_flight_cap` requests are waiting or on the wire is dropped, and counted. Latency is
measured from the slot's due time, so waiting for a busy connection shows up in it
instead of being hidden (coordinated omission). When sending stops, slots still waiting
for a connection are dropped and requests on the wire are awaited (each bounded by the
timeout), so a run lasts at most duration + timeout.

Closed loop: `workers` workers, each sending its next request when the last one answered;
latency from the moment it was sent. This measures the system at a fixed concurrency.

Both stop at the duration or after max_requests (open loop: slots, sent or dropped).
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import aiohttp

from yardarm.load.client import fetch_skus, open_session, send
from yardarm.load.config import LoadConfig
from yardarm.load.mix import RequestPlanner
from yardarm.load.stats import Recorder
from yardarm.load.summary import LoadSummary, StopReason, summarize

_YIELD_EVERY = 64  # slots a scheduler that fell behind admits before letting senders run


@dataclass(frozen=True, slots=True)
class LoadProgress:
    """A run so far, for a live display."""

    elapsed_s: float
    sent: int
    finished: int
    failures: int
    dropped: int
    in_flight: int
    rate: float
    p99_ms: float | None


ProgressCallback = Callable[[LoadProgress], None]


async def run_load(
    config: LoadConfig,
    on_progress: ProgressCallback | None = None,
    *,
    stop: asyncio.Event | None = None,
) -> LoadSummary:
    """Run the load described by `config` and summarize it.

    Raises LoadSetupError when the target cannot be reached or lists no SKUs. Failed
    requests are measured, never raised. Setting `stop` ends sending early (the summary
    says "interrupted"); `on_progress` is called every `progress_interval_s` and once at
    the end, on the event loop, so it must be quick.
    """
    loop = asyncio.get_running_loop()
    async with open_session(config.workers, config.timeout_s, config.ca_file) as session:
        skus = await fetch_skus(session, config.base_url)
        planner = RequestPlanner(
            config.mix, skus, random.Random(config.seed), decline_share=config.decline_share
        )
        run = _Run(config, session, planner, loop)
        return await run.execute(on_progress, stop if stop is not None else asyncio.Event())


def run_load_sync(config: LoadConfig, on_progress: ProgressCallback | None = None) -> LoadSummary:
    """run_load in a fresh event loop, where Ctrl-C stops sending and still summarizes."""

    async def main() -> LoadSummary:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed = False
        with suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            installed = True
        try:
            return await run_load(config, on_progress, stop=stop)
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

    return asyncio.run(main())


class _Run:
    def __init__(
        self,
        config: LoadConfig,
        session: aiohttp.ClientSession,
        planner: RequestPlanner,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._config = config
        self._session = session
        self._planner = planner
        self._loop = loop
        self._recorder = Recorder()
        self._sent = 0
        self._dropped = 0
        self._admitted = 0  # open loop: slots queued or on the wire
        self._stopping = False
        self._stopped_by: StopReason | None = None
        self._send_stopped_at: float | None = None
        self._started_at = 0.0
        self._deadline = 0.0

    async def execute(
        self, on_progress: ProgressCallback | None, stop: asyncio.Event
    ) -> LoadSummary:
        self._started_at = self._loop.time()
        self._deadline = self._started_at + self._config.duration_s
        ticker = None if on_progress is None else _spawn(self._tick(on_progress))
        try:
            if self._config.mode == "open":
                await self._open_loop(stop)
            else:
                await self._closed_loop(stop)
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.wait({ticker})
        if ticker is not None and not ticker.cancelled() and (failed := ticker.exception()):
            raise failed
        end = self._loop.time()
        if on_progress is not None:
            on_progress(self._progress(end))
        send_stopped_at = self._send_stopped_at if self._send_stopped_at is not None else end
        return summarize(
            self._config,
            self._recorder,
            stopped_by=self._stopped_by or "duration",
            duration_s=end - self._started_at,
            send_duration_s=send_stopped_at - self._started_at,
            dropped=self._dropped,
        )

    def _stop_sending(self, reason: StopReason) -> None:
        if self._stopped_by is None:
            self._stopped_by = reason
            self._send_stopped_at = self._loop.time()
        self._stopping = True

    async def _one(self, origin: float) -> None:
        planned = self._planner.next_request()
        outcome = await send(self._session, self._config.base_url, planned)
        latency = self._loop.time() - origin
        self._recorder.record(planned.kind, outcome.status, outcome.error, latency)
        if outcome.order_id is not None:
            self._planner.remember_order(outcome.order_id)

    # closed loop

    async def _closed_loop(self, stop: asyncio.Event) -> None:
        workers = [_spawn(self._worker()) for _ in range(self._config.workers)]
        watcher = _spawn(self._on_stop(stop, None))
        try:
            await asyncio.gather(*workers)
        finally:
            for task in (watcher, *workers):
                task.cancel()
            await asyncio.wait({watcher, *workers})

    async def _worker(self) -> None:
        while not self._stopping:
            now = self._loop.time()
            if now >= self._deadline:
                self._stop_sending("duration")
                return
            self._sent += 1
            if self._sent >= self._config.max_requests:
                self._stop_sending("max_requests")
            await self._one(origin=now)

    # open loop

    async def _open_loop(self, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[float | None] = asyncio.Queue()
        senders = [_spawn(self._sender(queue)) for _ in range(self._config.workers)]
        scheduler = _spawn(self._schedule(queue))
        watcher = _spawn(self._on_stop(stop, scheduler))
        try:
            await asyncio.wait({scheduler})
            if not scheduler.cancelled() and (failed := scheduler.exception()):
                raise failed
            await asyncio.sleep(0)  # senders woken by the last slot take it first
            while not queue.empty():
                queue.get_nowait()
                self._dropped += 1
                self._admitted -= 1
            for _ in senders:
                queue.put_nowait(None)
            await asyncio.gather(*senders)
        finally:
            for task in (watcher, scheduler, *senders):
                task.cancel()
            await asyncio.wait({watcher, scheduler, *senders})

    async def _schedule(self, queue: asyncio.Queue[float | None]) -> None:
        config = self._config
        assert config.rate is not None
        interval = 1.0 / config.rate
        cap = config.in_flight_cap
        slot = 0
        while True:
            due = self._started_at + slot * interval
            if slot >= config.max_requests or due >= self._deadline:
                # The window covers whole intervals, so achieved_rate compares with rate.
                await self._sleep_until(min(due, self._deadline))
                self._stop_sending("max_requests" if due < self._deadline else "duration")
                return
            if due > self._loop.time():
                await self._sleep_until(due)
            elif slot % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if self._admitted >= cap:
                self._dropped += 1
            else:
                self._admitted += 1
                queue.put_nowait(due)
            slot += 1

    async def _sender(self, queue: asyncio.Queue[float | None]) -> None:
        while True:
            due = await queue.get()
            if due is None:
                return
            self._sent += 1
            try:
                await self._one(origin=due)
            finally:
                self._admitted -= 1

    async def _sleep_until(self, when: float) -> None:
        delay = when - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    # both

    async def _on_stop(self, stop: asyncio.Event, scheduler: asyncio.Task[None] | None) -> None:
        await stop.wait()
        self._stop_sending("interrupted")
        if scheduler is not None:
            scheduler.cancel()

    async def _tick(self, on_progress: ProgressCallback) -> None:
        while True:
            await asyncio.sleep(self._config.progress_interval_s)
            on_progress(self._progress(self._loop.time()))

    def _progress(self, now: float) -> LoadProgress:
        total = self._recorder.total
        elapsed = now - self._started_at
        p99 = total.latency.percentile(0.99)
        return LoadProgress(
            elapsed_s=elapsed,
            sent=self._sent,
            finished=total.requests,
            failures=total.failures,
            dropped=self._dropped,
            in_flight=self._sent - total.requests,
            rate=total.requests / elapsed if elapsed > 0 else 0.0,
            p99_ms=None if p99 is None else p99 * 1000.0,
        )


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro)
