"""Request bodies and the shapes read from the datastore, validated by pydantic."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# SKUs become datastore keys (`stock/<sku>`) and URL path segments, so keep them plain.
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=SKU_PATTERN)]


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    quantity: int = Field(ge=1, le=1000, strict=True)


class Payment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card: Annotated[str, StringConstraints(pattern=r"^[0-9]{12,19}$")]


class OrderRequest(BaseModel):
    """`POST /orders` body."""

    model_config = ConfigDict(extra="forbid")

    customer_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    items: list[OrderItem] = Field(min_length=1, max_length=50)
    payment: Payment

    def request_hash(self) -> str:
        """A digest of the body's canonical JSON: what "the same request" means for a key."""
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()
        return hashlib.sha256(canonical).hexdigest()

    def merged_items(self) -> list[OrderItem]:
        """Items with repeated SKUs merged into one line (quantities added), in first-seen order."""
        totals: dict[str, int] = {}
        for item in self.items:
            totals[item.sku] = totals.get(item.sku, 0) + item.quantity
        return [OrderItem(sku=sku, quantity=quantity) for sku, quantity in totals.items()]


class StockItem(BaseModel):
    """A stock record, the value of `stock/<sku>` in the datastore."""

    model_config = ConfigDict(extra="allow")

    sku: str
    name: str = ""
    price_cents: int = Field(ge=0)
    available: int
