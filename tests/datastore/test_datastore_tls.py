"""A group over TLS: HTTPS for clients and relays, mutual TLS between replicas' Raft
streams (certificates signed by the group's CA, both ways), on top of the peer secret."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

import aiohttp
from yardarm_kit import tls

from tests.datastore.access import make_credentials
from tests.datastore.certs import TestCA
from tests.datastore.cluster import ELECTION_S, Cluster


async def _greeted(port: int, context: ssl.SSLContext | None) -> bool:
    """Whether a dialer with this TLS context (None: plain TCP) gets as far as the Raft
    listener's challenge."""
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None
            )
            try:
                if context is None:  # a plain-TCP client speaks first, as a Raft peer would
                    writer.write(b"\x00\x00\x00\x05YRFT\x02")
                greeting = await reader.read(64)
            finally:
                writer.transport.abort()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except (OSError, ssl.SSLError, TimeoutError):
        return False
    return greeting.startswith(b"\x00\x00\x00\x25YRFT")


async def test_a_group_over_mutual_tls_elects_replicates_and_refuses_strangers(
    tmp_path: Path,
) -> None:
    creds = make_credentials(tmp_path / "credentials")
    ca, other = TestCA(tmp_path / "ca"), TestCA(tmp_path / "other-ca")
    group = Cluster(tmp_path, extra_env=creds.env(), headers=creds.bearer("admin"), scheme="https")
    for i in group.nodes:
        leaf = ca.leaf(f"datastore-{i}")
        group.node_env[i] = {
            "YARDARM_DATASTORE_TLS_CERT_FILE": str(leaf.cert),
            "YARDARM_DATASTORE_TLS_KEY_FILE": str(leaf.key),
            "YARDARM_DATASTORE_TLS_CA_FILE": str(ca.ca_file),
        }
    group.start_all()
    client = aiohttp.TCPConnector(ssl=tls.client_context(ca.ca_file))
    try:
        async with aiohttp.ClientSession(connector=client) as http:
            await group.wait_ready(http)
            leader = await group.wait_leader(http)
            follower = next(i for i in group.nodes if i != leader)
            async with http.put(
                f"{group.nodes[follower].url}/kv/stock/tls",
                json={"value": "over TLS"},
                headers=creds.bearer("orders"),
            ) as response:
                assert response.status == 201, await response.text()
                version = (await response.json())["version"]
            for node in group.nodes.values():
                async with http.get(
                    f"{node.url}/kv/stock/tls", headers=creds.bearer("orders")
                ) as response:
                    assert (await response.json())["version"] == version
            # A follower relays an admin request to the leader over HTTPS.
            async with http.post(
                f"{group.nodes[follower].url}/raft/transfer",
                json={"to": follower},
                headers=creds.bearer("admin"),
            ) as response:
                assert response.status == 202, await response.text()
            deadline = time.monotonic() + 40 * ELECTION_S
            while await group.wait_leader(http, timeout=40 * ELECTION_S) != follower:
                assert time.monotonic() < deadline, f"leadership never moved to {follower}"
                await asyncio.sleep(0.05)
            status = await group.status(http, follower)
            assert status is not None and status["transport"]["unauthenticated"] == 0

        # The Raft port answers only dialers with a certificate from the group's CA.
        raft_port = group.nodes[leader].raft_port
        own = ca.leaf("client")
        stranger = other.leaf("stranger")
        assert await _greeted(raft_port, tls.client_context(ca.ca_file, cert=own.cert,
                                                            key=own.key))  # fmt: skip
        assert not await _greeted(raft_port, tls.client_context(ca.ca_file))
        assert not await _greeted(
            raft_port, tls.client_context(ca.ca_file, cert=stranger.cert, key=stranger.key)
        )
        assert not await _greeted(raft_port, None)
    finally:
        group.stop_all()
