"""What a user asks a rollout to do, checked against the deployment model before anything
starts: `yardarm rollout start SERVICE --version V [--strategy] [--steps] [--step-duration]`.

Every refusal says what was wrong and what would be accepted, so the CLI can print it
as it is and exit non-zero.
"""

from __future__ import annotations

import itertools
import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from yardarm.model import SERVICE_NAMES, Topology

Strategy = Literal["canary", "blue-green"]
Step = int | Literal["pause"]
PAUSE: Literal["pause"] = "pause"
DEFAULT_STEPS: tuple[Step, ...] = (10, 25, 50, 100)
# A blue-green rollout's stages, its `step`: green previewed (smoke and analysis), the
# switch (post-promotion analysis), blue kept for the scale-down delay, done.
BLUE_GREEN_PREVIEW, BLUE_GREEN_SWITCHED, BLUE_GREEN_DELAY, BLUE_GREEN_DONE = 0, 1, 2, 3
# How each service rolls (docs/rollouts.md): behind the gateway by weights; a queue
# consumer by its share of instances; the gateway and the datastore by rolling restart.
ROLLS_BY = {
    "orders": "weights",
    "fulfillment": "instances",
    "gateway": "restart",
    "datastore": "restart",
}


# `--sticky`: where a client's sticky key is read, `header:NAME` or `cookie:NAME`, NAME an
# HTTP token (the gateway's rule).
STICKY = re.compile(r"(header|cookie):([!#$%&'*+.^_`|~0-9A-Za-z-]{1,128})")


class RolloutSpecError(ValueError):
    """A rollout that cannot start; the message says why and what would be accepted."""


def sticky_key(text: str) -> dict[str, str]:
    """`header:x-user` -> {"header": "x-user"}, as the gateway's routes take it."""
    match = STICKY.fullmatch(text)
    if match is None:
        raise RolloutSpecError(
            f"sticky {text!r}: give header:NAME or cookie:NAME, NAME an HTTP token "
            "(letters, digits and !#$%&'*+.^_`|~-), e.g. header:x-user or cookie:session"
        )
    return {match.group(1): match.group(2)}


def parse_steps(text: str) -> tuple[Step, ...]:
    """`10,25,pause,50,100` -> (10, 25, "pause", 50, 100), checked: weights are whole
    percentages rising strictly from 1 to a last step of 100; a pause sits between
    weights (never first, never twice in a row)."""
    raw = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in raw):
        raise RolloutSpecError(f"steps {text!r}: give weights separated by commas, e.g. 10,50,100")
    steps: list[Step] = []
    for part in raw:
        if part.lower() == PAUSE:
            steps.append(PAUSE)
            continue
        try:
            weight = int(part.removesuffix("%"))
        except ValueError:
            raise RolloutSpecError(
                f"steps {text!r}: {part!r} is neither a percentage (1-100) nor 'pause'"
            ) from None
        steps.append(weight)
    check_steps(tuple(steps))
    return tuple(steps)


def check_steps(steps: tuple[Step, ...]) -> None:
    """The rules `parse_steps` states; also applied to steps given as a list."""
    shown = ",".join(str(s) for s in steps)
    weights = [s for s in steps if s != PAUSE]
    if not weights:
        raise RolloutSpecError(f"steps {shown!r}: at least one weight (the last is 100)")
    if steps[0] == PAUSE:
        raise RolloutSpecError(f"steps {shown!r}: a pause waits at a weight, so it cannot be first")
    for before, after in itertools.pairwise(steps):
        if before == PAUSE and after == PAUSE:
            raise RolloutSpecError(f"steps {shown!r}: two pauses in a row")
    for weight in weights:
        if not 1 <= int(weight) <= 100:
            raise RolloutSpecError(f"steps {shown!r}: weight {weight} is not within 1-100")
    if any(int(b) >= int(a) for b, a in itertools.pairwise(weights)):
        raise RolloutSpecError(f"steps {shown!r}: weights must rise step by step")
    if weights[-1] != 100:
        raise RolloutSpecError(f"steps {shown!r}: the last weight must be 100 (full promotion)")


class RolloutSpec(BaseModel):
    """One rollout as asked; `validate_against` checks it with the stack's topology."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str
    version: str
    strategy: Strategy = "canary"
    steps: tuple[Step, ...] = DEFAULT_STEPS
    step_duration_s: float = Field(default=30.0, ge=1.0, le=86_400.0)
    analysis_interval_s: float = Field(default=10.0, ge=1.0, le=3_600.0)
    # Blue-green: how long blue stays up after the switch, so a rollback is instant.
    scale_down_delay_s: float = Field(default=30.0, ge=0.0, le=86_400.0)
    # Canary by weights: keep each client on one track by this key while the rollout
    # runs (`header:NAME` or `cookie:NAME`); a client on the canary stays on it as the
    # weight grows.
    sticky: str | None = Field(default=None, max_length=140)

    @property
    def rolls_by(self) -> str:
        """weights, instances or restart (`ROLLS_BY`)."""
        return ROLLS_BY.get(self.service, "weights")

    @property
    def last_step(self) -> int:
        """The index of the step that ends the rollout: a canary's 100%; blue-green's
        stages (preview, switched, scale-down delay, done); a rolling restart's one."""
        if self.rolls_by == "restart":
            return 0
        if self.strategy == "blue-green":
            return BLUE_GREEN_DONE
        return len(self.steps) - 1

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        check_steps(self.steps)
        if self.sticky is not None:
            sticky_key(self.sticky)
            if self.strategy != "canary" or self.rolls_by != "weights":
                how = self.strategy if self.rolls_by == "weights" else self.rolls_by
                raise RolloutSpecError(
                    "--sticky keeps clients on one track of a weighted split: only a canary "
                    f"of a service behind the gateway has one ({self.service} by {how} has none)"
                )
        if self.analysis_interval_s > self.step_duration_s:
            raise RolloutSpecError(
                f"an analysis interval of {self.analysis_interval_s:g}s is longer than a step "
                f"({self.step_duration_s:g}s): every step needs at least one analysis"
            )
        return self

    def validate_against(self, topology: Topology, running_version: str) -> None:
        """Refuse what the stack cannot do: an unknown service or version, the version
        already running, a strategy the service cannot roll by."""
        if self.service not in SERVICE_NAMES:
            raise RolloutSpecError(
                f"unknown service {self.service!r} (services: {', '.join(SERVICE_NAMES)})"
            )
        declared = topology.services.spec(self.service).declared()
        if self.version not in declared:
            raise RolloutSpecError(
                f"{self.service} declares no version {self.version!r} "
                f"(declared: {', '.join(declared)}; add it under services.{self.service}."
                "versions in yardarm.yaml)"
            )
        if self.version == running_version:
            raise RolloutSpecError(
                f"{self.service} already runs {self.version} on its stable track"
            )
        if self.rolls_by == "restart" and (
            self.strategy != "canary" or self.steps != DEFAULT_STEPS
        ):
            raise RolloutSpecError(
                f"{self.service} rolls by restarting its replicas one at a time: "
                "no blue-green and no weight steps"
            )
        if self.strategy == "blue-green" and self.rolls_by != "weights":
            raise RolloutSpecError(
                f"{self.service} takes no traffic through the gateway's weights, so it "
                "cannot switch blue to green: roll it with --strategy canary"
            )
        if self.strategy == "blue-green" and self.steps != DEFAULT_STEPS:
            raise RolloutSpecError(
                "blue-green takes no --steps: green is previewed at full size, then all "
                "traffic switches to it at once (--step-duration sets each analysis stage)"
            )
