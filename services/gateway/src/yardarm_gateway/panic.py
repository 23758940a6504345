"""Panic routing: Envoy's healthy panic threshold.

When health checks and outlier detection leave too few endpoints of a pool in rotation,
trusting them would pile every request onto the survivors (and overload them) or refuse
everything. Below the threshold the gateway stops trusting them: the balancer spreads
requests over all the pool's endpoints, healthy or not, ejected or not. Most of them are
usually fine (a health check path that broke, a deploy that failed readiness, a burst of
errors that ejected a replica that has recovered since), and the ones that are not fail
fast and, where the retry policy allows, are retried on another endpoint. Each endpoint's
own circuit still applies: an open circuit is a measured failure, not a verdict to
distrust. An endpoint an admin ejected is left out altogether, of the share and of the
routing: that ejection is a decision.

As in Envoy the share is by endpoint count and the comparison strict: with the default of
50%, one of two endpoints in rotation is not a panic, none of two is.
"""

from __future__ import annotations

from dataclasses import dataclass


def in_panic(available: int, total: int, threshold_percent: float) -> bool:
    """Whether `available` of `total` endpoints lies below the threshold; 0 never panics."""
    return total > 0 and available * 100.0 < threshold_percent * total


@dataclass(frozen=True, slots=True)
class PanicEvent:
    """A pool (one track's endpoints, or all of them: `*`) entered or left panic mode."""

    upstream: str
    track: str
    panic: bool
    available: int
    total: int
    threshold_percent: float
