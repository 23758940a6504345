"""The `yardarm load` mix as a Locust user, for Locust's web UI, ramps and distributed runs.

    uvx locust -f bench/locustfile.py --host http://127.0.0.1:8080

Locust is not a project dependency and this file imports nothing from the project, so it
runs under uvx as is. Same mix as `yardarm load`: orders 20, reads 70, stock 10; orders
carry a fresh Idempotency-Key, a customer, 1-3 SKUs from GET /api/stock, quantity 1-2
and, for 5% of them, the card that is declined. Reads read back orders placed by this
process (a stock read until there is one). Locust's users are a closed loop, like
`yardarm load --concurrency`; for a fixed arrival rate use `yardarm load --rate`.

Like `yardarm load`, it refuses a host that is not loopback unless
YARDARM_ALLOW_REMOTE=1 is set, so a mistyped --host cannot load someone else's service.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

import gevent
from locust import HttpUser, between, events
from locust.exception import StopUser

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
DECLINE_SHARE = 0.05
MAX_REMEMBERED_ORDERS = 10_000

# Shared by every user of this process, so reads find orders other users placed.
placed_orders: list[str] = []


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP literal (names are not resolved)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(url: str | None) -> bool:
    """Loopback, or remote hosts allowed on purpose."""
    host = urlsplit(url or "").hostname or ""
    return is_loopback(host) or os.environ.get("YARDARM_ALLOW_REMOTE") == "1"


def refuse_remote_hosts(environment: Any, **_: Any) -> None:
    """End the run at once when the target is not on this machine."""
    if host_allowed(environment.host):
        return
    host = urlsplit(environment.host or "").hostname or ""
    logging.error(
        "%r is not a loopback host; set YARDARM_ALLOW_REMOTE=1 to load it on purpose", host
    )
    environment.process_exit_code = 2
    if environment.runner is not None:
        # Quitting inside test_start is undone by the spawning that follows it.
        gevent.spawn(environment.runner.quit)


events.test_start.add_listener(refuse_remote_hosts)


def remember(order_id: str) -> None:
    if len(placed_orders) < MAX_REMEMBERED_ORDERS:
        placed_orders.append(order_id)
    else:
        placed_orders[random.randrange(MAX_REMEMBERED_ORDERS)] = order_id


def place_order(user: YardarmUser) -> None:
    user.check_allowed()
    skus = random.sample(user.skus, random.randint(1, min(3, len(user.skus))))
    body = {
        "customer_id": f"load-{random.randrange(1000):04d}",
        "items": [{"sku": sku, "quantity": random.randint(1, 2)} for sku in skus],
        "payment": {"card": DECLINED_CARD if random.random() < DECLINE_SHARE else GOOD_CARD},
    }
    with user.client.post(
        "/api/orders",
        json=body,
        headers={"Idempotency-Key": str(uuid.uuid4())},
        name="orders",
        allow_redirects=False,
        catch_response=True,
    ) as response:
        if response.status_code != 202:
            response.failure(f"expected 202, got {response.status_code}")
            return
        order_id = (response.json() or {}).get("id")
        if isinstance(order_id, str) and order_id:
            remember(order_id)


def read_order(user: YardarmUser) -> None:
    user.check_allowed()
    if not placed_orders:
        read_stock(user)
        return
    order_id = random.choice(placed_orders)
    user.client.get(f"/api/orders/{quote(order_id, safe='')}", name="reads")


def read_stock(user: YardarmUser) -> None:
    user.check_allowed()
    sku = random.choice(user.skus)
    user.client.get(f"/api/stock/{quote(sku, safe='')}", name="stock")


class YardarmUser(HttpUser):  # type: ignore[misc]
    """One shopper: places orders, reads them back, looks at stock."""

    wait_time = between(0.0, 0.1)
    tasks = {place_order: 20, read_order: 70, read_stock: 10}

    def on_start(self) -> None:
        self.skus: list[str] = []
        if not host_allowed(self.host):
            return  # no request at all; the first task stops this user quietly
        response = self.client.get("/api/stock", name="setup: stock list")
        response.raise_for_status()
        self.skus = [item["sku"] for item in response.json().get("items", []) if item.get("sku")]
        if not self.skus:
            raise RuntimeError(f"{self.host}/api/stock listed no SKUs; is the catalog seeded?")

    def check_allowed(self) -> None:
        """Stop this user (silently, from a task) when the host was refused."""
        if not self.skus:
            raise StopUser()
