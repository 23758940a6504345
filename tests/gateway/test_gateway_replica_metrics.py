"""Every gateway replica serves its own metrics on its admin port, so a scraper sees each
replica once, while the shared public port reaches whichever replica the kernel picks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from tests.conftest import free_port
from tests.gateway.apps import echo_app
from tests.gateway.processes import metric_sum

StartBackend = Callable[..., Awaitable[str]]
StartGateway = Callable[..., Awaitable[Any]]

ROUTES = [{"prefix": "/api/orders", "upstream": "orders"}]
TOKEN = "replica-metrics-admin-token-0123456789"
REQUESTS = 60
OPENMETRICS = "application/openmetrics-text"


def _samples(text: str) -> dict[str, float]:
    """{'name{labels}': value}, exemplars (OpenMetrics' `# {...}` tail) left out."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" # ")[0].rpartition(" ")
            samples[key] = float(value)
    return samples


async def test_each_replica_serves_its_own_metrics_on_its_admin_port_without_a_token(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    backend = await start_backend(echo_app("orders-1"))
    port = free_port()
    shared = {"port": port, "reuse_port": True, "admin": True, "admin_token": TOKEN}
    replicas = [await start_gateway(ROUTES, {"orders": [backend]}, **shared) for _ in range(2)]
    instances = ["gateway-test-0", "gateway-test-1"]
    # A new connection per request, so the kernel spreads them over both replicas.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:
        for i in range(REQUESTS):
            async with fresh.get(f"http://127.0.0.1:{port}/api/orders/{i}") as resp:
                assert resp.status == 200

    served: list[float] = []
    for replica, instance in zip(replicas, instances, strict=True):
        async with client.get(f"{replica.admin_url}/metrics") as resp:  # no token
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "text/plain"
            samples = _samples(await resp.text())
        labelled = {key for key in samples if "instance=" in key}
        assert labelled, samples
        assert all(f'instance="{instance}"' in key for key in labelled), instance
        count = metric_sum(
            samples, "yardarm_gateway_route_requests_total", route="api-orders", code="200"
        )
        assert count > 0, f"{instance} served none of the requests"
        served.append(count)
    assert sum(served) == REQUESTS

    # OpenMetrics with exemplars when asked for, as on the public port.
    async with client.get(
        f"{replicas[0].admin_url}/metrics", headers={"Accept": OPENMETRICS}
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == OPENMETRICS
        text = await resp.text()
    assert text.rstrip().endswith("# EOF")
    assert any(
        line.startswith("yardarm_gateway_upstream_request_duration_seconds_bucket")
        and ' # {trace_id="' in line
        for line in text.splitlines()
    ), text
    # The public port keeps serving /metrics: whichever replica answers it.
    async with client.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert any(f'instance="{instance}"' in text for instance in instances)
    # The rest of the admin API still needs the token.
    async with client.get(f"{replicas[1].admin_url}/admin/routes") as resp:
        assert resp.status == 401
