"""What a rollout moves and watches at the gateway, the same on every target: the routes
of each service that rolls by weights, the tracks judged, and blue-green's smoke paths."""

from __future__ import annotations

from yardarm.catalog import DEMO_CATALOG

# The gateway routes of each service that rolls by weights; a rollout moves them together.
# A queue consumer (fulfillment) has none: it is judged on its own deliveries.
ROUTES = {"orders": ("api-orders", "api-stock")}
WATCHED = ("canary", "baseline", "green", "stable")  # the tracks a rollout may judge
# Blue-green's smoke requests: read-only, through both of orders' routes (an unknown
# order is a 404: the service answering as it should).
SMOKE_PATHS = (
    "/api/stock",
    *(f"/api/stock/{item['sku']}" for item in DEMO_CATALOG),
    "/api/orders/00000000-0000-4000-8000-000000000000",
)
APPLIED_WITHIN_S = 15.0  # every gateway replica polls the routing document every 0.25 s
