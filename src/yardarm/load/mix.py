"""What the load sends: the weighted mix of request kinds and the requests themselves.

Nothing here does I/O, so a seeded run plans the same sequence of kinds, customers,
items and cards every time (idempotency keys excepted: they are always fresh, so two
runs with one seed place new orders instead of replaying or clashing with old ones).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Kind = Literal["orders", "reads", "stock"]
KINDS: tuple[Kind, ...] = get_args(Kind)

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
MAX_REMEMBERED_ORDERS = 10_000


class Mix(BaseModel):
    """Relative weights of the request kinds (whole numbers; only their ratio matters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    orders: int = Field(default=20, ge=0, le=1_000_000)
    reads: int = Field(default=70, ge=0, le=1_000_000)
    stock: int = Field(default=10, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _some_weight(self) -> Mix:
        if self.orders + self.reads + self.stock == 0:
            raise ValueError("the mix weights sum to 0; give at least one kind a positive weight")
        return self

    def weights(self) -> dict[Kind, int]:
        """The weights by kind, in the order of KINDS."""
        return {"orders": self.orders, "reads": self.reads, "stock": self.stock}

    def choose(self, rng: random.Random) -> Kind:
        """One kind, drawn with probability proportional to its weight."""
        weights = self.weights()
        return rng.choices(KINDS, weights=[weights[kind] for kind in KINDS])[0]

    def __str__(self) -> str:
        return ",".join(f"{kind}={weight}" for kind, weight in self.weights().items())


def parse_mix(text: str) -> Mix:
    """`orders=20,reads=70,stock=10` -> Mix; kinds left out weigh 0.

    Raises ValueError naming the offending part, so a typo is not silently a 0 weight.
    """
    weights: dict[str, int] = {}
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise ValueError(f"empty entry in mix {text!r}; write e.g. orders=20,reads=70,stock=10")
        name, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or not name or not value:
            raise ValueError(f"{part!r} is not name=weight; write e.g. orders=20,reads=70,stock=10")
        if name not in KINDS:
            raise ValueError(f"unknown kind {name!r} in the mix; the kinds are {', '.join(KINDS)}")
        if name in weights:
            raise ValueError(f"{name!r} appears twice in the mix")
        if not value.isdigit():
            raise ValueError(f"the weight of {name!r} must be a whole number >= 0, not {value!r}")
        weights[name] = int(value)
    try:
        return Mix.model_validate({kind: weights.get(kind, 0) for kind in KINDS})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f"{first['loc'][0]}: " if first["loc"] else ""
        raise ValueError(where + str(first["msg"]).removeprefix("Value error, ")) from None


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request to send, relative to the target's base URL."""

    kind: Kind
    method: Literal["GET", "POST"]
    path: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class RequestPlanner:
    """Turns the mix into concrete requests, remembering the orders placed so far.

    `reads` reads back an order placed in this run; until the first one is known it falls
    back to a stock read, and the request counts as `stock` (what was actually sent).
    """

    def __init__(
        self,
        mix: Mix,
        skus: list[str],
        rng: random.Random,
        *,
        decline_share: float = 0.05,
        customers: int = 1000,
    ) -> None:
        if not skus:
            raise ValueError("no SKUs to order")
        self._mix = mix
        self._skus = list(skus)
        self._rng = rng
        self._decline_share = decline_share
        self._customers = customers
        self._orders: list[str] = []

    @property
    def known_orders(self) -> int:
        """How many placed orders reads can choose from (bounded)."""
        return len(self._orders)

    def remember_order(self, order_id: str) -> None:
        """Make an order placed in this run readable; memory stays bounded by replacing."""
        if len(self._orders) < MAX_REMEMBERED_ORDERS:
            self._orders.append(order_id)
        else:
            self._orders[self._rng.randrange(MAX_REMEMBERED_ORDERS)] = order_id

    def next_request(self) -> PlannedRequest:
        """The next request of the mix."""
        kind = self._mix.choose(self._rng)
        if kind == "orders":
            return self._order()
        if kind == "reads" and self._orders:
            order_id = self._rng.choice(self._orders)
            return PlannedRequest("reads", "GET", f"/api/orders/{quote(order_id, safe='')}")
        return self._stock_read()

    def _stock_read(self) -> PlannedRequest:
        sku = self._rng.choice(self._skus)
        return PlannedRequest("stock", "GET", f"/api/stock/{quote(sku, safe='')}")

    def _order(self) -> PlannedRequest:
        rng = self._rng
        count = rng.randint(1, min(3, len(self._skus)))
        items = [
            {"sku": sku, "quantity": rng.randint(1, 2)} for sku in rng.sample(self._skus, count)
        ]
        card = DECLINED_CARD if rng.random() < self._decline_share else GOOD_CARD
        body = {
            "customer_id": f"load-{rng.randrange(self._customers):04d}",
            "items": items,
            "payment": {"card": card},
        }
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        return PlannedRequest("orders", "POST", "/api/orders", body, headers)
