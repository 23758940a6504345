"""Which headers cross the gateway, in each direction (RFC 9110 section 7.6.1).

Hop-by-hop headers describe one connection, so they stop here, together with any
header the sender named in `Connection`. Headers the gateway's own HTTP stack sets
for the new hop (Host, Content-Length) and the ones the kit's client injects
(`traceparent`, `tracestate`, `yardarm-timeout-ms`, recomputed from the server span and
the remaining deadline) are dropped too, so each is sent exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from multidict import CIMultiDict, MultiMapping

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# Set again by the next hop's HTTP stack or by the kit's client.
_REQUEST_REWRITTEN = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "traceparent",
        "tracestate",
        "yardarm-timeout-ms",
        # the gateway's own controls: the admin token never travels upstream
        "x-yardarm-admin-token",
        "x-yardarm-track",
    }
)
_RESPONSE_REWRITTEN = frozenset({"content-length"})


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }


def _filtered(items: Iterable[tuple[str, str]], drop: set[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in drop or lowered.startswith("proxy-"):
            continue
        out.add(name, value)
    return out


def upstream_request_headers(
    inbound: MultiMapping[str],
    *,
    client_ip: str | None,
    scheme: str,
    host: str | None,
) -> dict[str, str]:
    """The inbound headers as sent upstream, with X-Forwarded-* appended.

    Repeated request headers are folded into one line (RFC 9110 section 5.3; `; ` for
    Cookie, RFC 6265 section 5.4), which is how the kit's client takes them.
    """
    drop = _connection_tokens(inbound.items()) | _REQUEST_REWRITTEN
    filtered = _filtered(inbound.items(), drop)
    if client_ip:
        filtered.add("X-Forwarded-For", client_ip)
    filtered["X-Forwarded-Proto"] = scheme
    if host and "X-Forwarded-Host" not in filtered:
        filtered["X-Forwarded-Host"] = host
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name in filtered:  # a CIMultiDict yields a name once per value
        lowered = name.lower()
        if lowered in seen:
            continue
        seen.add(lowered)
        separator = "; " if lowered == "cookie" else ", "
        out[name] = separator.join(filtered.getall(name))
    return out


def downstream_response_headers(upstream: Sequence[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream response headers (in wire order, repeats kept) as returned to the client."""
    drop = _connection_tokens(upstream) | _RESPONSE_REWRITTEN
    return _filtered(upstream, drop)
