"""Rollout state and history in the datastore, so `status`, `promote`, `abort` and `undo`
work from any shell and a controller restart resumes where it stood.

`rollouts/<service>` holds the service's rollout in progress (or the last one, finished);
`rollouts/<service>/history` the finished ones, newest first, a bounded list. Both change
only by compare-and-set (`yardarm.control_kv`), so the CLI and the controller never
overwrite each other: an `abort` that lands while the controller advances a step wins or
is read again, never lost.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from yardarm.control_kv import ControlKv, KvError
from yardarm.rollout.spec import RolloutSpec

Phase = Literal["progressing", "paused", "completed", "aborted", "failed"]
RUNNING: frozenset[str] = frozenset({"progressing", "paused"})
HISTORY_KEEP = 50
EVENTS_KEEP = 200


class RolloutConflict(KvError):
    """A rollout of the service is already running (or none is, for promote/abort)."""


class Event(BaseModel):
    """Something that happened to a rollout, for `status` and `history`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float
    kind: str  # started, step, verdict, paused, promoted, aborted, failed, completed
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class Rollout(BaseModel):
    """One rollout as it stands."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    spec: RolloutSpec
    stable_version: str  # what the stable track runs (the new version once completed)
    from_version: str = ""  # what it ran when the rollout started (`undo` goes back to it)
    phase: Phase = "progressing"
    step: int = 0  # index into spec.steps
    weights: dict[str, int] = Field(default_factory=dict)
    # Stable's instances when the step began: a rollout by instances sizes its tracks by it.
    stable_replicas: int = Field(default=1, ge=1)
    step_started_at: float | None = None  # when the step's weights took effect
    last_analysis_at: float | None = None
    verdicts: list[dict[str, Any]] = Field(default_factory=list)  # the step's, oldest first
    started_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    reason: str | None = None  # why it was aborted or failed
    events: list[Event] = Field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.phase in RUNNING

    def record(self, kind: str, message: str, at: float | None = None, **data: Any) -> None:
        """Add an event at `at` (default: now; the controller passes its clock's) (the
        oldest go first once there are many)."""
        now = time.time() if at is None else at
        self.events.append(Event(at=now, kind=kind, message=message, data=data))
        del self.events[:-EVENTS_KEEP]
        self.updated_at = now


def current_key(service: str) -> str:
    return f"rollouts/{service}"


def history_key(service: str) -> str:
    return f"rollouts/{service}/history"


class RolloutStore:
    """Reads and changes rollouts; every change is a compare-and-set."""

    def __init__(self, kv: ControlKv) -> None:
        self._kv = kv

    async def current(self, service: str) -> Rollout | None:
        doc, _ = await self._kv.get(current_key(service))
        return None if doc is None else Rollout.model_validate(doc)

    async def start(self, rollout: Rollout) -> Rollout:
        """Record a new rollout; refused while another of the service runs."""
        service = rollout.spec.service

        def change(doc: dict[str, Any] | None) -> dict[str, Any]:
            if doc is not None:
                running = Rollout.model_validate(doc)
                if running.running:
                    raise RolloutConflict(
                        f"a rollout of {service} is running ({running.id}: "
                        f"{running.spec.version}, {running.phase} at step {running.step + 1} "
                        f"of {len(running.spec.steps)}); see `yardarm rollout status`, or "
                        "`yardarm rollout abort` it first"
                    )
            return rollout.model_dump(mode="json")

        rollout.record("started", f"{service} {rollout.stable_version} -> {rollout.spec.version}")
        await self._kv.update(current_key(service), change, f"rollout {rollout.id} started")
        return rollout

    async def change(self, service: str, edit: Any, what: str) -> Rollout:
        """Apply `edit(rollout)` (it may raise RolloutConflict to refuse) to the service's
        rollout as it stands and store it; the rollout as stored."""
        stored: list[Rollout] = []

        def change(doc: dict[str, Any] | None) -> dict[str, Any]:
            if doc is None:
                raise RolloutConflict(f"no rollout of {service} was ever started")
            rollout = Rollout.model_validate(doc)
            edit(rollout)
            stored[:] = [rollout]
            return rollout.model_dump(mode="json")

        await self._kv.update(current_key(service), change, what)
        finished = stored[0]
        if not finished.running:
            await self._archive(finished)
        return finished

    async def _archive(self, rollout: Rollout) -> None:
        """Put a finished rollout at the head of the history (once)."""
        entry = rollout.model_dump(mode="json")

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            items = list((doc or {}).get("rollouts", []))
            if any(item.get("id") == rollout.id for item in items):
                return None
            return {"rollouts": [entry, *items][:HISTORY_KEEP]}

        await self._kv.update(history_key(rollout.spec.service), change, f"{rollout.id} archived")

    async def history(self, service: str) -> list[Rollout]:
        """Finished rollouts, newest first."""
        doc, _ = await self._kv.get(history_key(service))
        return [Rollout.model_validate(item) for item in (doc or {}).get("rollouts", [])]
