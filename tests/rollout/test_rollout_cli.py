"""`yardarm rollout ...`: what the views show for running, failed and completed rollouts,
bad input refused before any request, and the commands against a small controller that
speaks the rollout API (the end-to-end test runs the real one)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rich.console import Console, RenderableType
from rich.text import Text
from typer.testing import CliRunner, Result

from yardarm.cli import app
from yardarm.credentials import admin_token
from yardarm.local import control
from yardarm.rollout import commands, view
from yardarm.rollout.judge import JudgeConfig, judge
from yardarm.rollout.spec import RolloutSpec
from yardarm.rollout.state import Rollout
from yardarm.rollout.window import TrackWindow

NOW = 1_700_000_100.0
POINTS = tuple(0.015 + 0.001 * (i % 7) for i in range(30))  # latency points, seconds


def verdict(
    canary_requests: int, canary_errors: int, baseline_requests: int = 298, points: int = 30
) -> dict[str, Any]:
    """A real verdict of the judge: the canary against a baseline with 1 error, each track
    at a weight of 25%."""
    config = JudgeConfig.for_service("orders")
    routes = 4 * max(canary_requests, baseline_requests)
    canary = TrackWindow(
        "canary",
        canary_requests,
        canary_errors,
        POINTS[:points],
        weight=25,
        share=25.0,
        route_requests=routes,
    )
    baseline = TrackWindow(
        "baseline",
        baseline_requests,
        1,
        POINTS[:points],
        weight=25,
        share=25.0,
        route_requests=routes,
    )
    return judge(canary, baseline, config).as_dict()


def running() -> Rollout:
    """orders 0.1.0 -> 0.2.0 at its second step (25%), two analyses in."""
    rollout = Rollout(
        id="run000000001",
        spec=RolloutSpec(service="orders", version="0.2.0", steps=(10, 25, "pause", 50, 100)),
        stable_version="0.1.0",
        from_version="0.1.0",
        step=1,
        step_started_at=NOW - 12,
        started_at=NOW - 60,
        verdicts=[verdict(120, 1, 118, points=10), verdict(300, 2)],
    )
    rollout.record("started", "orders 0.1.0 -> 0.2.0", at=NOW - 60)
    rollout.record("step", "step 2: canary at 25%", at=NOW - 12)
    return rollout


def failed() -> Rollout:
    rollout = running().model_copy(deep=True)
    rollout.id = "bad000000001"
    rollout.phase = "failed"
    rollout.verdicts = [verdict(300, 40)]
    rollout.reason = "analysis 1 failed (error-rate): canary 40/300 errors (13.33%)"
    rollout.record("failed", "rolled back: analysis 1 failed; 40 request(s) failed", at=NOW - 5)
    return rollout


def completed() -> Rollout:
    rollout = running().model_copy(deep=True)
    rollout.id = "good00000001"
    rollout.phase = "completed"
    rollout.step = 4
    rollout.stable_version = "0.2.0"
    rollout.verdicts = []
    rollout.record("completed", "orders runs 0.2.0 on stable", at=NOW - 1)
    return rollout


def shown(renderable: RenderableType) -> str:
    console = Console(width=220, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


def row(text: str, *cells: str) -> bool:
    """Whether one line of a table starts with these cells (the last one may go on)."""
    *whole, last = cells
    for line in text.splitlines():
        parts = [part.strip() for part in line.split("│") if part.strip()]
        if (
            len(parts) >= len(cells)
            and parts[: len(whole)] == whole
            and parts[len(whole)].startswith(last)
        ):
            return True
    return False


# -- views ----------------------------------------------------------------------------


def test_a_running_rollout_shows_its_step_weights_next_step_and_verdicts() -> None:
    text = shown(view.status_view(running(), NOW))
    assert "orders 0.1.0 -> 0.2.0  canary  progressing" in text
    assert "step 2 of 5: 25%" in text
    # Each track's version and weight, and the judged tracks' traffic at the last analysis.
    assert row(text, "stable", "0.1.0", "50%", "-")
    assert row(text, "canary", "0.2.0", "25%", "300", "2 (0.67%)", "18.0 ms")
    assert row(text, "baseline", "0.1.0", "25%", "298", "1 (0.34%)", "18.0 ms")
    assert "next: pause at 25% once the step's 3 analyses pass (every 10s), in about 18s" in text
    # Every verdict of the step, and the latest one's checks with their numbers.
    assert row(text, "1", "inconclusive", "minimum-requests", "too few requests (canary 120")
    assert row(text, "2", "pass", "all-checks-pass", "every check passed")
    assert row(
        text,
        "errors",
        "pass",
        "error-rate",
        "canary 2/300 (0.67%), baseline 1/298 (0.34%), effect +0.33 pp, p=0.5",
    )
    assert row(
        text,
        "latency",
        "pass",
        "latency",
        "points 30/30, medians 18.0 ms vs 18.0 ms, effect +0.0 ms, p=0.5",
    )
    assert row(text, "share", "pass", "starved", "share 25.0% of 1200 requests, weight 25%")
    assert row(
        text, "guardrail-latency", "pass", "guardrail-latency", "q0.9 21.0 ms vs ceiling 500.0 ms"
    )
    assert "step 2: canary at 25%" in text  # the events


def test_a_paused_rollout_says_promote_goes_on() -> None:
    rollout = running()
    rollout.step, rollout.phase, rollout.verdicts = 2, "paused", []
    text = shown(view.status_view(rollout, NOW))
    assert "step 3 of 5: pause at 25%" in text
    assert "next: waits for `yardarm rollout promote orders`, then 50%" in text
    assert "no analysis in this step yet" in text


def test_a_failed_rollout_shows_its_reason_the_failing_verdict_and_stable_at_full() -> None:
    text = shown(view.status_view(failed(), NOW))
    assert "orders 0.1.0 -> 0.2.0  canary  failed" in text
    assert "reason: analysis 1 failed (error-rate): canary 40/300 errors (13.33%)" in text
    assert row(text, "stable", "0.1.0", "100%")
    assert not row(text, "canary")
    assert "next:" not in text
    assert row(text, "1", "fail", "error-rate", "canary 40/300 errors (13.33%)")
    assert row(
        text,
        "errors",
        "fail",
        "error-rate",
        "canary 40/300 (13.33%), baseline 1/298 (0.34%), effect +13.00 pp, p=5.8e-12",
    )
    assert row(
        text,
        "guardrail-errors",
        "fail",
        "guardrail-error-ratio",
        "canary 40/300 (13.33%) vs ceiling 7.20%, p=0.00014",
    )
    assert "rolled back: analysis 1 failed; 40 request(s) failed" in text


def test_a_completed_rollout_shows_the_new_version_on_stable() -> None:
    text = shown(view.status_view(completed(), NOW))
    # Once completed the stable track runs the new version; the header still says from what.
    assert "orders 0.1.0 -> 0.2.0  canary  completed" in text
    assert "step 5 of 5: 100% (promotion)" in text
    assert row(text, "stable", "0.2.0", "100%")
    assert not row(text, "canary") and not row(text, "baseline")
    assert "after 59s" in text
    assert "next:" not in text and "reason:" not in text


def test_a_blue_green_preview_shows_green_smoke_against_stable() -> None:
    rollout = Rollout(
        id="bg0000000001",
        spec=RolloutSpec(service="orders", version="0.2.0", strategy="blue-green"),
        stable_version="0.1.0",
        from_version="0.1.0",
        step_started_at=NOW - 12,
        started_at=NOW - 20,
        verdicts=[verdict(300, 2)],
    )
    text = shown(view.status_view(rollout, NOW))
    assert "step 1 of 4: preview (pre-promotion analysis)" in text
    assert "blue kept 30s" in text
    # The judge's canary and baseline are green's and stable's smoke requests.
    assert row(text, "green", "0.2.0", "0%", "300", "2 (0.67%)")
    assert row(text, "stable", "0.1.0", "100%", "298", "1 (0.34%)")
    assert "smoke traffic: the step so far" in text
    assert "switched (post-promotion analysis) once the step's 3 analyses pass" in text


def test_a_rolling_restart_has_no_weights() -> None:
    rollout = Rollout(
        spec=RolloutSpec(service="datastore", version="0.2.0"), stable_version="0.1.0"
    )
    text = shown(view.status_view(rollout, NOW))
    assert "rolling restart" in text and "one replica at a time" in text
    assert row(text, "stable", "0.2.0", "-")  # what the rollout asks of the track
    assert "replaced by 0.2.0 one at a time" in text and "weights being applied" not in text


def test_a_consumer_rollout_shows_instances_and_their_expected_share() -> None:
    rollout = running().model_copy(deep=True)
    rollout.spec = RolloutSpec(service="fulfillment", version="0.2.0", steps=(10, 50, 100))
    rollout.step, rollout.stable_replicas = 1, 2
    text = shown(view.status_view(rollout, NOW))
    assert "canary by instances" in text
    # ceil(50% of 2) = 1 canary and 1 baseline instance beside stable's 2.
    assert row(text, "stable", "0.1.0", "2 inst. (~50%)")
    assert row(text, "canary", "0.2.0", "1 inst. (~25%)", "300", "2 (0.67%)")
    assert row(text, "baseline", "0.1.0", "1 inst. (~25%)", "298")
    assert "deliveries: the step so far" in text
    started = shown(Text.from_markup(view.started_text(rollout)))
    assert "a step's percentage of stable's instances, rounded up, run the canary" in started


def test_a_restart_of_a_single_replica_warns_when_it_starts() -> None:
    rollout = Rollout(spec=RolloutSpec(service="gateway", version="0.2.0"), stable_version="0.1.0")
    rollout.record("warning", "gateway runs one replica: connections are refused for a moment")
    text = shown(Text.from_markup(view.started_text(rollout)))
    assert "warning: gateway runs one replica: connections are refused" in text


def test_history_and_list_tables() -> None:
    history = shown(view.history_table("orders", [completed(), failed()], NOW))
    assert row(history, "good00000001", "0.1.0 -> 0.2.0", "completed")
    assert "59s" in history
    assert row(history, "bad000000001", "0.1.0 -> 0.2.0", "failed")
    assert "analysis 1 failed (error-rate)" in history
    assert "no finished rollout of orders yet" in shown(view.history_table("orders", [], NOW))
    listed = shown(view.list_table([running()], NOW))
    assert row(
        listed, "orders", "run000000001", "0.1.0 -> 0.2.0", "canary", "progressing", "2/5", "25%"
    )


# -- the commands ---------------------------------------------------------------------


def cli(home: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["rollout", *args, "--home", str(home)], env={"COLUMNS": "220"})


@pytest.fixture
def no_requests(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every lookup of the controller: bad input must not get that far."""
    looked_up: list[Path] = []

    def lookup(home: Path) -> str | None:
        looked_up.append(home)
        return None

    monkeypatch.setattr(control, "rollout_controller_url", lookup)
    return looked_up


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "linear"], "unknown strategy 'linear': use canary or blue-green"),
        (["--steps", "10,5,100"], "steps '10,5,100': weights must rise step by step"),
        (["--steps", "pause,50,100"], "a pause waits at a weight, so it cannot be first"),
        (["--steps", "10,50"], "the last weight must be 100"),
        (["--steps", "10,half,100"], "'half' is neither a percentage (1-100) nor 'pause'"),
        (["--step-duration", "3 weeks"], "--step-duration: '3 weeks' is not a duration"),
        (["--analysis-interval", "soon"], "--analysis-interval: 'soon' is not a duration"),
        (["--step-duration", "500ms"], "--step-duration 500ms: give a duration from 1s to 86400s"),
        (["--step-duration", "2e5"], "--step-duration 2e5: give a duration from 1s to 86400s"),
        (["--step-duration", "5s"], "an analysis interval of 10s is longer than a step (5s)"),
        (["--sticky", "user"], "sticky 'user': give header:NAME or cookie:NAME"),
        (["--sticky", "header:x user"], "sticky 'header:x user': give header:NAME or cookie:NAME"),
        (["--sticky", "cookie:s", "--strategy", "blue-green"], "orders by blue-green has none"),
    ],
)
def test_bad_start_input_fails_before_any_request(
    args: list[str], message: str, no_requests: list[Path], tmp_path: Path
) -> None:
    result = cli(tmp_path, "start", "orders", "--version", "0.2.0", *args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "error:" in result.stderr
    assert message in " ".join(result.stderr.split())
    assert no_requests == []


def test_without_a_controller_it_says_to_start_the_stack(
    no_requests: list[Path], tmp_path: Path
) -> None:
    for args in (("status",), ("abort", "orders"), ("start", "orders", "--version", "0.2.0")):
        result = cli(tmp_path, *args)
        assert result.exit_code == 1
        expected = f"no rollout controller runs from {tmp_path}; start the stack with `yardarm up`"
        assert f"error: {expected}" in " ".join(result.stderr.split())
    assert len(no_requests) == 3


def test_a_refused_connection_is_no_controller(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(control, "rollout_controller_url", lambda home: f"http://127.0.0.1:{port}")
    result = cli(tmp_path, "list")
    assert result.exit_code == 1
    assert "no rollout controller runs from" in result.stderr


# -- against a controller that speaks the API -------------------------------------------


def problem(status: int, detail: str, **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": "problem", "status": status, "detail": detail}
    return web.json_response(body | extra, status=status, content_type="application/problem+json")


@dataclass
class FakeController:
    """The rollout API over rollouts kept in memory; every request recorded."""

    token: str
    current: dict[str, Rollout] = field(default_factory=dict)
    history: dict[str, list[Rollout]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    on_get: Callable[[Rollout, int], None] | None = None  # a watch sees the rollout change
    gets: int = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/rollouts", self.start)
        app.router.add_get("/rollouts", self.all)
        app.router.add_get("/rollouts/{service}", self.one)
        app.router.add_post("/rollouts/{service}/{action}", self.act)
        app.router.add_get("/rollouts/{service}/history", self.finished)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return problem(401, "no valid admin token")
        raw = await request.read()
        self.requests.append((request.method, request.path, json.loads(raw) if raw else None))
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _json(rollout: Rollout, status: int = 200) -> web.Response:
        return web.json_response(rollout.model_dump(mode="json"), status=status)

    async def start(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["service"] != "orders":
            wrong = {"field": "service", "message": f"unknown service {body['service']!r}"}
            return problem(422, "invalid rollout", errors=[wrong])
        now = self.current.get("orders")
        if now is not None and now.running:
            return problem(409, f"a rollout of orders is running ({now.id})")
        spec = RolloutSpec.model_validate(body | {"steps": tuple(body.get("steps", (10, 100)))})
        rollout = Rollout(
            id="new000000001", spec=spec, stable_version="0.1.0", from_version="0.1.0"
        )
        rollout.record("started", "orders 0.1.0 -> 0.2.0")
        self.current["orders"] = rollout
        return self._json(rollout, 201)

    async def all(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"rollouts": [r.model_dump(mode="json") for r in self.current.values()]}
        )

    async def one(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        rollout = self.current.get(service)
        if rollout is None:
            return problem(404, f"no rollout of {service} was ever started")
        self.gets += 1
        if self.on_get is not None:
            self.on_get(rollout, self.gets)
        return self._json(rollout)

    async def act(self, request: web.Request) -> web.Response:
        service, action = request.match_info["service"], request.match_info["action"]
        rollout = self.current.get(service)
        if rollout is None or not rollout.running:
            return problem(409, f"no rollout of {service} runs")
        if action == "abort":
            rollout.phase = "aborted"
            rollout.reason = (await request.json()).get("reason", "aborted by the operator")
            self.history.setdefault(service, []).insert(0, rollout)
        elif action == "promote":
            full = (await request.json())["full"]
            rollout.step = len(rollout.spec.steps) - 1 if full else rollout.step + 1
        return self._json(rollout)

    async def finished(self, request: web.Request) -> web.Response:
        done = self.history.get(request.match_info["service"], [])
        return web.json_response({"rollouts": [r.model_dump(mode="json") for r in done]})


@dataclass
class Served:
    home: Path
    controller: FakeController

    async def cli(self, *args: str) -> Result:
        return await asyncio.to_thread(cli, self.home, *args)

    def last(self) -> tuple[str, str, Any]:
        """The last request the controller got: method, path, JSON body."""
        return self.controller.requests[-1]


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Served]:
    home = tmp_path / "home"
    controller = FakeController(token=admin_token(home))
    runner = web.AppRunner(controller.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.setattr(control, "rollout_controller_url", lambda h: f"http://127.0.0.1:{port}")
    try:
        yield Served(home, controller)
    finally:
        await runner.cleanup()


async def test_start_status_abort_and_history(served: Served) -> None:
    started = await served.cli(
        *("start", "orders", "--version", "0.2.0", "--strategy", "canary"),
        *("--steps", "10, 25,pause,50,100", "--step-duration", "1m", "--analysis-interval", "15s"),
    )
    assert started.exit_code == 0, started.output
    assert served.last() == (
        "POST",
        "/rollouts",
        {
            "service": "orders",
            "version": "0.2.0",
            "strategy": "canary",
            "steps": [10, 25, "pause", 50, 100],
            "step_duration_s": 60.0,
            "analysis_interval_s": 15.0,
        },
    )
    assert (
        "started rollout new000000001: orders 0.1.0 -> 0.2.0 by canary: steps "
        "10,25,pause,50,100 of 1m each, an analysis every 15s" in started.stdout
    )

    as_json = await served.cli("status", "orders", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == served.controller.current["orders"].model_dump(mode="json")
    for args in (("status", "orders"), ("status",)):
        status = await served.cli(*args)
        assert status.exit_code == 0, status.output
        assert "step 1 of 5: 10%" in status.stdout
        assert row(status.stdout, "canary", "0.2.0", "10%")

    again = await served.cli("start", "orders", "--version", "0.2.0")
    assert again.exit_code == 1
    assert "error: a rollout of orders is running (new000000001)" in again.stderr
    assert "`yardarm rollout status orders` shows where it stands" in again.stderr

    aborted = await served.cli("abort", "orders", "--reason", "p99 [too] high")
    assert aborted.exit_code == 0, aborted.output
    assert served.last() == ("POST", "/rollouts/orders/abort", {"reason": "p99 [too] high"})
    assert (
        "aborted: orders 0.1.0 -> 0.2.0 (new000000001): aborted (p99 [too] high): all "
        "traffic back on stable 0.1.0" in " ".join(aborted.stdout.split())
    )

    history = await served.cli("history", "orders")
    assert history.exit_code == 0, history.output
    assert row(history.stdout, "new000000001", "0.1.0 -> 0.2.0", "aborted")
    assert "p99 [too] high" in history.stdout
    history_json = await served.cli("history", "orders", "--json")
    assert [r["id"] for r in json.loads(history_json.stdout)["rollouts"]] == ["new000000001"]

    twice = await served.cli("abort", "orders")
    assert twice.exit_code == 1
    assert "error: no rollout of orders runs" in twice.stderr
    assert served.last() == ("POST", "/rollouts/orders/abort", {})


async def test_problems_are_printed_with_their_detail_and_field_errors(served: Served) -> None:
    unknown = await served.cli("start", "payments", "--version", "1.0.0")
    assert unknown.exit_code == 1
    assert "error: invalid rollout: service: unknown service 'payments'" in unknown.stderr
    missing = await served.cli("status", "fulfillment")
    assert missing.exit_code == 1
    assert "error: no rollout of fulfillment was ever started" in missing.stderr
    assert "`yardarm rollout start fulfillment --version V` starts one" in missing.stderr


async def test_promote_full_and_undo_send_what_the_api_takes(served: Served) -> None:
    assert (await served.cli("start", "orders", "--version", "0.2.0")).exit_code == 0
    promoted = await served.cli("promote", "orders", "--full")
    assert promoted.exit_code == 0, promoted.output
    assert served.last() == ("POST", "/rollouts/orders/promote", {"full": True})
    assert (
        "promoted fully: orders 0.1.0 -> 0.2.0 (new000000001): progressing at step 2 of 2: "
        "100% (promotion)" in " ".join(promoted.stdout.split())
    )
    await served.cli("promote", "orders")
    assert served.last() == ("POST", "/rollouts/orders/promote", {"full": False})
    await served.cli("undo", "orders")
    assert served.last() == ("POST", "/rollouts/orders/undo", None)


async def test_watch_follows_the_rollout_until_it_fails(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "REFRESH_S", 0.05)
    assert (await served.cli("start", "orders", "--version", "0.2.0")).exit_code == 0

    def fail_on_the_third_look(rollout: Rollout, gets: int) -> None:
        if gets == 3:
            rollout.phase = "failed"
            rollout.reason = "analysis 1 failed (error-rate)"

    served.controller.on_get = fail_on_the_third_look
    watched = await served.cli("status", "orders", "--watch")
    assert watched.exit_code == 1  # a script waiting on the rollout sees it failed
    assert served.controller.gets == 3
    assert "reason: analysis 1 failed (error-rate)" in watched.stdout
    both = await served.cli("status", "orders", "--watch", "--json")
    assert both.exit_code == 1
    assert "--watch and --json do not go together" in both.stderr
