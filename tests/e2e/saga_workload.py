"""The order traffic of the saga invariant test: finite stock, a mix of outcomes, retries.

Every order is planned up front (its card, customer and items decide the outcome it
aims at) and placed through the gateway by a fixed number of clients. Each client
follows its order (`GET`) until it is terminal or `follow_s` passes before placing the
next, so sagas are in flight through the whole run instead of in one early burst, at
whatever pace the machine manages. A placement that meets a dead replica or a 5xx is
retried with the SAME Idempotency-Key, as a client is told to, so a retry can never
create a second order.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"
NOSHIP_PREFIX = "noship-"
# Above every seeded stock level (seeds are capped below it), within the API's item limit.
OVERSIZED_QUANTITY = 1000
MAX_SEED = OVERSIZED_QUANTITY - 1

Kind = Literal["ok", "declined", "noship", "oversized"]
# Answers worth retrying with the same key: the gateway or a replica was briefly away,
# or (409) the first attempt with this key is still being created.
RETRYABLE_STATUS = frozenset({409, 429, 502, 503, 504})
MAX_ATTEMPTS = 40
TERMINAL = frozenset({"CONFIRMED", "CANCELLED"})
FOLLOW_POLL_S = 0.25


@dataclass(frozen=True)
class Sku:
    """A stock record seeded for one run."""

    sku: str
    price_cents: int
    available: int


@dataclass(frozen=True)
class PlannedOrder:
    """One order and the outcome its inputs aim at."""

    key: str
    kind: Kind
    customer_id: str
    card: str
    items: tuple[tuple[str, int], ...]

    def body(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "items": [{"sku": sku, "quantity": qty} for sku, qty in self.items],
            "payment": {"card": self.card},
        }

    def quantities(self) -> dict[str, int]:
        """Units per SKU, lines naming one SKU merged (as the orders API merges them)."""
        merged: Counter[str] = Counter()
        for sku, qty in self.items:
            merged[sku] += qty
        return dict(merged)

    def amount_cents(self, prices: Mapping[str, int]) -> int:
        """What a charge for this order must take, from the seeded catalog prices."""
        return sum(prices[sku] * qty for sku, qty in self.quantities().items())


# How often orders pick each SKU of the catalog, in its order.
SKU_WEIGHTS = (4, 3, 3, 1)


def catalog(run: str, orders: int) -> list[Sku]:
    """Four SKUs: one ample, two that run short late, one scarce from the start.

    Orders want about 2.7 units each, spread by SKU_WEIGHTS, so the shorter ones run out
    while orders still want them: the insufficient-stock path comes without contrivance.
    """
    levels = [orders, orders * 2 // 3, orders // 2, max(3, orders // 40)]
    return [
        Sku(f"inv-{run}-{name}", price_cents=price, available=min(MAX_SEED, max(1, level)))
        for name, price, level in zip(
            ("hull", "mast", "sail", "pearl"), (1250, 4300, 990, 25000), levels, strict=True
        )
    ]


def plan_orders(run: str, count: int, skus: list[Sku], rng: random.Random) -> list[PlannedOrder]:
    """`count` orders: ~15% declined card, ~10% unserviceable address, ~5% oversized."""
    names = [s.sku for s in skus]
    planned = []
    for n in range(count):
        roll = rng.random()
        kind: Kind = (
            "declined" if roll < 0.15 else "noship" if roll < 0.25 else "oversized" if roll < 0.30
            else "ok"
        )  # fmt: skip
        first = rng.choices(names, SKU_WEIGHTS)[0]
        others = [(sku, w) for sku, w in zip(names, SKU_WEIGHTS, strict=True) if sku != first]
        picked = [first]
        if rng.random() < 1 / 3:
            picked.append(rng.choices([sku for sku, _ in others], [w for _, w in others])[0])
        items = tuple((sku, rng.randint(1, 3)) for sku in picked)
        if kind == "oversized":
            items = ((rng.choice(names), OVERSIZED_QUANTITY),)
        customer = f"{NOSHIP_PREFIX}{run}-{n}" if kind == "noship" else f"cust-{run}-{n}"
        planned.append(
            PlannedOrder(
                key=f"inv-{run}-{n}",
                kind=kind,
                customer_id=customer,
                card=CARD_DECLINED if kind == "declined" else CARD_OK,
                items=items,
            )
        )
    return planned


def contended(orders: list[PlannedOrder], skus: list[Sku]) -> set[str]:
    """SKUs the plan wants more of than was seeded: the only ones an order can find short.

    Every order but an oversized one may hold its units for a while (a declined or
    unserviceable one gives them back), so all of them count; an oversized order never
    reserves anything (its single line is above every stock level).
    """
    demand: Counter[str] = Counter()
    for order in orders:
        if order.kind != "oversized":
            demand.update(order.quantities())
    return {s.sku for s in skus if demand[s.sku] > s.available}


def confirmable(orders: list[PlannedOrder], skus: list[Sku]) -> set[str]:
    """Plan keys of the `ok` orders the seeded stock covers, taken in plan order.

    Clients place orders roughly in plan order and everything that is not `ok` gives
    its units back, so this is about how many orders a run without faults confirms.
    """
    left = {s.sku: s.available for s in skus}
    fits = set()
    for order in orders:
        wanted = order.quantities()
        if order.kind == "ok" and all(left[sku] >= qty for sku, qty in wanted.items()):
            for sku, qty in wanted.items():
                left[sku] -= qty
            fits.add(order.key)
    return fits


Verify = ssl.SSLContext | bool


def _datastore(url: str, token: str, verify: Verify) -> httpx.AsyncClient:
    """A client for the stack's datastore with a credential that may use `stock/`."""
    auth = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=url, timeout=10, trust_env=False, headers=auth, verify=verify)


async def seed(
    datastore_url: str, token: str, skus: list[Sku], *, verify: Verify = True
) -> dict[str, int]:
    """Create the SKUs (each must be new); their initial quantities."""
    async with _datastore(datastore_url, token, verify) as http:
        for item in skus:
            value = {
                "sku": item.sku,
                "name": item.sku,
                "price_cents": item.price_cents,
                "available": item.available,
            }
            response = await http.put(
                f"/kv/stock/{item.sku}", json={"value": value, "if_version": 0}
            )
            assert response.status_code in (200, 201), response.text
    return {item.sku: item.available for item in skus}


async def available(
    datastore_url: str, token: str, skus: list[str], *, verify: Verify = True
) -> dict[str, int]:
    """Each SKU's stock, read linearizably (the datastore's default)."""
    found = {}
    async with _datastore(datastore_url, token, verify) as http:
        for sku in skus:
            response = await http.get(f"/kv/stock/{sku}", params={"consistency": "linearizable"})
            assert response.status_code == 200, response.text
            found[sku] = int(response.json()["value"]["available"])
    return found


@dataclass
class Placement:
    """What placing the orders produced: order ids by plan key, and what went wrong."""

    ids: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    # What the attempts that were retried got: an HTTP status or a transport error.
    retried_on: Counter[str] = field(default_factory=Counter)
    rejected: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)


async def _place(
    http: httpx.AsyncClient, order: PlannedOrder, deadline: float, result: Placement
) -> None:
    headers = {"Idempotency-Key": order.key}
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            result.retries += 1
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        if time.monotonic() > deadline:
            break
        try:
            response = await http.post("/api/orders", json=order.body(), headers=headers)
        except httpx.TransportError as exc:
            result.retried_on[type(exc).__name__] += 1
            continue
        if response.status_code == 202:
            result.ids[order.key] = str(response.json()["id"])
            return
        if response.status_code not in RETRYABLE_STATUS:
            result.rejected.append(f"{order.key}: {response.status_code} {response.text[:200]}")
            return
        result.retried_on[str(response.status_code)] += 1
    result.gave_up.append(order.key)


async def _follow(http: httpx.AsyncClient, order_id: str, follow_s: float) -> None:
    """Wait until the order is terminal or `follow_s` passes (errors only wait)."""
    until = time.monotonic() + follow_s
    while time.monotonic() < until:
        try:
            response = await http.get(f"/api/orders/{order_id}")
            if response.status_code == 200 and response.json().get("status") in TERMINAL:
                return
        except (httpx.TransportError, ValueError):
            pass
        await asyncio.sleep(FOLLOW_POLL_S)


async def place_all(
    gateway: str,
    orders: list[PlannedOrder],
    *,
    clients: int,
    follow_s: float,
    deadline: float,
    result: Placement | None = None,
    verify: Verify = True,
) -> Placement:
    """Place every order through the gateway with `clients` concurrent clients.

    Pass `result` to watch the placement's progress while it runs.
    """
    result = Placement() if result is None else result
    queue = list(reversed(orders))
    limits = httpx.Limits(max_connections=clients)

    async with httpx.AsyncClient(
        base_url=gateway, timeout=15, limits=limits, trust_env=False, verify=verify
    ) as http:

        async def client() -> None:
            while queue:
                order = queue.pop()
                await _place(http, order, deadline, result)
                if order.key in result.ids:
                    await _follow(http, result.ids[order.key], follow_s)

        await asyncio.gather(*(client() for _ in range(clients)))
    return result
