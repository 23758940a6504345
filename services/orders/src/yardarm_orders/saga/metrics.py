"""The saga's domain metrics, created once per process from the kit's registry."""

from __future__ import annotations

from datetime import UTC, datetime

from yardarm_kit.metrics import Metrics

from yardarm_orders.saga.definition import TERMINAL_STATES, SagaState, status_of

STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class SagaMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.steps = metrics.counter(
            "yardarm_saga_steps_total",
            "Saga step outcomes: the trigger that ended a step, or retry/ignored/duplicate.",
            ("step", "outcome"),
        )
        self.step_duration = metrics.histogram(
            "yardarm_saga_step_duration_seconds",
            "Time a saga spent in a step, from entering it to the trigger that ended it.",
            ("step",),
            buckets=STEP_BUCKETS,
        )
        self.compensations = metrics.counter(
            "yardarm_saga_compensations_total",
            "Compensation steps started, by the state they run in (e.g. REFUNDING).",
            ("step",),
        )
        self.timeouts = metrics.counter(
            "yardarm_saga_step_timeouts_total",
            "Remote steps whose reply did not come within their timeout (then compensated).",
            ("step",),
        )
        self.resends = metrics.counter(
            "yardarm_saga_command_resends_total",
            "Commands sent again (a new envelope id) because no reply came in time.",
            ("command",),
        )
        self.terminal = metrics.counter(
            "yardarm_sagas_terminal_total",
            "Sagas that reached a terminal status.",
            ("status",),
        )
        self.outbox_pending = metrics.gauge(
            "yardarm_outbox_pending", "Outbox rows written but not yet published."
        )

    def transition(
        self, source: SagaState, target: SagaState, outcome: str, started: datetime
    ) -> None:
        """Count a step that ended (the saga moved from `source` to `target`)."""
        self.steps.inc(step=source.value, outcome=outcome)
        if source not in TERMINAL_STATES:  # a cancel leaving CONFIRMED ends no step
            elapsed = (datetime.now(UTC) - started).total_seconds()
            self.step_duration.observe(max(elapsed, 0.0), step=source.value)
        if target in TERMINAL_STATES:
            self.terminal.inc(status=status_of(target).value)
