"""The platform's own alerts: the datastore's Raft group, messaging, the gateway's
breakers and the order saga. Each says in its description what the number is; the
runbook (docs/alerts.md) says what to do.
"""

from __future__ import annotations

from yardarm.observability.rules.model import Alert

# An election takes about a second (election timeout plus a vote round trip): 30 s
# without a leader is an outage, not an election.
NO_LEADER_FOR = "30s"
# Each election is two changes on a replica (the leader lost, then the new one known).
FLAPPING_WINDOW = "15m"
FLAPPING_CHANGES = 6
DEAD_LETTER_WINDOW = "10m"
BREAKER_OPEN_FOR = "10m"
# The load's own mix declines 5% of payments, each one compensation: 25% is five times
# that, and the minimum keeps a handful of sagas from alerting.
COMPENSATION_WINDOW = "15m"
COMPENSATION_RATIO = 0.25
COMPENSATION_MIN_SAGAS = 20
LAG_MESSAGES = 1000
LAG_WINDOW = "10m"

# Per environment: the replicas answering their scrape, unless one reports role leader.
# A replica that is down or paused fails its scrape, so its last role goes stale; with
# every replica down the sum of `up` is 0 and the alert still fires.
DATASTORE_NO_LEADER = Alert(
    alert="DatastoreNoLeader",
    expr=(
        'sum by (environment) (up{job="datastore"})\n'
        "unless on (environment)\n"
        "sum by (environment) ("
        'yardarm_datastore_raft_role{service="datastore", role="leader"}) > 0'
    ),
    for_=NO_LEADER_FOR,
    severity="page",
    labels=(("service", "datastore"),),
    summary="The datastore in {environment} has no Raft leader",
    description=(
        f"No datastore replica in {{environment}} has reported itself leader for "
        f"{NO_LEADER_FOR}; {{value}} replica(s) answer their scrape. Without a leader no "
        "write commits and no linearizable read is served: orders cannot price new "
        "orders or reserve stock, and the gateways cannot read routing changes."
    ),
)

DATASTORE_LEADER_FLAPPING = Alert(
    alert="DatastoreLeaderFlapping",
    expr=(
        "max by (environment) (\n"
        '  increase(yardarm_datastore_raft_leader_changes_total{service="datastore"}'
        f"[{FLAPPING_WINDOW}])\n) > {FLAPPING_CHANGES}"
    ),
    for_="5m",
    severity="ticket",
    labels=(("service", "datastore"),),
    summary="The datastore's Raft leader in {environment} keeps changing",
    description=(
        "A datastore replica in {environment} saw the leader change {value} times in the "
        f"last {FLAPPING_WINDOW} (each election counts twice: the leader lost, then the "
        "new one). Every change fails the reads waiting on the old leader and stalls "
        "writes for an election."
    ),
)

# A dead-letter counter appears with its first dead letter, at 1, which increase() cannot
# see: a series that did not exist a window ago counts whole, if its instance was scraped
# then (so a restarted Prometheus does not announce every old dead letter again).
DEAD_LETTERS_GROWING = Alert(
    alert="DeadLettersGrowing",
    expr=(
        "sum by (environment, service, consumer) (\n"
        "  (\n"
        "    yardarm_consumer_dead_letters_total\n"
        f"    unless yardarm_consumer_dead_letters_total offset {DEAD_LETTER_WINDOW}\n"
        "  )\n"
        f"  and on (environment, instance) (up offset {DEAD_LETTER_WINDOW})\n"
        "  or\n"
        f"  increase(yardarm_consumer_dead_letters_total[{DEAD_LETTER_WINDOW}])\n"
        ") > 0"
    ),
    severity="ticket",
    summary="Consumer {consumer} of {service} dead-lettered messages",
    description=(
        "Consumer {consumer} of {service} in {environment} moved about {value} message(s) "
        f"to the DLQ in the last {DEAD_LETTER_WINDOW}: each failed every delivery, and "
        "the saga step it carried waits on it."
    ),
)

# A breaker re-opens after each failed probe while traffic flows (every
# `wait_in_open_s`, 10 s by default). Requiring a fresh `open` transition leaves out the
# gauge of a breaker whose endpoint left the rotation: the gateway drops the breaker but
# its series keeps the last state.
BREAKER_OPEN = Alert(
    alert="GatewayBreakerOpen",
    expr=(
        'yardarm_gateway_breaker_state{service="gateway"} > 0\n'
        "and on (environment, instance, breaker)\n"
        "increase(yardarm_gateway_breaker_transitions_total"
        '{service="gateway", state="open"}[5m]) > 0'
    ),
    for_=BREAKER_OPEN_FOR,
    severity="ticket",
    summary=f"Gateway breaker {{breaker}} has not closed for {BREAKER_OPEN_FOR}",
    description=(
        "Circuit breaker {breaker} on gateway {instance} in {environment} has stayed open "
        f"or half-open for {BREAKER_OPEN_FOR}, opening again after its probes (state now "
        "{value}: 1 half-open, 2 open). Requests to that target fail fast with 503, or go "
        "to the other endpoints or tracks."
    ),
)

SAGA_COMPENSATIONS_HIGH = Alert(
    alert="SagaCompensationRateHigh",
    expr=(
        "(\n"
        "  sum by (environment, service) ("
        f'rate(yardarm_saga_compensations_total{{service="orders"}}[{COMPENSATION_WINDOW}]))\n'
        "  /\n"
        "  sum by (environment, service) ("
        f'rate(yardarm_sagas_terminal_total{{service="orders"}}[{COMPENSATION_WINDOW}]))\n'
        f") > {COMPENSATION_RATIO:g}\n"
        "and\n"
        "sum by (environment, service) ("
        f'increase(yardarm_sagas_terminal_total{{service="orders"}}[{COMPENSATION_WINDOW}]))'
        f" > {COMPENSATION_MIN_SAGAS}"
    ),
    for_="10m",
    severity="ticket",
    value_format="%.2f",
    summary="Orders in {environment} compensate {value} steps per finished saga",
    description=(
        f"Over the last {COMPENSATION_WINDOW}, orders in {{environment}} started {{value}} "
        "compensation steps (refunds, stock releases, shipment cancellations) per saga "
        "that finished; the load's declined cards alone make about 0.05. Orders are being "
        "cancelled: a participant declines, times out or stock runs out."
    ),
)

CONSUMER_LAG_GROWING = Alert(
    alert="ConsumerLagGrowing",
    expr=(
        f"max by (environment, service, consumer) (yardarm_consumer_lag) > {LAG_MESSAGES}\n"
        "and\n"
        "max by (environment, service, consumer) "
        f"(deriv(yardarm_consumer_lag[{LAG_WINDOW}])) > 0"
    ),
    for_="5m",
    severity="ticket",
    summary="Consumer {consumer} of {service} is falling behind",
    description=(
        "{value} messages wait for consumer {consumer} of {service} in {environment}, "
        f"and the backlog has grown over the last {LAG_WINDOW}: messages arrive faster "
        "than they are settled, so sagas wait longer at every step."
    ),
)


def datastore_alerts() -> list[Alert]:
    return [DATASTORE_NO_LEADER, DATASTORE_LEADER_FLAPPING]


def messaging_alerts() -> list[Alert]:
    return [DEAD_LETTERS_GROWING, CONSUMER_LAG_GROWING]


def gateway_alerts() -> list[Alert]:
    return [BREAKER_OPEN]


def orders_alerts() -> list[Alert]:
    return [SAGA_COMPENSATIONS_HIGH]
