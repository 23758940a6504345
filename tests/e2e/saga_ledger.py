"""Read a stack's saga state back and judge it: orders, payment ledger, streams, DLQ.

Reading is separate from judging: the `read_*` functions take a snapshot (orders and
fulfillment databases, JetStream streams, metrics), and the `check_*` functions are pure,
each returning the violations it found (empty: the invariant holds), so a failing
assertion can say exactly which saga broke which rule.
"""

from __future__ import annotations

import json
import ssl
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import httpx
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tests.e2e.saga_faults import Poison
from tests.e2e.saga_workload import PlannedOrder

TERMINAL = frozenset({"CONFIRMED", "CANCELLED"})
# Saga states waiting on a fulfillment reply to go forward.
REMOTE_STEPS = ("CHARGING", "SHIPPING")
# The history entry of a step timeout, and of a command sent again for want of a reply.
TIMEOUT_STEP, APPLIED, RESENT = "step.timeout", "applied", "resent"
TIMED_OUT = "timed out"
# How a stock step's failure reads in the order's reason (the SKU follows the first).
STOCK_SHORT, STOCK_BUSY = "insufficient stock for ", "stock could not be reserved"
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
    card_last4: str
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
               o.total_cents, o.card_last4, s.state AS saga_state
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
                card_last4=row["card_last4"],
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


def scrape_counter(
    urls: Iterable[str], name: str, having: str = "", *, verify: ssl.SSLContext | bool = True
) -> float | None:
    """The sum of counter `name` (series whose labels contain `having`) over the
    instances that answer; None when none has it.

    A restarted process starts its counters at zero, so after crashes this is a lower
    bound, good for a report, not for an assertion.
    """
    total, seen = 0.0, False
    for url in urls:
        try:
            text = httpx.get(f"{url}/metrics", timeout=5, trust_env=False, verify=verify).text
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


def _by_customer(orders: Sequence[OrderRow]) -> dict[str, list[OrderRow]]:
    rows: dict[str, list[OrderRow]] = defaultdict(list)
    for order in orders:
        rows[order.customer_id].append(order)
    return rows


def _placed(
    planned: Sequence[PlannedOrder], ids: Mapping[str, str], orders: Sequence[OrderRow]
) -> list[tuple[PlannedOrder, OrderRow]]:
    """Each accepted plan entry with the order its placement was given, where stored."""
    by_id = {o.id: o for o in orders}
    return [(p, by_id[ids[p.key]]) for p in planned if ids.get(p.key) in by_id]


def check_exactly_once(
    planned: Sequence[PlannedOrder], ids: Mapping[str, str], orders: Sequence[OrderRow]
) -> list[str]:
    """Each accepted plan entry is exactly one order, the one its placement was given,
    and every stored order belongs to a plan entry.

    Orders are matched to the plan by customer id (one per entry), not through the
    service's idempotency table, so a second order made for one entry (a retry that
    escaped its Idempotency-Key, a create applied twice) shows up.
    """
    rows = _by_customer(orders)
    known = {p.customer_id for p in planned}
    bad = []
    for entry in planned:
        found = sorted(o.id for o in rows.get(entry.customer_id, []))
        expected = [ids[entry.key]] if entry.key in ids else []
        if found != expected:
            bad.append(f"plan entry {entry.key}: stored orders {found}, placed {expected}")
    bad += [
        f"order {o.id}: customer {o.customer_id} belongs to no plan entry"
        for o in orders
        if o.customer_id not in known
    ]
    return _report(bad)


def check_recorded_as_planned(
    planned: Sequence[PlannedOrder],
    ids: Mapping[str, str],
    orders: Sequence[OrderRow],
    prices: Mapping[str, int],
) -> list[str]:
    """Each order holds its plan entry's card, items, and the total of the seeded prices."""
    bad = []
    for entry, order in _placed(planned, ids, orders):
        if order.card_last4 != entry.card[-4:]:
            bad.append(
                f"order {order.id} ({entry.key}): card ..{order.card_last4}, planned {entry.card}"
            )
        if dict(order.items) != entry.quantities():
            bad.append(
                f"order {order.id} ({entry.key}): items {dict(order.items)}, "
                f"planned {entry.quantities()}"
            )
        if order.total_cents != entry.amount_cents(prices):
            bad.append(
                f"order {order.id} ({entry.key}): total {order.total_cents}, the plan costs "
                f"{entry.amount_cents(prices)}"
            )
    return _report(bad)


def check_stock(
    initial: Mapping[str, int],
    available: Mapping[str, int],
    planned: Sequence[PlannedOrder],
    ids: Mapping[str, str],
    orders: Sequence[OrderRow],
) -> list[str]:
    """Per SKU: seeded stock == what is left + what the CONFIRMED plan entries ordered.

    The quantities are the plan's, not the items the service stored, so an order stored
    with other items, or stock kept by a cancelled or a duplicate order, breaks the sum.
    """
    taken: Counter[str] = Counter()
    for entry, order in _placed(planned, ids, orders):
        if order.status == "CONFIRMED":
            taken.update(entry.quantities())
    bad = [
        f"{sku}: seeded {initial[sku]} != available {available[sku]} + confirmed by plan "
        f"{taken[sku]}"
        for sku in sorted(initial)
        if initial[sku] != available[sku] + taken[sku]
    ]
    return _report(bad)


def check_money(
    planned: Sequence[PlannedOrder],
    orders: Sequence[OrderRow],
    payments: Sequence[PaymentRow],
    shipments: Mapping[str, str],
    prices: Mapping[str, int],
) -> list[str]:
    """The payment ledger and the shipments (fulfillment's own records) agree with the
    plan and with each outcome.

    Per plan entry, over every order stored for it (duplicates included): at most one
    successful charge, of what the planned items cost at the seeded prices, and at most
    one scheduled shipment. A CONFIRMED order keeps exactly that charge, has no refund and
    a scheduled shipment; a CANCELLED one was refunded what it was charged and ships
    nothing; a declined card is never charged; an oversized order never gets as far as
    payment. Ledger rows of sagas no stored order owns are violations too.
    """
    by_saga: dict[str, list[PaymentRow]] = defaultdict(list)
    for p in payments:
        by_saga[p.saga_id].append(p)
    rows = _by_customer(orders)
    bad = []
    for entry in planned:
        mine = rows.get(entry.customer_id, [])
        sagas = [o.id for o in mine]
        ledger = [p for saga in sagas for p in by_saga.get(saga, [])]
        charges = [p.amount_cents for p in ledger if p.kind == "charge" and p.status == "charged"]
        refunded = sum(p.amount_cents for p in ledger if p.kind == "refund")
        scheduled = [s for s in sagas if shipments.get(s) == "scheduled"]
        amount = entry.amount_cents(prices)
        label = f"{entry.kind} entry {entry.key} (orders {sagas})"
        if len(charges) > 1:
            bad.append(f"{label}: charged {len(charges)} times: {charges}")
        if any(c != amount for c in charges):
            bad.append(f"{label}: charged {charges}, the planned items cost {amount}")
        if len(scheduled) > 1:
            bad.append(f"{label}: {len(scheduled)} shipments scheduled")
        if entry.kind == "declined" and charges:
            bad.append(f"{label}: declined card charged {charges}")
        if entry.kind == "oversized" and ledger:
            bad.append(f"{label}: more than any stock, yet reached payment: {ledger}")
        for order in mine:
            if order.status == "CONFIRMED":
                if charges != [amount] or refunded:
                    bad.append(
                        f"{label}: confirmed with charges {charges}, refunded {refunded}, "
                        f"planned {amount}"
                    )
                if shipments.get(order.id) != "scheduled":
                    bad.append(f"{label}: confirmed, shipment {shipments.get(order.id)}")
            elif order.status == "CANCELLED":
                if refunded != sum(charges):
                    bad.append(
                        f"{label}: cancelled ({order.reason}), charged {charges}, refunded "
                        f"{refunded}"
                    )
                if order.id in scheduled:
                    bad.append(f"{label}: cancelled, shipment still scheduled")
    owned = {o.id for o in orders}
    bad += [
        f"ledger rows for saga {saga}, which no stored order owns: {by_saga[saga]}"
        for saga in sorted(set(by_saga) - owned)
    ]
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
    planned: Sequence[PlannedOrder],
    ids: Mapping[str, str],
    orders: Sequence[OrderRow],
    contended: Iterable[str],
) -> list[str]:
    """Each order ends in a state its plan entry allows.

    An entry that cannot succeed (declined card, `noship-` customer, more than any stock)
    ends CANCELLED. An `ok` entry ends CONFIRMED, or CANCELLED by a step timeout (the
    pause, a crash) or by stock; short stock only for one of its own SKUs that the plan
    wants more of than was seeded, as no other SKU can ever run short.
    """
    short_skus = set(contended)
    bad = []
    for entry, order in _placed(planned, ids, orders):
        label = f"{entry.kind} order {order.id} ({entry.key})"
        if entry.kind != "ok":
            if order.status != "CANCELLED":
                bad.append(f"{label}: {order.status}, expected CANCELLED")
            continue
        reason = order.reason or ""
        if order.status == "CONFIRMED" or TIMED_OUT in reason or reason.startswith(STOCK_BUSY):
            continue
        if reason.startswith(STOCK_SHORT):
            sku = reason.removeprefix(STOCK_SHORT)
            if sku not in entry.quantities() or sku not in short_skus:
                bad.append(f"{label}: {reason!r}, but the plan cannot run {sku} short")
            continue
        bad.append(f"{label}: {order.status} ({reason!r}), expected CONFIRMED")
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
