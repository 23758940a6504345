"""Read a stack's saga state back and judge it: orders, payment ledger, streams, DLQ.

Reading is separate from judging: the `read_*` functions take a snapshot (orders and
fulfillment databases, JetStream streams, metrics), and the `check_*` functions are pure,
each returning the violations it found (empty: the invariant holds), so a failing
assertion can say exactly which saga broke which rule.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import httpx
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.e2e.saga_faults import Poison

TERMINAL = frozenset({"CONFIRMED", "CANCELLED"})
# Saga states waiting on a fulfillment reply to go forward.
REMOTE_STEPS = ("CHARGING", "SHIPPING")
# The history entry of a step timeout, and of a command sent again for want of a reply.
TIMEOUT_STEP, APPLIED, RESENT = "step.timeout", "applied", "resent"
TIMED_OUT = "timed out"
DLQ_REASON_HEADER = "yardarm-dlq-reason"
DLQ_SUBJECT_HEADER = "yardarm-dlq-subject"
SHOWN = 8  # violations quoted per rule; the count says how many there were


@dataclass(frozen=True)
class OrderRow:
    id: str
    customer_id: str
    status: str
    reason: str | None
    items: Mapping[str, int]
    total_cents: int
    saga_state: str | None


@dataclass(frozen=True)
class PaymentRow:
    saga_id: str
    kind: str
    status: str
    amount_cents: int
    reason: str | None = None


@dataclass(frozen=True)
class StoredMsg:
    stream: str
    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str]

    def envelope_id(self) -> str | None:
        try:
            value = json.loads(self.data)["id"]
        except (ValueError, KeyError, TypeError):
            return None
        return value if isinstance(value, str) else None


# --- reading ---------------------------------------------------------------------------


async def count_in_flight(pool: asyncpg.Pool) -> int:
    """Sagas not yet CONFIRMED or CANCELLED."""
    count = await pool.fetchval(
        "SELECT count(*) FROM sagas WHERE state <> ALL($1::text[])", sorted(TERMINAL)
    )
    return int(count)


async def read_in_step(pool: asyncpg.Pool) -> dict[str, str]:
    """Sagas waiting on a participant's reply to a forward step: order id -> state."""
    rows = await pool.fetch(
        "SELECT order_id::text AS id, state FROM sagas WHERE state = ANY($1::text[])",
        list(REMOTE_STEPS),
    )
    return {r["id"]: r["state"] for r in rows}


async def read_orders(pool: asyncpg.Pool) -> list[OrderRow]:
    rows = await pool.fetch(
        """
        SELECT o.id::text AS id, o.customer_id, o.status, o.reason, o.items::text AS items,
               o.total_cents, s.state AS saga_state
          FROM orders o LEFT JOIN sagas s ON s.order_id = o.id
        """
    )
    orders = []
    for row in rows:
        quantities: dict[str, int] = defaultdict(int)
        for item in json.loads(row["items"]):
            quantities[str(item["sku"])] += int(item["quantity"])
        orders.append(
            OrderRow(
                id=row["id"],
                customer_id=row["customer_id"],
                status=row["status"],
                reason=row["reason"],
                items=dict(quantities),
                total_cents=int(row["total_cents"]),
                saga_state=row["saga_state"],
            )
        )
    return orders


async def read_history(pool: asyncpg.Pool) -> dict[str, list[tuple[str, str]]]:
    """Each order's saga history as (step, outcome), oldest first."""
    rows = await pool.fetch(
        "SELECT order_id::text AS order_id, step, outcome FROM saga_history ORDER BY seq"
    )
    history: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        history[row["order_id"]].append((row["step"], row["outcome"]))
    return dict(history)


async def read_payments(pool: asyncpg.Pool) -> list[PaymentRow]:
    rows = await pool.fetch("SELECT saga_id, kind, status, amount_cents, reason FROM payments")
    return [
        PaymentRow(r["saga_id"], r["kind"], r["status"], int(r["amount_cents"]), r["reason"])
        for r in rows
    ]


async def read_shipments(pool: asyncpg.Pool) -> dict[str, str]:
    """Shipment status by saga id."""
    rows = await pool.fetch("SELECT saga_id, status FROM shipments")
    return {r["saga_id"]: r["status"] for r in rows}


async def read_stream(js: JetStreamContext, stream: str) -> list[StoredMsg]:
    """Every message the stream holds, by sequence."""
    info = await js.stream_info(stream)
    found: list[StoredMsg] = []
    if info.state.messages == 0:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await js.get_msg(stream, seq)
        except NotFoundError:  # deleted (a replayed dead letter, say)
            continue
        headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
        found.append(StoredMsg(stream, seq, str(raw.subject), bytes(raw.data or b""), headers))
    return found


async def backlog(js: JetStreamContext, durables: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Per durable consumer (stream, name): messages not yet delivered or not yet acked."""
    counts = {}
    for stream, durable in durables:
        info = await js.consumer_info(stream, durable)
        counts[f"{stream}/{durable}"] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    return counts


def scrape_counter(urls: Iterable[str], name: str, having: str = "") -> float | None:
    """The sum of counter `name` (series whose labels contain `having`) over the
    instances that answer; None when none has it.

    A restarted process starts its counters at zero, so after crashes this is a lower
    bound, good for a report, not for an assertion.
    """
    total, seen = 0.0, False
    for url in urls:
        try:
            text = httpx.get(f"{url}/metrics", timeout=5, trust_env=False).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if (
                line.startswith(name)
                and line[len(name) : len(name) + 1] in ("{", " ")
                and having in line
            ):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
    return total if seen else None


# --- judging ---------------------------------------------------------------------------


def _report(violations: Sequence[str]) -> list[str]:
    if len(violations) <= SHOWN:
        return list(violations)
    return [*violations[:SHOWN], f"... and {len(violations) - SHOWN} more"]


def check_terminal(orders: Sequence[OrderRow]) -> list[str]:
    """Every saga CONFIRMED or CANCELLED, and the order's status says the same."""
    bad = [
        f"order {o.id}: status {o.status}, saga {o.saga_state}"
        for o in orders
        if o.saga_state not in TERMINAL or o.status != o.saga_state
    ]
    return _report(bad)


def check_stock(
    initial: Mapping[str, int], available: Mapping[str, int], orders: Sequence[OrderRow]
) -> list[str]:
    """Per SKU: initial stock == what is left + what CONFIRMED orders took."""
    taken: Counter[str] = Counter()
    for order in orders:
        if order.status == "CONFIRMED":
            taken.update(order.items)
    bad = [
        f"{sku}: initial {initial[sku]} != available {available[sku]} + confirmed {taken[sku]}"
        for sku in sorted(initial)
        if initial[sku] != available[sku] + taken[sku]
    ]
    return _report(bad)


def check_ledger(
    orders: Sequence[OrderRow],
    payments: Sequence[PaymentRow],
    shipments: Mapping[str, str],
) -> list[str]:
    """Money and shipments agree with each order's outcome.

    At most one successful charge per saga; a CANCELLED order keeps no money (charged
    minus refunded is zero) and ships nothing; a CONFIRMED order was charged its total
    and has a scheduled shipment.
    """
    charged: dict[str, list[int]] = defaultdict(list)
    refunded: dict[str, int] = defaultdict(int)
    for p in payments:
        if p.kind == "charge" and p.status == "charged":
            charged[p.saga_id].append(p.amount_cents)
        elif p.kind == "refund":
            refunded[p.saga_id] += p.amount_cents
    bad = [f"saga {saga}: {len(amounts)} charges" for saga, amounts in charged.items()
           if len(amounts) > 1]  # fmt: skip
    for order in orders:
        taken = sum(charged.get(order.id, []))
        if order.status == "CANCELLED":
            if taken - refunded.get(order.id, 0) != 0:
                bad.append(
                    f"cancelled order {order.id}: charged {taken}, refunded "
                    f"{refunded.get(order.id, 0)} ({order.reason})"
                )
            if shipments.get(order.id) == "scheduled":
                bad.append(f"cancelled order {order.id}: shipment still scheduled")
        elif order.status == "CONFIRMED":
            if charged.get(order.id) != [order.total_cents]:
                bad.append(
                    f"confirmed order {order.id}: charges {charged.get(order.id)}, "
                    f"total {order.total_cents}"
                )
            if refunded.get(order.id, 0):
                bad.append(f"confirmed order {order.id}: refunded {refunded[order.id]}")
            if shipments.get(order.id) != "scheduled":
                bad.append(f"confirmed order {order.id}: shipment {shipments.get(order.id)}")
    return _report(bad)


def check_untouched(
    sagas: Iterable[str], payments: Sequence[PaymentRow], shipments: Mapping[str, str]
) -> list[str]:
    """Sagas of poison messages left no row in the payment ledger or the shipments."""
    bad = []
    for saga in sagas:
        rows = [p for p in payments if p.saga_id == saga]
        if rows or saga in shipments:
            bad.append(f"poison saga {saga}: payments {rows}, shipment {shipments.get(saga)}")
    return _report(bad)


def check_outcomes(
    orders: Sequence[OrderRow], expected_cancelled: Mapping[str, Iterable[str]]
) -> list[str]:
    """Orders whose inputs forbid success (declined card, unserviceable address, more
    than any stock) all ended CANCELLED."""
    status = {o.id: o for o in orders}
    bad = []
    for why, ids in expected_cancelled.items():
        for order_id in ids:
            order = status.get(order_id)
            if order is None or order.status != "CANCELLED":
                state = None if order is None else order.status
                bad.append(f"{why} order {order_id}: {state}, expected CANCELLED")
    return _report(bad)


def duplicated_ids(messages: Iterable[StoredMsg]) -> Counter[str]:
    """Envelope ids stored more than once, with how many times."""
    counts = Counter(m.envelope_id() for m in messages)
    return Counter({k: n for k, n in counts.items() if k is not None and n > 1})


def check_dlq(dead: Sequence[StoredMsg], poisons: Sequence[Poison]) -> list[str]:
    """The DLQ holds each poison exactly once, with its reason, and nothing else."""
    bad = []
    seen: Counter[str] = Counter()
    for msg in dead:
        poison = next((p for p in poisons if p.body == msg.data), None)
        if poison is None:
            bad.append(
                f"legitimate message dead-lettered: {msg.subject} id {msg.envelope_id()} "
                f"({msg.headers.get(DLQ_REASON_HEADER)})"
            )
            continue
        seen[poison.name] += 1
        if msg.subject != f"dlq.{poison.subject}":
            bad.append(f"{poison.name}: dead-lettered on {msg.subject}")
        if msg.headers.get(DLQ_SUBJECT_HEADER) != poison.subject:
            bad.append(f"{poison.name}: {DLQ_SUBJECT_HEADER} {msg.headers.get(DLQ_SUBJECT_HEADER)}")
        reason = msg.headers.get(DLQ_REASON_HEADER)
        if not reason:
            bad.append(f"{poison.name}: no {DLQ_REASON_HEADER} header")
        elif poison.reason_says and poison.reason_says not in reason:
            bad.append(f"{poison.name}: dead-lettered for {reason!r}")
    for poison in poisons:
        if seen[poison.name] != 1:
            bad.append(f"{poison.name}: {seen[poison.name]} copies in the DLQ, expected 1")
    return _report(bad)


def cancel_reasons(orders: Sequence[OrderRow]) -> Counter[str]:
    """Cancelled orders by the kind of reason they give."""
    kinds: Counter[str] = Counter()
    for order in orders:
        if order.status != "CANCELLED":
            continue
        reason = (order.reason or "").lower()
        kind = (
            "timeout" if "timed out" in reason else "declined" if "declin" in reason
            else "shipping" if "ship" in reason else "stock" if "stock" in reason
            else "other"
        )  # fmt: skip
        kinds[kind] += 1
    return kinds


def compensated(history: Mapping[str, Sequence[tuple[str, str]]], word: str) -> set[str]:
    """Orders whose history records a step naming `word` (refund, release) taking effect."""
    skipped = {"ignored", "duplicate", "failed", "retry", "resent"}
    return {
        order_id
        for order_id, steps in history.items()
        if any(word in step.lower() and outcome not in skipped for step, outcome in steps)
    }


def timed_out(orders: Sequence[OrderRow]) -> dict[str, str]:
    """Orders a step timeout cancelled: order id -> the step that timed out."""
    return {
        o.id: (o.reason or "").split(f" {TIMED_OUT}", 1)[0]
        for o in orders
        if TIMED_OUT in (o.reason or "")
    }


def resent(history: Mapping[str, Sequence[tuple[str, str]]]) -> Counter[str]:
    """Commands sent again for want of a reply: step -> how many re-sends."""
    return Counter(step for steps in history.values() for step, outcome in steps
                   if outcome == RESENT)  # fmt: skip


def check_timed_out(
    orders: Sequence[OrderRow],
    history: Mapping[str, Sequence[tuple[str, str]]],
    payments: Sequence[PaymentRow],
    shipments: Mapping[str, str],
) -> list[str]:
    """A timed-out step counts as possibly taken effect, so it was compensated.

    The reason and the history agree that the step timed out; the order is CANCELLED;
    a refund was recorded (a real one for a charge the participant applied, before or
    after the timeout, or the zero refund that blocks a later charge), so the ledger
    shows no charge or a charge with a matching refund; a timed-out shipment ended
    cancelled (a charge came before it).
    """
    by_saga: dict[str, list[PaymentRow]] = defaultdict(list)
    for p in payments:
        by_saga[p.saga_id].append(p)
    reasons = timed_out(orders)
    recorded = {oid for oid, steps in history.items() if (TIMEOUT_STEP, APPLIED) in steps}
    bad = [f"order {oid}: history records a step timeout, reason does not"
           for oid in sorted(recorded - set(reasons))]  # fmt: skip
    status = {o.id: o.status for o in orders}
    for oid, step in sorted(reasons.items()):
        if oid not in recorded:
            bad.append(f"order {oid}: reason says {step} timed out, history does not")
        if status[oid] != "CANCELLED":
            bad.append(f"order {oid}: {step} timed out, yet {status[oid]}")
        rows = by_saga.get(oid, [])
        charged = sum(p.amount_cents for p in rows if p.kind == "charge" and p.status == "charged")
        refunds = [p.amount_cents for p in rows if p.kind == "refund"]
        if not refunds:
            bad.append(f"order {oid}: {step} timed out and no refund was recorded")
        elif charged != sum(refunds):
            bad.append(f"order {oid}: {step} timed out, charged {charged}, refunded {refunds}")
        if step == "shipping.schedule":
            if not charged:
                bad.append(f"order {oid}: shipping timed out but nothing was charged")
            if shipments.get(oid) != "cancelled":
                bad.append(f"order {oid}: shipping timed out, shipment {shipments.get(oid)}")
        elif step != "payments.charge":
            bad.append(f"order {oid}: unexpected step timed out: {step!r}")
    return _report(bad)


def timeout_outcomes(orders: Sequence[OrderRow], payments: Sequence[PaymentRow]) -> Counter[str]:
    """What the payment ledger shows for each timed-out order, for the report."""
    rows: dict[str, list[PaymentRow]] = defaultdict(list)
    for p in payments:
        rows[p.saga_id].append(p)
    kinds: Counter[str] = Counter()
    for oid, step in timed_out(orders).items():
        charges = [p for p in rows.get(oid, []) if p.kind == "charge"]
        if step == "shipping.schedule":
            kinds["shipping timed out"] += 1
        elif any(p.status == "charged" for p in charges):
            refunded = any(p.kind == "refund" and p.amount_cents for p in rows.get(oid, []))
            kinds["charge applied, refunded" if refunded else "charge applied, not refunded"] += 1
        elif charges:
            kinds[f"charge declined ({charges[0].reason})"] += 1
        else:
            kinds["never charged"] += 1
    return kinds
