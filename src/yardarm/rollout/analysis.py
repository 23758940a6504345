"""What a step's analyses mean for the step: go on, promote it, or fail the rollout.

The controller judges every analysis interval (`yardarm.rollout.judge`) and asks this
after each verdict; inconclusive analyses extend a step up to a limit, then fail safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from yardarm.rollout.judge import Verdict

StepOutcome = Literal["continue", "promote-step", "fail"]


@dataclass(frozen=True)
class StepDecision:
    outcome: StepOutcome
    reason: str


def step_outcome(
    verdicts: Sequence[Verdict], max_inconclusive: int, analyses: int = 1
) -> StepDecision:
    """What a step's verdicts so far (oldest first) mean for the step.

    A step plans `analyses` analyses and is promoted when the last planned one passes;
    an inconclusive last verdict extends the step by one analysis, at most
    `max_inconclusive` times, then the step fails safe. Any failed verdict fails it.
    """
    if analyses < 1 or max_inconclusive < 0:
        raise ValueError("a step needs analyses >= 1 and max_inconclusive >= 0")
    for number, verdict in enumerate(verdicts, 1):
        if verdict.outcome == "fail":
            return StepDecision(
                "fail", f"analysis {number} failed ({verdict.rule}): {verdict.reason}"
            )
    if len(verdicts) < analyses:
        return StepDecision("continue", f"analysis {len(verdicts)} of {analyses}")
    last = verdicts[-1]
    if last.outcome == "pass":
        return StepDecision("promote-step", f"analysis {len(verdicts)} passed")
    extra = len(verdicts) - analyses
    if extra >= max_inconclusive:
        return StepDecision(
            "fail",
            f"still inconclusive after {extra} extra analyses ({last.rule}: {last.reason}); "
            "failing safe",
        )
    return StepDecision("continue", f"inconclusive ({last.rule}): extending the step")
