"""The rollout API as every target's controller process serves it: the stored rollouts
seen by the rollout telemetry (and its webhook, when the tuning names one), the drive
loops on the target's effects, the routes behind the admin token.

The process itself (its settings, its listener, what starts and stops around the
controller) stays the target's: `yardarm.local.rollout_controller`,
`yardarm.kubernetes.controller`.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from yardarm_kit import Service
from yardarm_kit.access import admin_only

from yardarm.control_kv import ControlKv
from yardarm.rollout.api import ControllerTarget, RolloutController, add_routes
from yardarm.rollout.engine import EngineConfig
from yardarm.rollout.settings import ControllerSettings
from yardarm.rollout.telemetry import ObservedStore, RolloutTelemetry, WebhookConfig


def serve_rollouts(
    service: Service,
    kv: ControlKv,
    effects: ControllerTarget,
    tuning: ControllerSettings,
    *,
    token: str,
    environment: str,
) -> tuple[RolloutController, RolloutTelemetry]:
    """Add the rollout API to `service`; the controller and the telemetry, for the
    caller to start and stop with the process (`controller.resume`, `controller.stop`,
    `telemetry.close`)."""
    webhook = None
    if tuning.webhook_url is not None:
        webhook = WebhookConfig(
            tuning.webhook_url, timeout_s=tuning.webhook_timeout_s, attempts=tuning.webhook_attempts
        )
    telemetry = RolloutTelemetry(
        service.metrics, service.tracer, environment=environment, webhook=webhook
    )
    controller = RolloutController(
        ObservedStore(kv, telemetry),
        effects,
        tuning.judge_overrides(),
        EngineConfig(replicas=tuning.replicas, max_inconclusive=tuning.max_inconclusive),
        tuning.sub_window_s,
    )
    authorizer = admin_only(token, "yardarm-rollouts")

    def guard(request: web.Request) -> None:
        authorizer.require_admin(request)

    add_routes(service, controller, guard, secured=True)
    return controller, telemetry


RESUME_RETRY_S = 5.0


def resume_when_reachable(service: Service, controller: RolloutController) -> None:
    """Resume the stored rollouts once the datastore answers, in the background: the
    controller may start before the datastore has a leader (or while it restarts) and
    must neither crash-loop nor hold its own startup."""
    tasks: list[asyncio.Task[None]] = []

    async def resume() -> None:
        while True:
            try:
                await controller.resume()
                return
            except Exception as exc:  # the datastore not up yet
                service.log.warning(
                    "cannot read the stored rollouts yet: %s", exc, extra={"event": "resume_wait"}
                )
                await asyncio.sleep(RESUME_RETRY_S)

    async def start() -> None:
        tasks.append(asyncio.create_task(resume(), name="resume rollouts"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    service.on_startup(start)
    service.on_shutdown(stop)
