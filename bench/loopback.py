"""Benchmarks only ever talk to 127.0.0.1: ports, plain GETs and the guard on targets."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from bench.options import BenchError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def check_loopback(url: str) -> None:
    """Refuse any target but 127.0.0.1: benchmarks never load another host."""
    if urlsplit(url).hostname != LOOPBACK:
        raise BenchError(f"refusing to send load to {url}: only {LOOPBACK} is allowed")


# Never through an HTTP proxy from the environment: traffic stays on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    check_loopback(url)
    try:
        with _OPENER.open(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
