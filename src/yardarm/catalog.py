"""The demo catalog `yardarm up` seeds into the datastore, so orders work at once."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

DEMO_CATALOG: tuple[dict[str, Any], ...] = (
    {"sku": "anchor-01", "name": "Galvanised anchor", "price_cents": 8900, "available": 40},
    {"sku": "rope-10m", "name": "Mooring rope, 10 m", "price_cents": 2450, "available": 200},
    {"sku": "lantern-red", "name": "Port lantern (red)", "price_cents": 3900, "available": 60},
    {
        "sku": "lantern-green",
        "name": "Starboard lantern (green)",
        "price_cents": 3900,
        "available": 60,
    },
    {"sku": "compass", "name": "Binnacle compass", "price_cents": 15900, "available": 15},
    {"sku": "sextant", "name": "Brass sextant", "price_cents": 42000, "available": 5},
)


def seed_catalog(
    datastore_url: str,
    token: str,
    catalog: tuple[dict[str, Any], ...] = DEMO_CATALOG,
    *,
    verify: ssl.SSLContext | bool = True,
) -> int:
    """Create each SKU unless it already exists (`if_version: 0`); returns how many were new.

    Existing stock is never overwritten, so a restart keeps what orders consumed. `token`
    is a credential allowed to write `stock/` (the stack's admin token).
    """
    created = 0
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(
        base_url=datastore_url, timeout=10.0, headers=headers, verify=verify
    ) as client:
        for item in catalog:
            response = client.put(f"/kv/stock/{item['sku']}", json={"value": item, "if_version": 0})
            if response.status_code in (200, 201):
                created += 1
            elif response.status_code != 409:
                raise RuntimeError(
                    f"seeding {item['sku']} failed: {response.status_code} {response.text}"
                )
    return created
