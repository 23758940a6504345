"""Load-balancing policies: which endpoint of an upstream serves the next request.

The policies follow the proxies they are named after, so their behaviour can be looked
up rather than guessed:

- round_robin / weighted_round_robin: nginx's smooth weighted round robin, one
  algorithm for both names (equal weights make it plain round robin).
- least_request: Envoy's. With equal weights, power of N choices on the in-flight
  count; with unequal weights (or while an endpoint is in slow start), an earliest
  deadline first schedule whose weights are `weight / (active + 1) ** bias`.
- peak_ewma: Finagle's and linkerd's power of two choices on
  `latency estimate * (active + 1)`.
- consistent_hash: a fixed hash ring whose points are owned by weighted rendezvous
  hashing, so a membership change moves only the keys it must.
- slow start: Envoy's ramp for new endpoints, for every policy except consistent_hash.

Every `pick` runs on the gateway's one event loop for every request, so it never
awaits, never locks and does O(1) work when endpoints are available: all per-endpoint
tables are built once in the constructor (endpoint sets change rarely, and the caller
builds a new balancer when they do). Time comes in as `now` (loop time) and randomness
from an injected `random.Random`, which keeps every policy deterministic under test.

This module is the public surface; each policy lives in its own module of
`yardarm_gateway.balancing`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from yardarm_kit.gateway_policy import BalancerConfig, HashSource, Policy

from yardarm_gateway.balancing.consistent_hash import ConsistentHash
from yardarm_gateway.balancing.contract import Available, Balancer
from yardarm_gateway.balancing.least_request import LeastRequest
from yardarm_gateway.balancing.peak_ewma import PeakEwma
from yardarm_gateway.balancing.round_robin import RoundRobin
from yardarm_gateway.balancing.slow_start import SlowStart
from yardarm_gateway.endpoints import Endpoint

__all__ = [
    "Available",
    "Balancer",
    "BalancerConfig",
    "ConsistentHash",
    "HashSource",
    "LeastRequest",
    "PeakEwma",
    "Policy",
    "RoundRobin",
    "make_balancer",
    "request_hash_key",
]


def make_balancer(
    config: BalancerConfig, endpoints: Sequence[Endpoint], rng: random.Random | None = None
) -> Balancer:
    """The policy `config` names over `endpoints`; build a new one when the set changes.

    An empty set is allowed (every pick is None). Raises ValueError for a weight below 1,
    an endpoint listed twice, or a hash ring smaller than the endpoint count.
    """
    members = tuple(endpoints)
    if len({id(endpoint) for endpoint in members}) != len(members):
        raise ValueError("an endpoint is listed twice in one balancer")
    for endpoint in members:
        if endpoint.weight < 1:
            raise ValueError(f"{endpoint!r} has weight {endpoint.weight}; weights must be >= 1")
    random_source = rng if rng is not None else random.Random()
    ramp = SlowStart(config, members)
    if config.policy in ("round_robin", "weighted_round_robin"):
        return RoundRobin(members, ramp)
    if config.policy == "least_request":
        return LeastRequest(members, config, random_source, ramp)
    if config.policy == "peak_ewma":
        return PeakEwma(members, config, random_source, ramp)
    return ConsistentHash(members, config.ring_size)


def request_hash_key(
    config: BalancerConfig,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    client_address: str | None,
) -> bytes | None:
    """The bytes consistent hashing keys a request by, or None to fall back to round robin.

    An empty value counts as absent: hashing every request without a session cookie
    to one endpoint would pin all anonymous traffic there. Header names match
    case-insensitively even when `headers` is a plain dict.
    """
    name = config.hash_key or ""
    value: str | None
    if config.hash_on is None:
        return None
    if config.hash_on == "client_address":
        value = client_address
    elif config.hash_on == "cookie":
        value = cookies.get(name)
    else:
        value = headers.get(name)
        if value is None:
            lowered = name.lower()
            value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if not value:
        return None
    return value.encode("utf-8", "surrogateescape")
