"""Which headers cross the gateway, in each direction (RFC 9110 section 7.6.1).

Hop-by-hop headers describe one connection, so they stop here, together with any
header the sender named in `Connection`. Headers the gateway's own HTTP stack sets
for the new hop (Host, Content-Length) and the ones the kit's client injects
(`traceparent`, `tracestate`, `yardarm-timeout-ms`, recomputed from the server span and
the remaining deadline) are dropped too, so each is sent exactly once.

`Location` and `Content-Location` in an answer name the upstream's path space; they are
mapped back into the public one (`Relocation`), as nginx's default `proxy_redirect` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, MultiMapping

from yardarm_gateway.endpoints import Endpoint, split_origin

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
# Response headers holding a URI reference that names the upstream's path space.
RELOCATED = frozenset({"location", "content-location"})


@dataclass(frozen=True, slots=True)
class Relocation:
    """A route's two path spaces: `forwarded` (what the upstream sees, `/orders`, the
    public prefix with the gateway's strip prefix removed) and `public` (the route's
    prefix, `/api/orders`). Built once per routing table, so an answer without a
    relocated header costs nothing.
    """

    forwarded: str
    public: str

    def public_value(self, value: str, endpoint: Endpoint) -> str:
        """`value` (a Location or Content-Location the endpoint sent) in public terms.

        An absolute path, or an absolute URL of the endpoint's own origin, under the
        forwarded prefix (whole segments, behind the endpoint URL's own path if it has
        one) becomes the same path under the public prefix: `/orders/7` and
        `http://<endpoint>/orders/7?x` are `/api/orders/7` and `/api/orders/7?x`. The
        gateway's public origin is not known here (clients resolve a path against the one
        they called), so the answer is always a path. Anything else (another origin, a
        relative reference, `//host/...`, a path outside the route) passes unchanged.
        """
        if value.startswith("/"):
            if value.startswith("//"):  # a network-path reference: another authority
                return value
            target = value
        else:
            split = split_origin(value)
            if split is None or endpoint.origin is None or split[0] != endpoint.origin:
                return value
            target = split[1]
        base = endpoint.base_path
        prefix = (base or "/") if self.forwarded == "/" else base + self.forwarded
        if prefix == "/":
            rest = target
        else:
            if not target.startswith(prefix):
                return value
            rest = target[len(prefix) :]
            if rest and rest[0] not in "/?#":  # `/ordersX` is not under `/orders`
                return value
        public = self.public.rstrip("/") + rest
        return public if public.startswith("/") else "/" + public


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }


def _filtered(
    items: Iterable[tuple[str, str]],
    drop: set[str],
    relocation: Relocation | None = None,
    endpoint: Endpoint | None = None,
) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in items:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in drop or lowered.startswith("proxy-"):
            continue
        if lowered in RELOCATED and relocation is not None and endpoint is not None:
            value = relocation.public_value(value, endpoint)
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


def downstream_response_headers(
    upstream: Sequence[tuple[str, str]],
    relocation: Relocation | None = None,
    endpoint: Endpoint | None = None,
) -> CIMultiDict[str]:
    """The upstream response headers (in wire order, repeats kept) as returned to the
    client; with a relocation and the endpoint that answered, `Location` and
    `Content-Location` are mapped into the public path space (`Relocation`)."""
    drop = _connection_tokens(upstream) | _RESPONSE_REWRITTEN
    return _filtered(upstream, drop, relocation, endpoint)
