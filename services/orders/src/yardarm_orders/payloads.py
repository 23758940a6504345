"""Request bodies and the shapes read from the datastore, validated by pydantic.

The constraints here are also the published OpenAPI schema of `POST /orders`, so they
say exactly what is accepted: a schema-valid body is refused only for live data (an
SKU not in the catalog, a reused Idempotency-Key) or for a rule JSON Schema cannot
state (one SKU's lines merged above the line maximum).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

# SKUs become datastore keys (`stock/<sku>`) and URL path segments, so keep them plain.
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=SKU_PATTERN)]
MAX_LINE_QUANTITY = 1000
MAX_LINES = 50
# The dearest price an order can carry: its total (at most MAX_LINES merged lines of
# MAX_LINE_QUANTITY) must fit the orders table's bigint. A stock record priced above it
# is not a catalog entry (an unknown SKU), never an insert that fails.
MAX_PRICE_CENTS = (2**63 - 1) // (MAX_LINES * MAX_LINE_QUANTITY)
# Free text that Postgres can store: U+0000 is the one character a text column refuses
# (the kit's decoder refuses it first; the pattern says so in the schema).
CUSTOMER_ID_PATTERN = r"^[^\u0000]*$"
CustomerId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=CUSTOMER_ID_PATTERN)
]


def _json_integer(value: object) -> object:
    """JSON Schema's `integer` is any number without a fractional part, so `2.0` is 2;
    text and booleans stay refused (the int is strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The bounds come before the validator: after it, pydantic would publish them as the
# unknown keywords `ge`/`le` instead of `minimum`/`maximum`.
Quantity = Annotated[
    int, Field(ge=1, le=MAX_LINE_QUANTITY, strict=True), BeforeValidator(_json_integer)
]


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    quantity: Quantity


class Payment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card: Annotated[str, StringConstraints(pattern=r"^[0-9]{12,19}$")] = Field(
        description="the card number, 12 to 19 digits; only its last four are kept"
    )


class OrderRequest(BaseModel):
    """`POST /orders` body. Lines naming one SKU are merged into one line, whose
    quantity must stay within the per-line maximum like any other line's."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    items: list[OrderItem] = Field(min_length=1, max_length=MAX_LINES)
    payment: Payment

    @model_validator(mode="after")
    def _merged_within_the_line_maximum(self) -> OrderRequest:
        """The bound holds for the merged line (what is reserved and shipped), not only
        for each line sent: otherwise 50 lines of one SKU would order 50 times the
        maximum. Every line of an SKU over the bound is named, so a client sees which
        lines to fold together or reduce."""
        lines: dict[str, list[int]] = {}
        for index, item in enumerate(self.items):
            lines.setdefault(item.sku, []).append(index)
        errors: list[InitErrorDetails] = []
        for sku, indexes in lines.items():
            total = sum(self.items[i].quantity for i in indexes)
            if total <= MAX_LINE_QUANTITY:
                continue
            named = ", ".join(f"items.{i}" for i in indexes)
            error = PydanticCustomError(
                "merged_quantity",
                "SKU '{sku}' is ordered {total} times over lines {lines}; one SKU's lines are "
                "merged and may total at most {maximum}",
                {"sku": sku, "total": total, "lines": named, "maximum": MAX_LINE_QUANTITY},
            )
            errors.extend(
                InitErrorDetails(
                    type=error, loc=("items", i, "quantity"), input=self.items[i].quantity
                )
                for i in indexes
            )
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def request_hash(self) -> str:
        """A digest of the body's canonical JSON: what "the same request" means for a key."""
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()
        return hashlib.sha256(canonical).hexdigest()

    def merged_items(self) -> list[OrderItem]:
        """Items with repeated SKUs merged into one line (quantities added), in first-seen
        order. The model's validator has bounded every merged quantity, so the lines are
        built without validating again."""
        totals: dict[str, int] = {}
        for item in self.items:
            totals[item.sku] = totals.get(item.sku, 0) + item.quantity
        return [OrderItem.model_construct(sku=sku, quantity=qty) for sku, qty in totals.items()]


class StockItem(BaseModel):
    """A stock record, the value of `stock/<sku>` in the datastore."""

    model_config = ConfigDict(extra="allow")

    sku: str
    name: str = ""
    price_cents: int = Field(ge=0, le=MAX_PRICE_CENTS)
    available: int
