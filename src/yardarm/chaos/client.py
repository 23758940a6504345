"""Find a running stack's chaos controller and talk to it (what the CLI calls).

Every failure is a `ChaosClientError` whose message says what happened and whose hint
says what to do next, so the CLI only prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from yardarm.chaos.config import Action
from yardarm.credentials import StackCredentials
from yardarm.local import control

TIMEOUT_S = 10.0


class ChaosClientError(Exception):
    """The fault could not be sent or was refused."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def controller_url(home: Path) -> str:
    """The API of the controller of the stack running from `home`."""
    if not control.is_running(home):
        raise ChaosClientError(f"no stack is running from {home}", "run `yardarm up` first")
    for status in control.read_status(home):
        if status.service == "chaos" and status.port:
            return control.service_url(home, status.port)
    raise ChaosClientError(
        f"the stack running from {home} has no chaos controller (it was started by an "
        "older yardarm)",
        "restart it: `yardarm down`, then `yardarm up`",
    )


def _call(home: Path, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = f"{controller_url(home)}/faults"
    try:
        token = StackCredentials(home).token("admin")
    except OSError as exc:
        raise ChaosClientError(
            f"cannot read the stack's admin credential: {exc}",
            f"it is {StackCredentials(home).token_file('admin')}; restart the stack to issue it",
        ) from exc
    headers = {"Authorization": f"Bearer {token}"}
    try:
        response = httpx.request(
            method,
            url,
            json=body,
            headers=headers,
            timeout=TIMEOUT_S,
            trust_env=False,
            verify=control.stack_ssl(home) or True,
        )

    except httpx.HTTPError as exc:
        raise ChaosClientError(
            f"the chaos controller at {url} does not answer ({exc.__class__.__name__}: {exc})",
            "check it with `yardarm status` and `yardarm logs chaos`",
        ) from exc
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ChaosClientError(
            f"the chaos controller answered {response.status_code} without a JSON document",
            "see `yardarm logs chaos`",
        )
    if response.status_code >= 400:
        detail = document.get("detail") or document.get("title") or f"HTTP {response.status_code}"
        errors = document.get("errors") or []
        if errors and not document.get("valid"):
            detail += ": " + "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        hint = (
            "`yardarm status` shows each instance's state"
            if response.status_code == 409
            else "`yardarm chaos status` lists the links and instances"
        )
        raise ChaosClientError(str(detail), hint)
    return document


def send_fault(
    home: Path,
    action: Action,
    target: str,
    *,
    peer: str | None = None,
    ms: int | None = None,
    jitter_ms: int | None = None,
) -> dict[str, Any]:
    """Apply one fault; the controller's answer (`applied` plus the new state)."""
    body: dict[str, Any] = {"action": action, "target": target}
    for key, value in (("peer", peer), ("ms", ms), ("jitter_ms", jitter_ms)):
        if value is not None:
            body[key] = value
    return _call(home, "POST", body)


def fetch_state(home: Path) -> dict[str, Any]:
    """Links, paused instances and fault counts."""
    return _call(home, "GET")
