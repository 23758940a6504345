"""With `tls.enabled`, every link is TLS with certificates from the stack's own CA."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
from yardarm_kit.tls import client_context, server_context

from yardarm.certificates import ensure_certificates
from yardarm.local.render import instances, urls, write_chaos_config
from yardarm.model import Topology


async def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> bytes:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=host
        )
        data = await reader.read()
        writer.close()
        return data
    finally:
        listener.close()


async def test_service_certificates_verify_against_the_stack_ca_only(tmp_path: Path) -> None:
    certs = ensure_certificates(tmp_path / "a", ["datastore", "orders"])
    own = certs.service("datastore")
    server = server_context(own.cert_file, own.key_file)
    trusting = client_context(certs.ca_file)
    for host in ("127.0.0.1", "localhost"):
        assert await _handshake(server, trusting, host) == b"hello"
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(server, trusting, "example.com")  # not a name it was issued for
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(server, ssl.create_default_context(), "127.0.0.1")
    other = ensure_certificates(tmp_path / "b", ["datastore"])
    with pytest.raises(ssl.SSLCertVerificationError):  # another stack's CA is not trusted
        await _handshake(server, client_context(other.ca_file), "127.0.0.1")


async def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    certs = ensure_certificates(tmp_path, ["datastore", "orders"])
    own, peer = certs.service("datastore"), certs.service("orders")
    server = server_context(own.cert_file, own.key_file, ca=certs.ca_file,
                            require_client_cert=True)  # fmt: skip
    with_cert = client_context(certs.ca_file, cert=peer.cert_file, key=peer.key_file)
    assert await _handshake(server, with_cert, "127.0.0.1") == b"hello"
    # Under TLS 1.3 the server's verdict on the client's certificate comes after the
    # client's side of the handshake: an error, or a stream that ends without a byte.
    try:
        data = await _handshake(server, client_context(certs.ca_file), "127.0.0.1")
    except (ssl.SSLError, ConnectionError):
        data = b""
    assert data == b""


def test_certificates_are_issued_once_and_keys_are_private(tmp_path: Path) -> None:
    home = tmp_path / ("a-long-stack-home-directory-name" * 4)  # longer than a CN may be
    certs = ensure_certificates(home, ["orders"])
    first = certs.service("orders").cert_file.read_bytes()
    ca = certs.ca_file.read_bytes()
    again = ensure_certificates(home, ["orders"])

    assert again.service("orders").cert_file.read_bytes() == first
    assert again.ca_file.read_bytes() == ca
    for key in (certs.ca_key_file, certs.service("orders").key_file):
        assert key.stat().st_mode & 0o777 == 0o600


def test_a_tls_topology_renders_https_everywhere(tmp_path: Path) -> None:
    topology = Topology.model_validate({"tls": {"enabled": True}})
    specs = instances(topology, tmp_path)
    ca = str(tmp_path / "tls" / "ca.crt")
    services = [s for s in specs if s.service in ("datastore", "orders", "fulfillment", "gateway")]
    assert len(services) == 7
    for spec in services:
        prefix = f"YARDARM_{spec.service.upper()}_"
        assert spec.env[prefix + "TLS_CA_FILE"] == ca
        assert spec.env[prefix + "TLS_CERT_FILE"] == str(tmp_path / "tls" / f"{spec.service}.crt")
        assert spec.readiness_url is not None and spec.readiness_url.startswith("https://")
        assert spec.readiness_ca_file == ca
        for value in spec.env.values():
            assert "http://" not in value, (spec.name, value)
    peers = json.loads(next(s for s in specs if s.name == "datastore-0").env[
        "YARDARM_DATASTORE_PEERS"])  # fmt: skip
    assert all(p["http"].startswith("https://") for p in peers.values())
    # The stack's Prometheus stays plain HTTP on loopback, like NATS and Postgres; it
    # scrapes the services over https (tests/observability/test_local_prometheus.py).
    assert all(url.startswith(("https://", "nats://", "postgresql://"))
               for name, url in urls(topology).items() if name != "prometheus")  # fmt: skip
    chaos = json.loads(write_chaos_config(topology, tmp_path).read_text())
    assert chaos["tls_cert_file"] == str(tmp_path / "tls" / "chaos.crt")


def test_plain_topology_renders_no_tls(tmp_path: Path) -> None:
    specs = instances(Topology(), tmp_path)
    assert not any("TLS" in key for spec in specs for key in spec.env)
    assert not (tmp_path / "tls").exists()
