"""Rollout events as telemetry: each event the controller stores is logged, traced and
counted once, the gauges follow the stored rollouts (also in a freshly started
controller), and the webhook gets the events people act on, posted to a real HTTP server
on loopback, without ever holding up the drive loop when that server fails."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from yardarm_kit.logs import JsonFormatter
from yardarm_kit.metrics import Metrics
from yardarm_kit.settings import ServiceSettings

from yardarm.control_kv import ControlKv
from yardarm.local.rollout_controller import ControllerSettings
from yardarm.local.rollout_controller import main as controller_main
from yardarm.rollout.api import RolloutController
from yardarm.rollout.controller import drive
from yardarm.rollout.engine import EngineConfig
from yardarm.rollout.judge import JudgeConfig, judge
from yardarm.rollout.spec import RolloutSpec, Step
from yardarm.rollout.state import Rollout
from yardarm.rollout.telemetry import (
    ObservedStore,
    RolloutTelemetry,
    WebhookConfig,
    check_webhook_url,
    trace_id_of,
)
from yardarm.rollout.view import history_table, status_view
from yardarm.rollout.window import TrackWindow

SETTINGS = ServiceSettings(service="rollouts", instance="rollouts", port=1, span_files=False)
# The webhook's patience in these tests: short, so a failing receiver's retries end soon.
PATIENCE = {"timeout_s": 2.0, "attempts": 3, "backoff_s": 0.05, "max_backoff_s": 0.2}


@dataclass
class Observed:
    """A controller's telemetry, with what it emitted."""

    telemetry: RolloutTelemetry
    metrics: Metrics
    spans: InMemorySpanExporter

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The series of one family now, by their labels beyond the controller's own."""
        text = generate_latest(self.metrics.registry).decode()
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != name:
                    continue
                own = {k: sample.labels[k] for k in ("service", "instance")}
                assert own == {"service": "rollouts", "instance": "rollouts"}
                extra = {
                    k: v
                    for k, v in sample.labels.items()
                    if k not in ("service", "version", "track", "instance")
                }
                found[tuple(sorted(extra.items()))] = sample.value
        return found


def observed(webhook: WebhookConfig | None = None) -> Observed:
    metrics = Metrics(SETTINGS)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = RolloutTelemetry(
        metrics, provider.get_tracer("test"), environment="ci", webhook=webhook
    )
    return Observed(telemetry, metrics, spans)


def canary(version: str = "0.2.0", steps: tuple[Step, ...] = (10, 50, 100)) -> Rollout:
    spec = RolloutSpec(service="orders", version=version, steps=steps)
    return Rollout(spec=spec, stable_version="0.1.0", from_version="0.1.0")


def failing_verdict() -> dict[str, Any]:
    """What the judge says of a canary failing 10% of its requests next to a clean
    baseline."""
    points = tuple(0.02 for _ in range(30))
    canary_window = TrackWindow("canary", 400, 40, points, weight=10.0, share=10.0)
    baseline_window = TrackWindow("baseline", 400, 1, points, weight=10.0, share=10.0)
    verdict = judge(canary_window, baseline_window, JudgeConfig.for_service("orders"))
    assert (verdict.outcome, verdict.rule) == ("fail", "error-rate")
    return verdict.as_dict()


def as_stored(rollout: Rollout) -> Rollout:
    return Rollout.model_validate_json(rollout.model_dump_json())


class JsonLines(logging.Handler):
    """The kit's JSON log lines, formatted as they are written (a line takes the trace
    id of the span current then)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter(SETTINGS))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def rollout_events(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == "rollout"]


@pytest.fixture
def logs() -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger("yardarm.rollout")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_each_event_is_logged_traced_and_counted_once_with_the_verdicts_numbers(
    logs: JsonLines,
) -> None:
    seen = observed()
    started = canary()
    started.record("started", "orders 0.1.0 -> 0.2.0", at=1000.0)
    seen.telemetry.changed(None, as_stored(started))

    stepped = as_stored(started)
    stepped.step_started_at = 1010.0
    stepped.weights = {"stable": 80, "canary": 10, "baseline": 10}
    stepped.record("step", "step 1: canary at 10%", at=1010.0, step=0)
    seen.telemetry.changed(started, as_stored(stepped))

    verdict = failing_verdict()
    failed = as_stored(stepped)
    failed.record("verdict", "fail (error-rate): ...", at=1040.0, step=0, verdict=verdict)
    failed.phase, failed.reason, failed.weights = "failed", "the canary failed", {"stable": 100}
    failed.record("failed", "rolled back: the canary failed", at=1040.0, canary_errors=40)
    seen.telemetry.changed(stepped, as_stored(failed))

    kinds = ["started", "step", "verdict", "failed"]
    lines = logs.rollout_events()
    assert [line["kind"] for line in lines] == kinds  # each once, in order
    for line in lines:
        assert line["service"] == "rollouts"  # the kit's identity of the controller
        assert (line["rollout_service"], line["rollout_version"]) == ("orders", "0.2.0")
        assert line["rollout_id"] == started.id
        assert line["trace_id"] == trace_id_of(started.id)  # written inside its span
    assert lines[1]["step"] == 1
    assert (lines[2]["verdict_outcome"], lines[2]["verdict_rule"]) == ("fail", "error-rate")
    assert lines[2]["level"] == "warning" and lines[3]["level"] == "warning"
    assert lines[3]["reason"] == "the canary failed"

    spans = seen.finished_spans()
    assert [span.name for span in spans] == [
        "rollout started",
        "rollout step",
        "rollout analysis",
        "rollout failed",
    ]
    assert {f"{span.context.trace_id:032x}" for span in spans} == {trace_id_of(started.id)}
    analysis = spans[2]
    # It covers the window the judge read: from the step's start to the verdict.
    assert (analysis.start_time, analysis.end_time) == (1010 * 10**9, 1040 * 10**9)
    attributes = dict(analysis.attributes or {})
    errors = next(check for check in verdict["checks"] if check["name"] == "errors")
    assert attributes["yardarm.verdict.outcome"] == "fail"
    assert attributes["yardarm.verdict.rule"] == "error-rate"
    assert attributes["yardarm.verdict.errors.outcome"] == "fail"
    for number, value in errors["numbers"].items():
        if value is not None:
            assert attributes[f"yardarm.verdict.errors.{number}"] == value, number
    assert attributes["yardarm.rollout.id"] == started.id
    assert dict(spans[3].attributes or {})["yardarm.rollout.canary_errors"] == 40
    assert spans[3].status.is_ok is False

    assert seen.samples("yardarm_rollout_events_total") == {
        (("kind", kind), ("rollout_service", "orders")): 1.0 for kind in kinds
    }
    assert seen.samples("yardarm_rollout_analyses_total") == {
        (("outcome", "fail"), ("rollout_service", "orders"), ("rule", "error-rate")): 1.0
    }


def test_the_gauges_show_the_newest_stored_rollout_of_each_service() -> None:
    seen = observed()
    assert seen.samples("yardarm_rollout_running") == {}  # no rollout seen yet: no series
    running = canary()
    running.weights = {"stable": 80, "canary": 10, "baseline": 10}
    running.record("step", "step 1: canary at 10%", at=1000.0, step=0)
    older = as_stored(running)
    running.weights = {"stable": 50, "canary": 25, "baseline": 25}
    running.record("step", "step 2: canary at 25%", at=1010.0, step=1)
    seen.telemetry.seen(as_stored(running))
    seen.telemetry.seen(older)  # a read that started before the change and ended after

    orders = ("rollout_service", "orders")
    assert seen.samples("yardarm_rollout_weight") == {
        (orders, ("rollout_track", "baseline")): 25.0,
        (orders, ("rollout_track", "canary")): 25.0,
        (orders, ("rollout_track", "stable")): 50.0,
    }
    assert seen.samples("yardarm_rollout_running") == {(orders,): 1.0}
    phases = seen.samples("yardarm_rollout_phase")
    assert phases[(("phase", "progressing"), orders)] == 1.0
    assert sum(phases.values()) == 1.0 and len(phases) == 5

    ended = as_stored(running)
    ended.phase, ended.weights = "completed", {"stable": 100}
    ended.record("completed", "orders runs 0.2.0 on stable", at=1020.0)
    seen.telemetry.seen(ended)
    # The canary's and the baseline's series go: they take no traffic any more.
    assert seen.samples("yardarm_rollout_weight") == {(orders, ("rollout_track", "stable")): 100}
    assert seen.samples("yardarm_rollout_running") == {(orders,): 0.0}
    assert seen.samples("yardarm_rollout_phase")[(("phase", "completed"), orders)] == 1.0


def kv(url: str) -> ControlKv:
    return ControlKv([url], "no-auth-here", timeout_s=10)


async def test_concurrent_changes_emit_each_event_once_and_a_restart_none_again(
    datastore_url: str, logs: JsonLines
) -> None:
    first = observed()
    store = ObservedStore(kv(datastore_url), first.telemetry)
    started = await store.start(canary())

    def step(rollout: Rollout) -> None:
        rollout.step += 1
        rollout.weights = {"stable": 100 - 2 * rollout.step, "canary": rollout.step}
        rollout.weights["baseline"] = rollout.step
        rollout.record("step", f"step {rollout.step + 1}", step=rollout.step)

    def note(rollout: Rollout) -> None:
        rollout.record("promoted", "from the CLI")

    # Compare-and-set conflicts: edits run again on the rollout as it then stands.
    await asyncio.gather(
        *(store.change("orders", step, "step") for _ in range(5)),
        store.change("orders", note, "promote"),
    )
    stored = await store.current("orders")
    assert stored is not None
    kinds = sorted(event.kind for event in stored.events)
    assert kinds == ["promoted", "started", *["step"] * 5]
    assert sorted(line["kind"] for line in logs.rollout_events()) == kinds
    assert len(first.finished_spans()) == len(kinds)
    assert first.samples("yardarm_rollout_events_total") == {
        (("kind", "promoted"), ("rollout_service", "orders")): 1.0,
        (("kind", "started"), ("rollout_service", "orders")): 1.0,
        (("kind", "step"), ("rollout_service", "orders")): 5.0,
    }

    # A restarted controller reads the stored rollouts as it resumes them: its gauges
    # are right at once, and nothing that was emitted before is emitted again.
    logs.lines.clear()
    second = observed()
    restarted = ObservedStore(kv(datastore_url), second.telemetry)
    for service in ("orders", "fulfillment", "gateway", "datastore"):
        await restarted.current(service)
    orders = ("rollout_service", "orders")
    assert second.samples("yardarm_rollout_weight") == {
        (orders, ("rollout_track", "baseline")): 5.0,
        (orders, ("rollout_track", "canary")): 5.0,
        (orders, ("rollout_track", "stable")): 90.0,
    }
    assert second.samples("yardarm_rollout_running") == {(orders,): 1.0}
    assert second.samples("yardarm_rollout_phase")[(("phase", "progressing"), orders)] == 1.0
    assert second.samples("yardarm_rollout_events_total") == {}
    assert logs.rollout_events() == [] and second.finished_spans() == []

    def abort(rollout: Rollout) -> None:
        rollout.phase, rollout.reason, rollout.weights = "aborted", "p99 high", {"stable": 100}
        rollout.record("aborted", "aborted: p99 high")

    await restarted.change("orders", abort, "abort")
    assert [line["kind"] for line in logs.rollout_events()] == ["aborted"]
    assert second.samples("yardarm_rollout_running") == {(orders,): 0.0}
    assert started.id == stored.id


# -- the webhook, against a real HTTP server on loopback -------------------------------


@dataclass
class Receiver:
    """A webhook receiver: records every POST; answers `status` after `delay_s`."""

    status: int = 200
    delay_s: float = 0.0
    posts: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        self.posts.append(await request.json())
        await asyncio.sleep(self.delay_s)
        return web.Response(status=self.status, text="ok" if self.status == 200 else "no")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/services/T0/B0/secret", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    found.url = f"http://127.0.0.1:{port}/services/T0/B0/secret"
    yield found
    await runner.cleanup()


class NothingToDo:
    """A target whose every effect succeeds at once (no instances, no traffic)."""

    def __init__(self) -> None:
        self.stable = "0.1.0"

    def now(self) -> float:
        return time.time()

    def stable_version(self, service: str) -> str:
        return self.stable

    def replicas(self, service: str) -> int:
        return 1

    async def ensure_tracks(self, service: str, tracks: Mapping[str, tuple[str, int]]) -> None:
        return None

    async def stop_tracks(self, service: str, tracks: tuple[str, ...]) -> None:
        return None

    async def promote(self, service: str, version: str) -> None:
        self.stable = version

    async def set_weights(
        self, service: str, weights: Mapping[str, int], sticky: str | None = None
    ) -> None:
        return None

    async def windows(self, service: str, *args: Any) -> dict[str, TrackWindow]:
        raise AssertionError("a rollout straight to 100% is never judged")

    async def smoke(self, service: str, tracks: tuple[str, ...]) -> None:
        return None

    async def sample(self, service: str) -> None:
        return None


async def _drive(store: ObservedStore, rollout: Rollout) -> Rollout | None:
    """Start a rollout straight to 100% and drive it to its end, as the controller does."""
    await store.start(rollout)
    return await drive(
        store,
        NothingToDo(),  # type: ignore[arg-type]
        "orders",
        JudgeConfig.for_service("orders"),
        EngineConfig(),
        sub_window_s=0.1,
    )


async def _until(condition: Any, bound_s: float) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


async def test_the_webhook_gets_slack_json_for_the_events_people_act_on(
    datastore_url: str, receiver: Receiver
) -> None:
    seen = observed(WebhookConfig(receiver.url, **PATIENCE))  # type: ignore[arg-type]
    store = ObservedStore(kv(datastore_url), seen.telemetry)
    rollout = canary(steps=(100,))
    ended = await _drive(store, rollout)
    assert ended is not None and ended.phase == "completed"
    await _until(lambda: len(receiver.posts) == 2, bound_s=PATIENCE["timeout_s"] * 4)
    await seen.telemetry.close()

    assert receiver.content_types == ["application/json"] * 2
    first, last = receiver.posts
    assert [post["metadata"]["event_type"] for post in receiver.posts] == [
        "yardarm_rollout_started",
        "yardarm_rollout_completed",
    ]
    assert first["text"] == (
        f"[ci] orders 0.1.0 -> 0.2.0: started: orders 0.1.0 -> 0.2.0 (rollout {rollout.id})"
    )
    section, context = last["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert section["text"]["text"] == (
        "*orders* 0.1.0 -&gt; 0.2.0: *completed*\norders runs 0.2.0 on stable"
    )
    assert context["type"] == "context" and f"rollout `{rollout.id}`" in str(context)
    payload = last["metadata"]["event_payload"]
    assert payload["rollout_id"] == rollout.id
    assert (payload["service"], payload["version"], payload["kind"]) == (
        "orders",
        "0.2.0",
        "completed",
    )
    assert (payload["environment"], payload["phase"], payload["stable_version"]) == (
        "ci",
        "completed",
        "0.2.0",
    )
    assert payload["trace_id"] == trace_id_of(rollout.id)
    for value in payload.values():  # Slack's metadata: flat values, or one flat object
        assert isinstance(value, str | int | float | bool) or all(
            isinstance(inner, str | int | float | bool) for inner in value.values()
        )
    assert seen.samples("yardarm_rollout_webhook_deliveries_total") == {
        (("outcome", "delivered"), ("rollout_service", "orders")): 2.0
    }
    assert seen.samples("yardarm_rollout_webhook_retries_total") == {}


async def test_a_failing_webhook_is_retried_and_counted_and_never_holds_up_the_rollout(
    datastore_url: str, receiver: Receiver, logs: JsonLines
) -> None:
    receiver.status, receiver.delay_s = 500, 0.75
    config = WebhookConfig(receiver.url, **PATIENCE)  # type: ignore[arg-type]
    seen = observed(config)
    store = ObservedStore(kv(datastore_url), seen.telemetry)
    ended = await _drive(store, canary(steps=(100,)))
    # The loop ended while the webhook was still at its first notification: each of its
    # attempts takes the receiver's delay, and the loop waited for none of them.
    assert ended is not None and ended.phase == "completed"
    assert len(receiver.posts) < config.attempts

    every_attempt_s = config.attempts * (receiver.delay_s + config.max_backoff_s)
    await _until(
        lambda: (
            seen.samples("yardarm_rollout_webhook_deliveries_total")
            == {(("outcome", "failed"), ("rollout_service", "orders")): 2.0}
        ),
        bound_s=2 * every_attempt_s * 4,
    )
    assert len(receiver.posts) == 2 * config.attempts  # both, every attempt
    assert seen.samples("yardarm_rollout_webhook_retries_total") == {
        (("reason", "server_error"), ("rollout_service", "orders")): 2.0 * (config.attempts - 1)
    }
    failures = [line for line in logs.lines if line.get("event") == "rollout_webhook_failed"]
    assert [line["kind"] for line in failures] == ["started", "completed"]
    for line in failures:
        assert line["level"] == "warning" and line["attempts"] == config.attempts
        assert "500 no" in line["message"] and "127.0.0.1" in line["message"]
        assert "secret" not in json.dumps(line)  # the URL's path is the secret
    await seen.telemetry.close()


async def test_an_abort_states_its_reason_in_status_history_logs_and_the_webhook(
    datastore_url: str, receiver: Receiver, logs: JsonLines
) -> None:
    seen = observed(WebhookConfig(receiver.url, **PATIENCE))  # type: ignore[arg-type]
    store = ObservedStore(kv(datastore_url), seen.telemetry)
    target: Any = NothingToDo()
    controller = RolloutController(store, target, {}, EngineConfig(), sub_window_s=0.1)
    try:
        rollout = await store.start(canary(steps=(10, "pause", 100)))
        await controller.abort("orders", "p99 <!channel> too high")
        await _until(lambda: len(receiver.posts) == 2, bound_s=PATIENCE["timeout_s"] * 4)
    finally:
        await controller.stop()
        await seen.telemetry.close()

    current = await store.current("orders")
    [last] = await store.history("orders")
    assert current is not None and current.id == last.id == rollout.id
    assert (current.phase, current.reason) == ("aborted", "p99 <!channel> too high")
    assert last.reason == current.reason
    console = Console(width=200, record=True)
    console.print(status_view(current))
    console.print(history_table("orders", [last]))
    assert console.export_text().count("p99 <!channel> too high") >= 2

    [line] = [line for line in logs.rollout_events() if line["kind"] == "aborted"]
    assert line["reason"] == "p99 <!channel> too high"
    aborted = receiver.posts[1]
    assert aborted["metadata"]["event_payload"]["reason"] == "p99 <!channel> too high"
    # Slack's escaping: an operator's reason cannot notify a whole channel.
    assert "p99 &lt;!channel&gt; too high" in aborted["blocks"][0]["text"]["text"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example/services/T/B/secret", "must start with https://"),
        ("hooks.example/services/T/B/secret", "must start with https://"),
        ("https:///services/T/B/secret", "names no host"),
        ("https://hooks.example:99999/services/T/B/secret", "does not parse"),
        ("https://hooks.example/services/T/B/sec ret", "without spaces"),
    ],
)
def test_a_bad_webhook_url_is_refused_at_start_up_without_showing_it(
    url: str, why: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with pytest.raises(ValueError, match=why):
        check_webhook_url(url)
    monkeypatch.setenv("YARDARM_ROLLOUTS_WEBHOOK_URL", url)
    assert controller_main(["--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "YARDARM_ROLLOUTS_WEBHOOK_URL: Value error, the rollout webhook URL" in err
    assert why in err and "secret" not in err


def test_a_good_or_empty_webhook_url_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://hooks.slack.com/services/T000/B000/XXXX"
    monkeypatch.setenv("YARDARM_ROLLOUTS_WEBHOOK_URL", f" {url} ")
    assert ControllerSettings().webhook_url == url
    monkeypatch.setenv("YARDARM_ROLLOUTS_WEBHOOK_URL", "")
    assert ControllerSettings().webhook_url is None
