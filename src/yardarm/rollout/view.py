"""What `yardarm rollout` shows: rollouts as rich renderables, from the stored `Rollout`
alone (no server, no clock but the `now` passed in), so every view is testable offline.

The weights shown are the ones the engine converges to for the rollout as stored
(`yardarm.rollout.engine.world`): that is the split in force once the controller's
next tick has run, and the same for every reader.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from yardarm.rollout.engine import (
    BASELINE,
    CANARY,
    GREEN,
    STABLE,
    EngineConfig,
    analyses_per_step,
    current_weight,
    world,
)
from yardarm.rollout.spec import BLUE_GREEN_DELAY, PAUSE, RolloutSpec, Step
from yardarm.rollout.state import Rollout

EVENTS_SHOWN = 8
PHASE_STYLE = {
    "progressing": "cyan",
    "paused": "yellow",
    "completed": "green",
    "aborted": "red",
    "failed": "red",
}
OUTCOME_STYLE = {"pass": "green", "fail": "red", "inconclusive": "yellow"}


# -- small texts --------------------------------------------------------------------


def duration(seconds: float) -> str:
    """12s, 1m, 3m 05s, 1h 02m: a length of time as people read it."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m" if secs == 0 else f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h" if minutes == 0 else f"{hours}h {minutes:02d}m"


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def timestamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def phase(rollout: Rollout) -> str:
    style = PHASE_STYLE.get(rollout.phase, "white")
    return f"[{style}]{rollout.phase}[/]"


def versions(rollout: Rollout) -> str:
    """`0.1.0 -> 0.2.0`: from what the stable track ran when the rollout started (once
    completed, `stable_version` is the new version)."""
    return f"{rollout.from_version or rollout.stable_version} -> {rollout.spec.version}"


def steps_text(steps: Sequence[Step]) -> str:
    return ",".join(str(step) for step in steps)


_BLUE_GREEN_STAGES = (
    "preview (pre-promotion analysis)",
    "switched (post-promotion analysis)",
    "scale-down delay",
    "promotion",
)


def _step_name(rollout: Rollout, index: int) -> str:
    """One step as a user reads it: `25%`, `pause at 25%`, `100% (promotion)`."""
    spec = rollout.spec
    if spec.rolls_by == "restart":
        return "rolling restart"
    if spec.strategy == "blue-green":
        return _BLUE_GREEN_STAGES[min(index, len(_BLUE_GREEN_STAGES) - 1)]
    step = spec.steps[index]
    if step == PAUSE:
        held = current_weight(rollout.model_copy(update={"step": index}))
        return f"pause at {held}%"
    if int(step) >= 100:
        return "100% (promotion)"
    return f"{step}%"


def step_text(rollout: Rollout) -> str:
    """`step 2 of 5: 25%`."""
    total = rollout.spec.last_step + 1
    return f"step {rollout.step + 1} of {total}: {_step_name(rollout, rollout.step)}"


def next_step(rollout: Rollout, now: float) -> str | None:
    """What happens next and when; None once the rollout has ended."""
    if not rollout.running:
        return None
    spec = rollout.spec
    service = escape(spec.service)
    after = rollout.step + 1
    following = _step_name(rollout, after) if after <= spec.last_step else None
    if rollout.phase == "paused":
        return f"waits for `yardarm rollout promote {service}`, then {following}"
    if spec.rolls_by == "restart":
        return f"{service}'s replicas are replaced by {escape(spec.version)} one at a time"
    if rollout.step >= spec.last_step:
        return f"promotion: the stable track moves to {escape(spec.version)}"
    if spec.strategy == "blue-green" and rollout.step == BLUE_GREEN_DELAY:
        if rollout.step_started_at is None:
            return "the scale-down delay begins"
        left = max(0.0, rollout.step_started_at + spec.scale_down_delay_s - now)
        return f"promotion in about {duration(left)}: stable moves to {escape(spec.version)}"
    if spec.strategy == "canary" and spec.steps[rollout.step] == PAUSE:
        return f"pausing at {current_weight(rollout)}%: `yardarm rollout promote {service}` goes on"
    analyses = analyses_per_step(rollout)
    plan = (
        f"{following} once the step's {analyses} "
        f"{'analysis passes' if analyses == 1 else 'analyses pass'} "
        f"(every {duration(spec.analysis_interval_s)})"
    )
    if rollout.step_started_at is None:
        return f"{plan}; the step's weights are being applied"
    left = rollout.step_started_at + spec.step_duration_s - now
    if left > 0:
        return f"{plan}, in about {duration(left)}"
    return f"{plan}; the step is extended while its analyses are inconclusive"


# -- the tracks ---------------------------------------------------------------------


def _last_numbers(rollout: Rollout) -> dict[str, dict[str, Any]]:
    """The latest verdict's numbers by check name (empty with no verdict)."""
    if not rollout.verdicts:
        return {}
    checks = rollout.verdicts[-1].get("checks", [])
    return {str(c.get("name")): dict(c.get("numbers") or {}) for c in checks}


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1f} ms"


def tracks_table(rollout: Rollout) -> Table:
    """Each track's version and weight; for the judged tracks, their traffic in the step
    as of the last analysis (requests, errors, median latency point)."""
    target = world(rollout, EngineConfig(), rollout.stable_replicas)
    weights = target.weights or {}
    by_instances = rollout.spec.rolls_by == "instances"
    shares = target.expected_shares(rollout.stable_replicas) if by_instances else {}
    counts = {STABLE: rollout.stable_replicas} | {t: n for t, (_, n) in target.tracks.items()}
    numbers = _last_numbers(rollout)
    errors, latency = numbers.get("errors", {}), numbers.get("latency", {})
    running = {STABLE: target.stable_version} | {
        track: version for track, (version, _) in target.tracks.items()
    }
    # The judge's numbers name the judged pair canary and baseline: blue-green judges
    # green's smoke requests against stable's.
    blue_green = rollout.spec.strategy == "blue-green"
    judged_as = {GREEN: CANARY, STABLE: BASELINE} if blue_green else {}
    title = "tracks"
    if rollout.running and rollout.step_started_at is None and target.weights is not None:
        title = "tracks (weights being applied)"
    table = Table("track", "version", "weight", "requests", "errors", "latency (median point)",
                  title=title, title_justify="left")  # fmt: skip
    judged = False
    for track in (STABLE, CANARY, BASELINE, GREEN):
        if track not in running and not weights.get(track):
            continue
        key = judged_as.get(track, track if not blue_green else "-")
        requests = errors.get(f"{key}_requests")
        judged = judged or requests is not None
        failed = errors.get(f"{key}_errors")
        ratio = errors.get(f"{key}_error_ratio")
        if by_instances:  # no split: its instances, and the share they would pull
            weight = f"{counts.get(track, 0)} inst. (~{shares.get(track, 0.0):.0f}%)"
        else:
            weight = f"{weights.get(track, 0)}%" if target.weights is not None else "-"
        table.add_row(
            track,
            escape(running.get(track, "-")),
            weight,
            "-" if requests is None else str(requests),
            "-" if failed is None else f"{failed} ({float(ratio or 0.0):.2%})",
            _ms(latency.get(f"{key}_median_ms")),
        )
    if judged:
        what = "smoke traffic" if blue_green else "deliveries" if by_instances else "traffic"
        table.caption = f"{what}: the step so far, at its last analysis"
    return table


# -- verdicts -----------------------------------------------------------------------


def _p(numbers: Mapping[str, Any]) -> list[str]:
    p = numbers.get("p_value")
    return [] if not isinstance(p, int | float) else [f"p={p:.2g}"]


def _share(n: Mapping[str, Any]) -> list[str]:
    parts = []
    if "share" in n:
        parts.append(f"share {n['share']:.1f}% of {n.get('route_requests', '?')} requests")
    elif "route_requests" in n:
        parts.append(f"{n['route_requests']} requests on the routes")
    if "weight" in n:
        parts.append(f"weight {n['weight']:g}%, floor {n.get('share_floor', 0):g}%")
    return parts + _p(n)


def _traffic(n: Mapping[str, Any]) -> list[str]:
    return [
        f"requests canary {n.get('canary_requests', '?')}, "
        f"baseline {n.get('baseline_requests', '?')} (min {n.get('min_requests', '?')})"
    ]


def _errors(n: Mapping[str, Any]) -> list[str]:
    parts = []
    for track in (CANARY, BASELINE):
        if f"{track}_requests" in n:
            ratio = float(n.get(f"{track}_error_ratio") or 0.0)
            parts.append(
                f"{track} {n.get(f'{track}_errors', 0)}/{n[f'{track}_requests']} ({ratio:.2%})"
            )
    if isinstance(n.get("increase_pp"), int | float):
        parts.append(f"effect {n['increase_pp']:+.2f} pp")
    return parts + _p(n)


def _latency(n: Mapping[str, Any]) -> list[str]:
    parts = [f"points {n.get('canary_points', '?')}/{n.get('baseline_points', '?')}"]
    if "canary_median_ms" in n or "baseline_median_ms" in n:
        parts.append(
            f"medians {_ms(n.get('canary_median_ms'))} vs {_ms(n.get('baseline_median_ms'))}"
        )
    if isinstance(n.get("shift_ms"), int | float):
        parts.append(f"effect {n['shift_ms']:+.1f} ms")
    return parts + _p(n)


def _guardrail_errors(n: Mapping[str, Any]) -> list[str]:
    ratio = n.get("canary_error_ratio")
    parts = []
    if isinstance(ratio, int | float) and isinstance(n.get("ceiling"), int | float):
        parts.append(
            f"canary {n.get('canary_errors', 0)}/{n.get('canary_requests', 0)} ({ratio:.2%}) "
            f"vs ceiling {n['ceiling']:.2%}"
        )
    return parts + _p(n)


def _guardrail_latency(n: Mapping[str, Any]) -> list[str]:
    high = n.get("canary_high_ms")
    shown = "-" if high is None else _ms(high)
    return [f"q{n.get('quantile', '?')} {shown} vs ceiling {_ms(n.get('ceiling_ms'))}"]


def _unavailable(n: Mapping[str, Any]) -> list[str]:
    return [str(n["unavailable"])] if n.get("unavailable") else []


def _generic(n: Mapping[str, Any]) -> list[str]:
    return [f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in sorted(n.items())]  # fmt: skip


KEY_NUMBERS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "availability": _unavailable,
    "share": _share,
    "traffic": _traffic,
    "errors": _errors,
    "latency": _latency,
    "guardrail-errors": _guardrail_errors,
    "guardrail-latency": _guardrail_latency,
}


def check_numbers(check: Mapping[str, Any]) -> str:
    """A check's key numbers on one line: counts, ratios, effect, p-value."""
    numbers = dict(check.get("numbers") or {})
    shown = KEY_NUMBERS.get(str(check.get("name")), _generic)(numbers)
    return ", ".join(shown)


def _outcome(outcome: Any) -> str:
    return f"[{OUTCOME_STYLE.get(str(outcome), 'white')}]{escape(str(outcome))}[/]"


def verdicts_view(rollout: Rollout) -> RenderableType:
    """The step's verdicts, oldest first; the checks of the latest with their numbers."""
    if not rollout.verdicts:
        return Text("no analysis in this step yet", style="dim")
    verdicts = Table("#", "outcome", "rule", "reason", title="this step's analyses",
                     title_justify="left")  # fmt: skip
    for number, verdict in enumerate(rollout.verdicts, 1):
        verdicts.add_row(
            str(number),
            _outcome(verdict.get("outcome")),
            escape(str(verdict.get("rule", ""))),
            escape(str(verdict.get("reason", ""))),
        )
    checks = Table("check", "outcome", "rule", "numbers",
                   title=f"checks of analysis {len(rollout.verdicts)}",
                   title_justify="left")  # fmt: skip
    for check in rollout.verdicts[-1].get("checks", []):
        checks.add_row(
            escape(str(check.get("name", ""))),
            _outcome(check.get("outcome")),
            escape(str(check.get("rule", ""))),
            escape(check_numbers(check)),
        )
    return Group(verdicts, checks)


def events_table(rollout: Rollout, last: int = EVENTS_SHOWN) -> Table:
    table = Table("at", "event", "message", title="events", title_justify="left")
    for event in rollout.events[-last:]:
        table.add_row(clock(event.at), escape(event.kind), escape(event.message))
    return table


# -- whole views --------------------------------------------------------------------


def status_view(rollout: Rollout, now: float | None = None) -> Panel:
    """One rollout: where it stands, its tracks, the step's verdicts, the last events."""
    now = time.time() if now is None else now
    spec = rollout.spec
    lines = [
        f"[bold]{escape(spec.service)}[/] {escape(versions(rollout))}  "
        f"{escape(strategy_name(spec))}  {phase(rollout)}",
        f"{step_text(rollout)}  [dim]({escape(plan_text(spec))})[/]",
    ]
    if rollout.running:
        lines.append(
            f"started {timestamp(rollout.started_at)}, {duration(now - rollout.started_at)} ago"
        )
        lines.append(f"next: {next_step(rollout, now)}")
    else:
        lines.append(
            f"started {timestamp(rollout.started_at)}, ended {timestamp(rollout.updated_at)} "
            f"after {duration(rollout.updated_at - rollout.started_at)}"
        )
    if rollout.reason:
        lines.append(f"[bold red]reason:[/] {escape(rollout.reason)}")
    parts: list[RenderableType] = [Text.from_markup("\n".join(lines)), tracks_table(rollout)]
    if rollout.running or rollout.verdicts:
        parts.append(verdicts_view(rollout))
    if rollout.events:
        parts.append(events_table(rollout))
    return Panel(Group(*parts), title=f"rollout {escape(rollout.id)}", title_align="left")


def rollouts_view(rollouts: Sequence[Rollout], now: float | None = None) -> RenderableType:
    """Every service's rollout, one panel each."""
    if not rollouts:
        return Text("no rollout was ever started: `yardarm rollout start SERVICE --version V`")
    return Group(*(status_view(rollout, now) for rollout in rollouts))


def _weight(rollout: Rollout) -> str:
    if rollout.phase == "completed":
        return "100%"
    if not rollout.running:
        return "0%"
    return f"{current_weight(rollout)}%"


def list_table(rollouts: Sequence[Rollout], now: float | None = None) -> Table:
    """Each service's current or last rollout, one row each."""
    now = time.time() if now is None else now
    table = Table("service", "id", "versions", "strategy", "phase", "step", "canary",
                  "updated", "reason")  # fmt: skip
    for rollout in rollouts:
        table.add_row(
            escape(rollout.spec.service),
            escape(rollout.id),
            escape(versions(rollout)),
            escape(strategy_name(rollout.spec)),
            phase(rollout),
            f"{rollout.step + 1}/{rollout.spec.last_step + 1}",
            _weight(rollout),
            f"{duration(now - rollout.updated_at)} ago",
            escape(rollout.reason or ""),
        )
    if not rollouts:
        table.caption = "no rollout was ever started"
    return table


def history_table(service: str, rollouts: Sequence[Rollout], now: float | None = None) -> Table:
    """A service's rollouts, newest first."""
    now = time.time() if now is None else now
    table = Table("id", "versions", "phase", "started", "duration", "reason",
                  title=f"rollouts of {escape(service)}, newest first",
                  title_justify="left")  # fmt: skip
    for rollout in rollouts:
        end = rollout.updated_at if not rollout.running else now
        table.add_row(
            escape(rollout.id),
            escape(versions(rollout)),
            phase(rollout),
            timestamp(rollout.started_at),
            duration(end - rollout.started_at),
            escape(rollout.reason or ""),
        )
    if not rollouts:
        table.caption = f"no finished rollout of {escape(service)} yet"
    return table


def started_text(rollout: Rollout) -> str:
    """What `start` prints once the controller accepted the rollout."""
    spec = rollout.spec
    warnings = "".join(
        f"\n[yellow]warning:[/] {escape(e.message)}" for e in rollout.events if e.kind == "warning"
    )
    return (
        f"started rollout [bold]{escape(rollout.id)}[/]: {escape(spec.service)} "
        f"{escape(versions(rollout))} by {escape(strategy_name(spec))}: "
        f"{escape(plan_text(spec))}{warnings}"
    )


def strategy_name(spec: RolloutSpec) -> str:
    if spec.rolls_by == "instances":
        return "canary by instances"
    return "rolling restart" if spec.rolls_by == "restart" else spec.strategy


def plan_text(spec: RolloutSpec) -> str:
    """The rollout's plan in a line: its steps and timings."""
    every = f"an analysis every {duration(spec.analysis_interval_s)}"
    if spec.rolls_by == "restart":
        return "one replica at a time"
    if spec.strategy == "blue-green":
        return (
            f"preview and post-promotion analysis of {duration(spec.step_duration_s)} each, "
            f"{every}, blue kept {duration(spec.scale_down_delay_s)}"
        )
    plan = f"steps {steps_text(spec.steps)} of {duration(spec.step_duration_s)} each, {every}"
    if spec.rolls_by == "instances":
        plan += " (a step's percentage of stable's instances, rounded up, run the canary)"
    if spec.sticky:
        plan += f", clients kept on their track by {spec.sticky}"
    return plan


def outcome_text(rollout: Rollout) -> str:
    """One line on where a rollout stands after `promote`, `abort` or `undo`."""
    spec = rollout.spec
    where = f"{escape(spec.service)} {escape(versions(rollout))} ({escape(rollout.id)}): "
    if rollout.running:
        return where + f"{phase(rollout)} at {step_text(rollout)}"
    if rollout.phase == "completed":
        return where + f"{phase(rollout)}, stable runs {escape(spec.version)}"
    why = f" ({escape(rollout.reason)})" if rollout.reason else ""
    back = escape(rollout.stable_version)
    return where + f"{phase(rollout)}{why}: all traffic back on stable {back}"
