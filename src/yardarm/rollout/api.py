"""The rollout controller: an HTTP API behind the stack's admin token, and one drive loop
per service with a rollout in progress (Argo Rollouts' controller, for this stack).

Everything a rollout is lives in the datastore (`yardarm.rollout.state`): the API only
records what was asked (start, promote, abort, undo) and the drive loops act on it, so
the CLI can exit at any time and a restarted controller resumes every rollout that was
running. Target-agnostic: a target gives the effects (`Effects`) and the stable version
of each service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yardarm_kit import Param, Reply, Service, params_of
from yardarm_kit.problem import Problem
from yardarm_kit.validation import parse_json

from yardarm.model import Topology
from yardarm.rollout.controller import drive
from yardarm.rollout.engine import Effects, EngineConfig
from yardarm.rollout.judge import JudgeConfig
from yardarm.rollout.spec import RolloutSpec, RolloutSpecError, Step
from yardarm.rollout.state import Rollout, RolloutConflict, RolloutStore

log = logging.getLogger("yardarm.rollout")

# What the engine rolls: orders by weights (canary or blue-green); fulfillment by its
# share of consumer instances; the gateway and the datastore by rolling restart (the
# default strategy's name stands for the last two).
SUPPORTED = {
    "orders": ("canary", "blue-green"),
    "fulfillment": ("canary",),
    "gateway": ("canary",),
    "datastore": ("canary",),
}
# What a rolling restart of a service with one replica costs its users.
ALONE = {
    "gateway": "connections are refused for a moment while it restarts (run two replicas, "
    "services.gateway.replicas: 2, for a restart that refuses none)",
    "datastore": "it has no quorum while it restarts, so writes and linearizable reads wait "
    "or fail (run three replicas to restart with no pause)",
}


class ControllerTarget(Effects, Protocol):
    """A target's effects, and the topology it runs."""

    topology: Topology


class StartRequest(BaseModel):
    """The body of `POST /rollouts` (`yardarm rollout start`)."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    strategy: Literal["canary", "blue-green"] = "canary"
    steps: list[Step] | None = Field(default=None, min_length=1, max_length=20)
    step_duration_s: float | None = Field(default=None, ge=1.0, le=86_400.0)
    analysis_interval_s: float | None = Field(default=None, ge=1.0, le=3_600.0)
    scale_down_delay_s: float | None = Field(default=None, ge=0.0, le=86_400.0)
    sticky: str | None = Field(default=None, min_length=1, max_length=140)


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full: bool = False


class AbortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="aborted by the operator", min_length=1, max_length=500)


class RolloutList(BaseModel):
    rollouts: list[Rollout]


class RolloutController:
    """The drive loops, and the changes the API asks of the stored rollouts."""

    def __init__(
        self,
        store: RolloutStore,
        target: ControllerTarget,
        judge_config: dict[str, Any],
        config: EngineConfig,
        sub_window_s: float = 2.0,
    ) -> None:
        self.store = store
        self.target = target
        self._judge_overrides = judge_config
        self._config = config
        self._sub_window_s = sub_window_s
        self._loops: dict[str, asyncio.Task[Rollout | None]] = {}
        self._again: set[str] = set()  # started while the last loop was finishing

    async def resume(self) -> None:
        """Drive every rollout that was running when the controller last stopped."""
        for service in SUPPORTED:
            rollout = await self.store.current(service)
            if rollout is not None and rollout.running:
                log.info("resuming rollout %s of %s", rollout.id, service)
                self._drive(service)

    async def stop(self) -> None:
        for task in self._loops.values():
            task.cancel()
        for task in self._loops.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _drive(self, service: str) -> None:
        task = self._loops.get(service)
        if task is not None and not task.done():
            self._again.add(service)  # the loop goes on if it was about to end
            return
        judging = JudgeConfig.for_service(service, **self._judge_overrides)
        self._loops[service] = asyncio.create_task(
            self._guarded_drive(service, judging), name=f"rollout {service}"
        )

    async def _guarded_drive(self, service: str, judging: JudgeConfig) -> Rollout | None:
        """A loop that dies of an error (the datastore unreachable too long) starts again:
        nothing lives in it that the stored rollout does not say."""
        while True:
            self._again.discard(service)
            try:
                ended = await drive(
                    self.store, self.target, service, judging, self._config, self._sub_window_s
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the drive loop of %s failed; starting it again", service)
                await asyncio.sleep(self._sub_window_s)
                continue
            # No await between this check and the return: a start that came while the
            # loop was converging its last rollout is never left undriven.
            if service not in self._again:
                return ended

    async def start(self, request: StartRequest) -> Rollout:
        try:
            spec = RolloutSpec.model_validate(
                request.model_dump(exclude_none=True)
                | ({"steps": tuple(request.steps)} if request.steps else {})
            )
            stable = self.target.stable_version(request.service)
            spec.validate_against(self.target.topology, stable)
        except (ValidationError, RolloutSpecError, ValueError) as exc:
            raise Problem(422, "invalid rollout", _message(exc)) from exc
        strategies = SUPPORTED.get(spec.service)
        if strategies is None or spec.strategy not in strategies:
            raise Problem(
                422,
                "not available yet",
                f"this controller rolls {', '.join(SUPPORTED)} so far; "
                f"{spec.service} by {spec.strategy} is not available yet",
            )
        rollout = Rollout(spec=spec, stable_version=stable, from_version=stable)
        alone = ALONE.get(spec.service)
        if spec.rolls_by == "restart" and alone and self.target.replicas(spec.service) == 1:
            rollout.record("warning", f"{spec.service} runs one replica: {alone}")
        await self._conflicts(self.store.start(rollout))
        self._drive(spec.service)
        return rollout

    async def _conflicts(self, change: Any) -> Any:
        try:
            return await change
        except RolloutConflict as exc:
            raise Problem(409, "conflict", str(exc)) from exc

    async def promote(self, service: str, full: bool) -> Rollout:
        def edit(rollout: Rollout) -> None:
            if not rollout.running:
                raise RolloutConflict(f"the last rollout of {service} is {rollout.phase}")
            last = rollout.spec.last_step
            rollout.step = last if full else min(rollout.step + 1, last)
            rollout.phase = "progressing"
            rollout.step_started_at = None
            rollout.verdicts = []
            rollout.record("promoted", "promoted in full" if full else "promoted one step")

        return await self._changed(service, edit, "promote")  # type: ignore[no-any-return]

    async def abort(self, service: str, reason: str) -> Rollout:
        def edit(rollout: Rollout) -> None:
            if not rollout.running:
                raise RolloutConflict(f"no rollout of {service} runs ({rollout.phase})")
            rollout.phase = "aborted"
            rollout.reason = reason
            rollout.weights = {"stable": 100} if rollout.spec.rolls_by == "weights" else {}
            rollout.record("aborted", f"aborted: {reason}")

        return await self._changed(service, edit, "abort")  # type: ignore[no-any-return]

    async def undo(self, service: str) -> Rollout:
        """Running: abort it. Completed: go back to the version before it at once."""
        current = await self.store.current(service)
        if current is None:
            raise Problem(409, "conflict", f"no rollout of {service} was ever started")
        if current.running:
            return await self.abort(service, "undone by the operator")
        if current.phase != "completed" or not current.from_version:
            raise Problem(
                409,
                "conflict",
                f"the last rollout of {service} is {current.phase}: nothing to undo",
            )
        spec = RolloutSpec(service=service, version=current.from_version, steps=(100,))
        back = Rollout(
            spec=spec,
            stable_version=current.stable_version,
            from_version=current.stable_version,
        )
        await self._conflicts(self.store.start(back))
        self._drive(service)
        return back

    async def _changed(self, service: str, edit: Any, what: str) -> Any:
        rollout = await self._conflicts(self.store.change(service, edit, what))
        self._drive(service)  # a paused loop is still running; a new one if it ended
        return rollout


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
    return str(exc)


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def add_routes(service: Service, controller: RolloutController, guard: Any, secured: bool) -> None:
    """The API on the kit service (problem+json errors, metrics, traces for free)."""
    name = Param("service", "path", str, "the service being rolled out (e.g. orders)")
    common = {"secured": secured, "permission": "the admin role", "guard": guard}
    tags = ("rollouts",)

    async def post_start(request: web.Request) -> web.Response:
        body = await parse_json(request, StartRequest)
        return _json(await controller.start(body), 201)

    async def get_all(request: web.Request) -> web.Response:
        found = [await controller.store.current(s) for s in SUPPORTED]
        return _json(RolloutList(rollouts=[r for r in found if r is not None]))

    async def get_one(request: web.Request) -> web.Response:
        svc = params_of(request)["service"]
        rollout = await controller.store.current(svc)
        if rollout is None:
            raise Problem(404, "no rollout", f"no rollout of {svc} was ever started")
        return _json(rollout)

    async def post_promote(request: web.Request) -> web.Response:
        body = await parse_json(request, PromoteRequest)
        return _json(await controller.promote(params_of(request)["service"], body.full))

    async def post_abort(request: web.Request) -> web.Response:
        body = await parse_json(request, AbortRequest)
        return _json(await controller.abort(params_of(request)["service"], body.reason))

    async def post_undo(request: web.Request) -> web.Response:
        return _json(await controller.undo(params_of(request)["service"]))

    async def get_history(request: web.Request) -> web.Response:
        rollouts = await controller.store.history(params_of(request)["service"])
        return _json(RolloutList(rollouts=rollouts))

    conflict = Reply.error("a rollout of the service runs, or none does")
    service.api.add(
        "POST", "/rollouts", post_start, operation_id="startRollout", tags=tags,
        summary="Start a rollout", body=StartRequest,
        responses={201: Reply("started", Rollout), 409: conflict}, **common,
    )  # fmt: skip
    service.api.add(
        "GET", "/rollouts", get_all, operation_id="rollouts", tags=tags,
        summary="Each service's current or last rollout",
        responses={200: Reply("the rollouts", RolloutList)}, **common,
    )  # fmt: skip
    service.api.add(
        "GET", "/rollouts/{service}", get_one, operation_id="rollout", tags=tags,
        summary="One service's current or last rollout", params=[name],
        responses={200: Reply("the rollout", Rollout), 404: Reply.error("none yet")},
        **common,
    )  # fmt: skip
    for verb, handler, body, what in (
        ("promote", post_promote, PromoteRequest, "Go to the next step (or to 100%)"),
        ("abort", post_abort, AbortRequest, "Return all traffic to stable at once"),
        ("undo", post_undo, None, "Abort, or go back to the version before the last one"),
    ):
        service.api.add(
            "POST", f"/rollouts/{{service}}/{verb}", handler, operation_id=f"{verb}Rollout",
            tags=tags, summary=what, body=body, params=[name],
            responses={200: Reply("the rollout", Rollout), 409: conflict}, **common,
        )  # fmt: skip
    service.api.add(
        "GET", "/rollouts/{service}/history", get_history, operation_id="rolloutHistory",
        tags=tags, summary="Finished rollouts, newest first", params=[name],
        responses={200: Reply("the history", RolloutList)}, **common,
    )  # fmt: skip
