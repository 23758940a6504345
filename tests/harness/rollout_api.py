"""The stack's rollout API as `yardarm rollout` calls it, for end-to-end tests: start a
rollout of one service with short steps, wait for its end."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from tests.harness.local import Stack

CONTROLLER_PORT_OFFSET = 46  # the rollout controller's port above the stack's base port

# Short steps (10 s, an analysis every 5 s), so the judge's minimum samples are lowered
# through the controller's settings, scaled back up by `YARDARM_TEST_SCALE`.
SCALE = max(1, int(os.environ.get("YARDARM_TEST_SCALE", "1")))
STEP_S = 10.0 * SCALE
INTERVAL_S = 5.0
SHORT_STEPS_ENV = {
    "YARDARM_ROLLOUTS_MIN_REQUESTS": str(25 * SCALE),
    "YARDARM_ROLLOUTS_MIN_LATENCY_POINTS": str(6 * SCALE),
    "YARDARM_ROLLOUTS_MAX_INCONCLUSIVE": "6",
}
# A rollout of 2 steps: each step's analyses plus starting and stopping instances.
ROLLOUT_BOUND_S = 2 * STEP_S * 8 + 120


class RolloutApi:
    """One service's rollouts through the controller the stack runs."""

    def __init__(
        self, stack: Stack, service: str, step_s: float, interval_s: float, bound_s: float
    ) -> None:
        self.url = f"http://127.0.0.1:{stack.base_port + CONTROLLER_PORT_OFFSET}"
        token = (stack.home / "admin-token").read_text().strip()
        self.headers = {"Authorization": f"Bearer {token}"}
        self.service = service
        self.step_s, self.interval_s, self.bound_s = step_s, interval_s, bound_s

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.headers, timeout=30, **kw)

    def current(self) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", f"/rollouts/{self.service}").json()
        return found

    def start(self, version: str, steps: list[int] | None = None, **more: Any) -> dict[str, Any]:
        body = {
            "service": self.service,
            "version": version,
            "step_duration_s": self.step_s,
            "analysis_interval_s": self.interval_s,
            **more,
        }
        if more.get("strategy") != "blue-green":
            body["steps"] = steps or [50, 100]
        answer = self.call("POST", "/rollouts", json=body)
        assert answer.status_code == 201, answer.text
        started: dict[str, Any] = answer.json()
        return started

    def wait_end(self, bound_s: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (self.bound_s if bound_s is None else bound_s)
        while time.monotonic() < deadline:
            try:
                answer = self.call("GET", f"/rollouts/{self.service}")
            except httpx.TransportError:  # the controller is restarting
                time.sleep(1.0)
                continue
            if answer.status_code == 200 and answer.json()["phase"] not in (
                "progressing",
                "paused",
            ):
                ended: dict[str, Any] = answer.json()
                return ended
            time.sleep(1.0)
        raise AssertionError(f"the rollout did not end: {self.current()}")
