"""Rollout events as telemetry: a JSON log line, a span and metrics for each, and a
Slack-compatible webhook for the ones people act on.

Everything a rollout does is an event in its stored record (`Rollout.events`), written by
compare-and-set. `ObservedStore` sees every change this controller stores, the rollout as
it was and as it is after, and hands the events the change added to `RolloutTelemetry`,
so each is emitted once, whether the drive loop or the API (promote, abort, undo) stored
it; a restarted controller emits nothing again for what it finds stored.

- **Logs**: one line per event through the kit's JSON logging (`event: "rollout"`, with
  `kind`, `rollout_id`, `rollout_service`, `rollout_version`, `step`, and the verdict's
  `verdict_outcome` and `verdict_rule`), written inside the event's span, so the line
  carries its trace id.
- **Spans**: one per event, in one trace per rollout (its id derives from the rollout's,
  so a restarted controller's spans join it; the trace's root is that shared, virtual
  parent). An analysis span covers the window the judge read and carries the verdict's
  numbers as attributes.
- **Metrics** on the controller's `/metrics`: counters of events and of analyses by
  outcome and rule, and gauges read at scrape time from the rollouts as last read from
  or written to the datastore (weights per track, running, phase), so they are right
  from the controller's first scrape after a restart.
- **Webhook** (`YARDARM_ROLLOUTS_WEBHOOK_URL`): a Slack incoming-webhook body (`text`,
  `blocks`, and the event as Slack message `metadata`) for started, paused, promoted,
  failed, aborted and completed, posted from a queue by a background task with a bounded
  timeout and retries with backoff: a slow or failing receiver never delays a rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, get_args
from urllib.parse import urlsplit

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from yardarm_kit.metrics import GaugeReading, LabeledCounter, Metrics

from yardarm.control_kv import ControlKv
from yardarm.rollout.state import Event, Phase, Rollout, RolloutStore

log = logging.getLogger("yardarm.rollout")

# The events a webhook gets: what people act on (not every step and verdict).
NOTIFIED: Final = frozenset({"started", "paused", "promoted", "failed", "aborted", "completed"})
PHASES: Final[tuple[str, ...]] = get_args(Phase)
_WARNING_KINDS = frozenset({"failed", "aborted"})
_MAX_TEXT = 3000  # Slack's limit for a section's text


@dataclass(frozen=True)
class WebhookConfig:
    """Where and how patiently to post. An attempt that times out, cannot connect, or
    gets a 5xx or 429 is retried after `backoff_s`, doubling up to `max_backoff_s` (with
    jitter), `attempts` times in all; another 4xx is final (retrying would not help). At
    most `queue` notifications wait; more are dropped (counted). On shutdown the queue
    gets `drain_s` to empty."""

    url: str
    timeout_s: float = 5.0
    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    queue: int = 100
    drain_s: float = 2.0


def check_webhook_url(text: str) -> str:
    """The URL, stripped, or ValueError saying what is wrong (never echoing the URL:
    a Slack webhook's path is its secret)."""
    url = text.strip()
    if not url:
        raise ValueError("the rollout webhook URL is empty (unset it to send no webhook)")
    if len(url) > 2048 or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise ValueError(
            "the rollout webhook URL must be one http(s) URL of at most 2048 characters, "
            "without spaces or control characters"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError as exc:
        raise ValueError(f"the rollout webhook URL does not parse: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"the rollout webhook URL must start with https:// (or http://), not "
            f"{parts.scheme + '://' if parts.scheme else 'no scheme'}: e.g. "
            "https://hooks.slack.com/services/T000/B000/XXXX"
        )
    if not parts.hostname:
        raise ValueError("the rollout webhook URL names no host")
    return url


def trace_context(rollout_id: str) -> SpanContext:
    """The shared parent of every span of one rollout: the same ids in every controller
    process, so `yardarm trace <id>` shows the whole rollout."""
    digest = hashlib.sha256(f"yardarm-rollout:{rollout_id}".encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(1))


def trace_id_of(rollout_id: str) -> str:
    return f"{trace_context(rollout_id).trace_id:032x}"


def _key(event: Event) -> tuple[float, str, str]:
    return event.at, event.kind, event.message


def new_events(before: Rollout | None, after: Rollout) -> list[Event]:
    """The events `after` holds that `before` (the same rollout, as stored before the
    change) did not, oldest first."""
    if before is None or before.id != after.id:
        return list(after.events)
    known = {_key(event) for event in before.events}
    return [event for event in after.events if _key(event) not in known]


def _step(rollout: Rollout, event: Event) -> int:
    """The step an event is about, counted from 1 as `status` shows it."""
    step = event.data.get("step", rollout.step)
    return (step if isinstance(step, int) else rollout.step) + 1


def _attribute(value: Any) -> Any:
    """An OpenTelemetry attribute value (None: leave the attribute out)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def verdict_attributes(verdict: dict[str, Any]) -> dict[str, Any]:
    """A verdict's outcome, rule and reason, and every check's outcome, rule and numbers,
    as span attributes (`yardarm.verdict.errors.p_value`, ...)."""
    attributes: dict[str, Any] = {
        "yardarm.verdict.outcome": verdict.get("outcome"),
        "yardarm.verdict.rule": verdict.get("rule"),
        "yardarm.verdict.reason": verdict.get("reason"),
    }
    for check in verdict.get("checks", []):
        prefix = f"yardarm.verdict.{check.get('name')}"
        attributes[f"{prefix}.outcome"] = check.get("outcome")
        attributes[f"{prefix}.rule"] = check.get("rule")
        for name, number in (check.get("numbers") or {}).items():
            attributes[f"{prefix}.{name}"] = _attribute(number)
    return {key: value for key, value in attributes.items() if value is not None}


class RolloutTelemetry:
    """Emits rollout events (logs, spans, metrics, webhook) and serves the rollout gauges.

    `changed(before, after)` after every stored change; `seen(rollout)` after every read
    (the gauges follow the stored rollouts, newest first). All calls are synchronous and
    quick: the webhook posts from its own task.
    """

    def __init__(
        self,
        metrics: Metrics,
        tracer: trace.Tracer,
        *,
        environment: str = "local",
        webhook: WebhookConfig | None = None,
    ) -> None:
        self._tracer = tracer
        self.environment = environment
        self._latest: dict[str, Rollout] = {}
        self.events = metrics.counter(
            "yardarm_rollout_events_total",
            "Rollout events this controller stored, by kind (started, step, verdict, "
            "paused, promoted, failed, aborted, completed).",
            ("rollout_service", "kind"),
        )
        self.analyses = metrics.counter(
            "yardarm_rollout_analyses_total",
            "Analyses of a canary against its baseline, by verdict and deciding rule.",
            ("rollout_service", "outcome", "rule"),
        )
        metrics.read_gauge(
            "yardarm_rollout_weight",
            "Percentage (0-100) of the service's traffic its current or last rollout gives "
            "each track, as stored (all on stable once it ended).",
            ("rollout_service", "rollout_track"),
            self._weights,
        )
        metrics.read_gauge(
            "yardarm_rollout_running",
            "1 while a rollout of the service runs (progressing or paused), else 0.",
            ("rollout_service",),
            self._running,
        )
        metrics.read_gauge(
            "yardarm_rollout_phase",
            "1 for the phase of the service's current or last rollout, 0 for the others.",
            ("rollout_service", "phase"),
            self._phases,
        )
        deliveries = metrics.counter(
            "yardarm_rollout_webhook_deliveries_total",
            "Webhook notifications by outcome: delivered, failed (after every attempt, or "
            "refused with a 4xx) or dropped (the queue was full).",
            ("rollout_service", "outcome"),
        )
        retries = metrics.counter(
            "yardarm_rollout_webhook_retries_total",
            "Webhook attempts retried, by why the last one failed (timeout, "
            "connect_error, server_error, rate_limited).",
            ("rollout_service", "reason"),
        )
        self.webhook = (
            None if webhook is None else Webhook(webhook, deliveries=deliveries, retries=retries)
        )

    # -- what the store saw ---------------------------------------------------------

    def seen(self, rollout: Rollout) -> None:
        """Keep the newest stored state of each service's rollout, for the gauges."""
        service = rollout.spec.service
        known = self._latest.get(service)
        if known is None or (rollout.started_at, rollout.updated_at) >= (
            known.started_at,
            known.updated_at,
        ):
            self._latest[service] = rollout

    def changed(self, before: Rollout | None, after: Rollout) -> None:
        """A change was stored: emit the events it added. Never raises: the change is
        stored whatever happens to its telemetry."""
        self.seen(after)
        for event in new_events(before, after):
            try:
                self.emit(after, event, before)
            except Exception:
                log.exception(
                    "could not emit the %s event of rollout %s",
                    event.kind,
                    after.id,
                    extra={"event": "rollout_telemetry_failed", "rollout_id": after.id},
                )

    def emit(self, rollout: Rollout, event: Event, before: Rollout | None = None) -> None:
        """One event: its span, its log line inside it, its counters, its notification."""
        service = rollout.spec.service
        verdict = event.data.get("verdict") if event.kind == "verdict" else None
        fields: dict[str, Any] = {
            "event": "rollout",
            "kind": event.kind,
            "rollout_id": rollout.id,
            "rollout_service": service,
            "rollout_version": rollout.spec.version,
            "stable_version": rollout.stable_version,
            "phase": rollout.phase,
            "step": _step(rollout, event),
        }
        if isinstance(verdict, dict):
            fields["verdict_outcome"] = verdict.get("outcome")
            fields["verdict_rule"] = verdict.get("rule")
        if event.kind in _WARNING_KINDS and rollout.reason:
            fields["reason"] = rollout.reason
        with self._span(rollout, event, verdict, before, fields) as span:
            level = logging.WARNING if self._alarming(event, verdict) else logging.INFO
            log.log(level, "rollout %s of %s: %s", rollout.id, service, event.message, extra=fields)
            span.end(end_time=int(event.at * 1e9))
        self.events.inc(rollout_service=service, kind=event.kind)
        if isinstance(verdict, dict):
            self.analyses.inc(
                rollout_service=service,
                outcome=str(verdict.get("outcome")),
                rule=str(verdict.get("rule")),
            )
        if self.webhook is not None and event.kind in NOTIFIED:
            self.webhook.notify(service, notification(rollout, event, self.environment))

    @staticmethod
    def _alarming(event: Event, verdict: Any) -> bool:
        return event.kind in _WARNING_KINDS or (
            isinstance(verdict, dict) and verdict.get("outcome") == "fail"
        )

    @contextlib.contextmanager
    def _span(
        self,
        rollout: Rollout,
        event: Event,
        verdict: Any,
        before: Rollout | None,
        fields: dict[str, Any],
    ) -> Iterator[Any]:
        """The event's span, current while the log line is written; ended by the caller
        at the event's time. An analysis span starts where the judged window did."""
        at_ns = int(event.at * 1e9)
        start_ns = at_ns
        name = f"rollout {event.kind}"
        attributes: dict[str, Any] = {
            "yardarm.rollout.id": rollout.id,
            "yardarm.rollout.service": rollout.spec.service,
            "yardarm.rollout.version": rollout.spec.version,
            "yardarm.rollout.stable_version": rollout.stable_version,
            "yardarm.rollout.strategy": rollout.spec.strategy,
            "yardarm.rollout.event": event.kind,
            "yardarm.rollout.phase": rollout.phase,
            "yardarm.rollout.step": fields["step"],
            "yardarm.rollout.message": event.message,
        }
        for track, weight in rollout.weights.items():
            attributes[f"yardarm.rollout.weight.{track}"] = weight
        if "reason" in fields:
            attributes["yardarm.rollout.reason"] = fields["reason"]
        for key, value in event.data.items():
            if key not in ("verdict", "step") and _attribute(value) is not None:
                attributes[f"yardarm.rollout.{key}"] = _attribute(value)
        if isinstance(verdict, dict):
            name = "rollout analysis"
            attributes.update(verdict_attributes(verdict))
            window_start = before.step_started_at if before is not None else None
            if window_start is not None and window_start <= event.at:
                start_ns = int(window_start * 1e9)
                attributes["yardarm.analysis.window_s"] = event.at - window_start
        parent = trace.set_span_in_context(NonRecordingSpan(trace_context(rollout.id)))
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.INTERNAL, attributes=attributes,
            start_time=start_ns,
        )  # fmt: skip
        if self._alarming(event, verdict):
            span.set_status(Status(StatusCode.ERROR, fields.get("reason") or event.message))
        with trace.use_span(span, end_on_exit=False):
            yield span

    # -- gauges, read at scrape time ------------------------------------------------

    def _weights(self) -> GaugeReading:
        # As stored: none before a canary's first step, none for a service that rolls
        # by restarting its instances (no traffic split).
        for service, rollout in sorted(self._latest.items()):
            for track, weight in sorted(rollout.weights.items()):
                yield (service, track), float(weight)

    def _running(self) -> GaugeReading:
        for service, rollout in sorted(self._latest.items()):
            yield (service,), 1.0 if rollout.running else 0.0

    def _phases(self) -> GaugeReading:
        for service, rollout in sorted(self._latest.items()):
            for phase in PHASES:
                yield (service, phase), 1.0 if rollout.phase == phase else 0.0

    async def close(self) -> None:
        if self.webhook is not None:
            await self.webhook.close()


class ObservedStore(RolloutStore):
    """The rollout store, telling the telemetry about every rollout it reads and every
    change it stores (with the rollout exactly as the winning compare-and-set saw it)."""

    def __init__(self, kv: ControlKv, telemetry: RolloutTelemetry) -> None:
        super().__init__(kv)
        self.telemetry = telemetry

    async def current(self, service: str) -> Rollout | None:
        rollout = await super().current(service)
        if rollout is not None:
            self.telemetry.seen(rollout)
        return rollout

    async def start(self, rollout: Rollout) -> Rollout:
        stored = await super().start(rollout)
        self.telemetry.changed(None, stored)
        return stored

    async def change(self, service: str, edit: Any, what: str) -> Rollout:
        seen: list[Rollout] = []

        def observed(rollout: Rollout) -> None:
            # Called once per compare-and-set attempt: the last call is the one stored.
            seen[:] = [rollout.model_copy(deep=True)]
            edit(rollout)

        stored = await super().change(service, observed, what)
        self.telemetry.changed(seen[0] if seen else None, stored)
        return stored


# -- the webhook ---------------------------------------------------------------------


def _mrkdwn(text: str) -> str:
    """Slack's escaping: an abort reason cannot mention `<!channel>` or break a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def notification(rollout: Rollout, event: Event, environment: str) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` (the notification's and any receiver's
    fallback), `blocks`, and the event as Slack message metadata (`event_type`,
    `event_payload`: flat values only, as Slack's metadata allows)."""
    spec = rollout.spec
    versions = f"{rollout.from_version or rollout.stable_version} -> {spec.version}"
    step = _step(rollout, event)
    text = (
        f"[{environment}] {spec.service} {versions}: {event.kind}: {event.message} "
        f"(rollout {rollout.id})"
    )
    weights = ", ".join(f"{track} {w}%" for track, w in sorted(rollout.weights.items()))
    context = (
        f"rollout `{rollout.id}` · {_mrkdwn(environment)} · {_mrkdwn(spec.strategy)} · "
        f"step {step}" + (f" · {_mrkdwn(weights)}" if weights else "")
    )
    payload: dict[str, Any] = {
        "environment": environment,
        "rollout_id": rollout.id,
        "service": spec.service,
        "version": spec.version,
        "from_version": rollout.from_version or rollout.stable_version,
        "stable_version": rollout.stable_version,
        "strategy": spec.strategy,
        "phase": rollout.phase,
        "kind": event.kind,
        "message": event.message,
        "at": event.at,
        "step": step,
        "trace_id": trace_id_of(rollout.id),
    }
    if rollout.reason:
        payload["reason"] = rollout.reason
    if rollout.weights:
        payload["weights"] = dict(rollout.weights)
    payload.update(
        {
            key: value
            for key, value in event.data.items()
            if key not in payload and isinstance(value, bool | int | float | str)
        }
    )
    section = (
        f"*{_mrkdwn(spec.service)}* {_mrkdwn(versions)}: *{event.kind}*\n{_mrkdwn(event.message)}"
    )
    return {
        "text": text[:_MAX_TEXT],
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": section[:_MAX_TEXT]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
        "metadata": {"event_type": f"yardarm_rollout_{event.kind}", "event_payload": payload},
    }


class _Retry(Exception):
    """An attempt that may succeed if tried again; `reason` is the retries' label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Webhook:
    """Posts notifications in order from a queue, one task, so a slow receiver delays
    notifications, never a rollout. Logs never show the URL (its path is the secret),
    only its host."""

    def __init__(
        self, config: WebhookConfig, *, deliveries: LabeledCounter, retries: LabeledCounter
    ) -> None:
        self.config = config
        self.host = urlsplit(config.url).hostname or "?"
        self._deliveries = deliveries
        self._retries = retries
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._task: asyncio.Task[None] | None = None

    def notify(self, service: str, body: dict[str, Any]) -> None:
        """Queue one notification (dropped, counted and logged when the queue is full)."""
        if self._queue is None:
            self._queue = asyncio.Queue(self.config.queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(self._queue), name="rollout webhook"
            )
        try:
            self._queue.put_nowait((service, body))
        except asyncio.QueueFull:
            self._deliveries.inc(rollout_service=service, outcome="dropped")
            log.warning(
                "rollout webhook to %s: %d notifications wait already; dropped one",
                self.host,
                self.config.queue,
                extra={"event": "rollout_webhook_dropped", "rollout_service": service},
            )

    async def _run(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            trust_env=True,  # HTTPS_PROXY and friends, as for any call out of the network
        ) as session:
            while True:
                service, body = await queue.get()
                try:
                    await self._deliver(session, service, body)
                except Exception:
                    log.exception("rollout webhook to %s failed", self.host)
                finally:
                    queue.task_done()

    async def _deliver(
        self, session: aiohttp.ClientSession, service: str, body: dict[str, Any]
    ) -> None:
        kind = body["metadata"]["event_payload"]["kind"]
        delay = self.config.backoff_s
        problem = ""
        for attempt in range(1, self.config.attempts + 1):
            try:
                final = await self._attempt(session, body)
            except _Retry as retry:
                problem = str(retry)
                if attempt == self.config.attempts:
                    break
                self._retries.inc(rollout_service=service, reason=retry.reason)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.config.max_backoff_s)
                continue
            if final is None:
                self._deliveries.inc(rollout_service=service, outcome="delivered")
                return
            problem = final
            break
        self._deliveries.inc(rollout_service=service, outcome="failed")
        log.warning(
            "rollout webhook to %s: the %s notification of %s was not delivered: %s",
            self.host,
            kind,
            service,
            problem,
            extra={
                "event": "rollout_webhook_failed",
                "rollout_service": service,
                "kind": kind,
                "attempts": attempt,
            },
        )

    async def _attempt(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> str | None:
        """None when delivered; a final refusal's description; raises _Retry."""
        try:
            async with session.post(self.config.url, json=body, allow_redirects=False) as answer:
                text = (await answer.content.read(300)).decode(errors="replace")
                status = answer.status
        except TimeoutError:
            raise _Retry("timeout", f"no answer within {self.config.timeout_s:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retry("connect_error", f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return None
        if status == 429:
            raise _Retry("rate_limited", f"429 {text}")
        if status >= 500:
            raise _Retry("server_error", f"{status} {text}")
        return f"{status} {text}"

    async def close(self) -> None:
        """Give waiting notifications `drain_s` to go out, then stop."""
        if self._queue is not None and self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), self.config.drain_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
