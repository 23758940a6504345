"""TLS for listeners and for the kit's outbound calls, from a service's settings.

A service with `tls_cert_file` and `tls_key_file` serves HTTPS (TLS 1.2 or newer); with
`tls_ca_file` it also verifies the servers it calls against that CA, and presents its
own certificate to them (so a peer that requires client certificates, as the datastore's
Raft listener does, knows who calls). A listener on a non-loopback address without TLS
is allowed, but said loudly at start-up, unless the operator declares (`mesh_tls`) that
a service mesh encrypts the traffic instead.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path


def server_context(
    cert: Path, key: Path, *, ca: Path | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """A listener's context; with `require_client_cert`, callers must present a
    certificate signed by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if require_client_cert:
        if ca is None:
            raise ValueError("requiring client certificates needs a CA file to verify them")
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """An outbound context that trusts `ca` (and only it) and presents `cert`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; False for every other address,
    including the wildcard ones (0.0.0.0, ::), which reach every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_warning(host: str, port: int, *, tls: bool, mesh_tls: bool) -> str | None:
    """What to say when a listener may carry credentials in clear text; None if fine."""
    if tls or mesh_tls or is_loopback(host):
        return None
    return (
        f"listening on {host}:{port} WITHOUT TLS: requests, bearer credentials and data "
        "cross the network in clear text. Set TLS_CERT_FILE and TLS_KEY_FILE (and "
        "TLS_CA_FILE for calls out), or set MESH_TLS=true if a service mesh encrypts "
        "this traffic"
    )
