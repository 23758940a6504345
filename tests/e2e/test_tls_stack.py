"""End to end with `tls: {enabled: true}`: every link of the stack is TLS.

A stack from `yardarm up` with the topology's TLS setting: every service serves HTTPS
with a certificate the stack's own CA signed, the datastore's Raft links are mutual
TLS, and the CLI (status, chaos, load) finds the CA by itself. An order placed through
the gateway crosses every hop (gateway to orders, orders to the datastore, the Raft
group) and confirms.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import require_servers
from tests.harness.local import Stack, pick_base_port, stop_stack
from yardarm.certificates import StackCertificates
from yardarm.credentials import StackCredentials

pytestmark = pytest.mark.e2e

CARD_OK = "4242424242424242"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_servers()
    root = tmp_path_factory.mktemp("tls")
    base_port = pick_base_port(25000)
    config = root / "yardarm.yaml"
    config.write_text(yaml.safe_dump({"base_port": base_port, "tls": {"enabled": True}}))
    running = Stack(home=root / "home", base_port=base_port)
    running.cli("up", "--detach", "--config", str(config), "--no-prometheus")
    try:
        yield running
    finally:
        stop_stack(running)


def _trust(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(StackCertificates(stack.home).ca_file))


def _url(stack: Stack, offset: int) -> str:
    return f"https://127.0.0.1:{stack.base_port + offset}"


def test_every_service_answers_only_https_from_the_stack_ca(stack: Stack) -> None:
    rows = stack.status()
    assert rows and all(row["state"] == "ready" for row in rows), rows
    for offset in (0, 1, 10, 11, 12, 20, 21, 30, 49):  # gateway, admin, services, chaos
        answer = httpx.get(f"{_url(stack, offset)}/readyz", verify=_trust(stack), timeout=10)
        assert answer.status_code == 200, (offset, answer.text)
        with pytest.raises(httpx.ConnectError):  # not a certificate the system trusts
            httpx.get(f"{_url(stack, offset)}/readyz", timeout=10)
        with pytest.raises(httpx.HTTPError):  # and no plain HTTP on the same port
            httpx.get(f"http://127.0.0.1:{stack.base_port + offset}/readyz", timeout=10)


def test_an_order_crosses_every_tls_hop_and_confirms(stack: Stack) -> None:
    gateway = _url(stack, 0)
    with httpx.Client(base_url=gateway, verify=_trust(stack), timeout=20) as http:
        body = {
            "customer_id": "tls-1",
            "items": [{"sku": "rope-10m", "quantity": 1}],
            "payment": {"card": CARD_OK},
        }
        placed = http.post("/api/orders", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
        assert placed.status_code == 202, placed.text
        order_id = placed.json()["id"]
        deadline = time.monotonic() + 60
        while True:
            order: dict[str, Any] = http.get(f"/api/orders/{order_id}").json()
            if order["status"] in ("CONFIRMED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, order
            time.sleep(0.2)
    assert order["status"] == "CONFIRMED", order


def test_the_raft_group_agrees_over_mutual_tls(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {StackCredentials(stack.home).token('admin')}"}
    statuses = [
        httpx.get(f"{_url(stack, 10 + i)}/raft/status", headers=admin, verify=_trust(stack),
                  timeout=10).json()
        for i in range(3)
    ]  # fmt: skip
    leaders = {status["leader"] for status in statuses}
    assert len(leaders) == 1 and 0 not in leaders, statuses
    assert len({status["term"] for status in statuses}) == 1
    # A Raft listener greets a dialer that shows a certificate of the stack's CA with its
    # challenge; one without a certificate gets nothing but a closed stream.
    certs = StackCertificates(stack.home)
    assert _raft_greeting(stack, certs.service("datastore").cert_file) != b""
    assert _raft_greeting(stack, None) == b""


def _raft_greeting(stack: Stack, cert: Path | None) -> bytes:
    """The first bytes datastore-0's Raft listener sends a TLS dialer (b"" if none)."""
    certs = StackCertificates(stack.home)
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    if cert is not None:
        context.load_cert_chain(cert, certs.service("datastore").key_file)
    try:
        with (
            socket.create_connection(("127.0.0.1", stack.base_port + 60), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.recv(64)
    except OSError:  # the TLS 1.3 alert for a missing certificate arrives on the read
        return b""


def test_the_cli_finds_the_stack_ca_by_itself(stack: Stack, tmp_path: Path) -> None:
    chaos = json.loads(stack.cli("chaos", "status", "--json").stdout)
    assert "links" in chaos
    result = stack.cli("load", "--duration", "3s", "--concurrency", "2", "--json")
    summary = json.loads(result.stdout)
    assert summary["requests"] > 0
    assert summary["transport_errors"] == 0 and summary["server_errors"] == 0, summary
