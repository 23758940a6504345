"""JetStream pull requests on one callback subscription: a batch costs one request.

nats-py's `PullSubscription.fetch` waits for each message with `asyncio.wait_for`, a task
per message; at tens of thousands of messages a second that is most of a consumer's CPU.
Here one subscription (with a callback, so nats-py hands messages over without a task
each) receives every reply of the consumer's pull requests, each request on its own
reply subject so a message is always matched to the request that asked for it.

A request is `{"batch": n, "expires": e, "no_wait": true}`: the server sends what is
available right away (up to n) and ends with status 404, or, when nothing is, waits up
to `expires` for the first message (408 when none came). Status replies come on the
request's own reply subject, so a late 408 of an abandoned request never ends the
current one; messages carry their stream subject, and one arriving while no fetch waits
(its request was cancelled, or lost on a reconnect) is nak'ed at once, so another fetch
gets it without waiting for the ack wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import Header

PULL_PREFIX = "$JS.API.CONSUMER.MSG.NEXT"
REPLY_MARGIN_S = 1.0  # beyond `expires`, the server's 408 is overdue: the request is lost

log = logging.getLogger("yardarm.consumer")


class PullError(RuntimeError):
    """The server refused a pull request (status 409 and friends), e.g. consumer deleted."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"pull request refused: {status} {description}".strip())
        self.status = status
        self.description = description


class BatchFetcher:
    """Pull batches from one durable consumer; one request at a time (not thread-safe)."""

    def __init__(self, nc: Any, stream: str, durable: str) -> None:
        self._nc = nc
        self._subject = f"{PULL_PREFIX}.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        self._request = 0
        self._current: str | None = None
        self._wanted = 0
        self._received: list[Msg] = []
        self._done: asyncio.Future[PullError | None] | None = None
        self._leftover: list[Msg] = []

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)

    async def close(self) -> None:
        """Stop receiving; messages fetched but never handed out are nak'ed."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed: nothing left to receive
                log.debug("pull subscription not removed cleanly: %r", exc)
        self._current = None
        await self._nak_leftover()

    async def fetch(self, batch: int, expires_s: float) -> list[Msg]:
        """Up to `batch` messages: what is available now, else the first to arrive within
        `expires_s` (then an empty list)."""
        self._request += 1
        reply = f"{self._inbox}.{self._request}"
        loop = asyncio.get_running_loop()
        self._current, self._wanted, self._received = reply, batch, []
        done = self._done = loop.create_future()
        request = {"batch": batch, "expires": int(expires_s * 1e9), "no_wait": True}
        try:
            await self._nc.publish(self._subject, json.dumps(request).encode(), reply=reply)
            try:
                async with asyncio.timeout(expires_s + REPLY_MARGIN_S):
                    refused = await done
            except TimeoutError:
                refused = None  # the request was lost (reconnect): keep what came
        except BaseException:
            self._leftover.extend(self._received)
            raise
        finally:
            self._current, self._done = None, None
        received, self._received = self._received, []
        if refused is not None and not received:
            raise refused
        return received

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        if not msg.data and headers and Header.STATUS in headers:
            done = self._done
            if msg.subject != self._current or done is None or done.done():
                return  # the end of a request nobody waits for any more
            status = headers[Header.STATUS]
            if status == "100":
                return  # an idle heartbeat (never asked for here)
            refused = None
            if status not in ("404", "408"):
                description = str(headers.get(Header.DESCRIPTION) or "").strip()
                refused = PullError(status, description.split("\n", 1)[0])
            done.set_result(refused)
            return
        done = self._done
        if done is None or done.done():
            await _nak(msg)  # its fetch gave up on it: let the next one have it now
            return
        self._received.append(msg)
        if len(self._received) >= self._wanted:
            done.set_result(None)

    async def _nak_leftover(self) -> None:
        leftover, self._leftover = self._leftover, []
        for msg in leftover:
            await _nak(msg)


async def _nak(msg: Msg) -> None:
    try:
        await msg.nak()
    except Exception as exc:  # already settled, or the connection is gone: ack wait decides
        log.debug("could not nak %s: %r", msg.subject, exc)
