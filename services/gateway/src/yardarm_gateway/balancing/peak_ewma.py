"""Peak EWMA: send the next request where latency times load is lowest."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from yardarm_kit.gateway_policy import BalancerConfig

from yardarm_gateway.balancing.contract import Available
from yardarm_gateway.balancing.power_of_choices import PowerOfChoices
from yardarm_gateway.balancing.slow_start import NO_RAMP, SlowStart
from yardarm_gateway.endpoints import Endpoint

# Peak EWMA: an endpoint with no latency sample yet that already has requests in
# flight costs this much (plus its in-flight count), as in Finagle, so a new endpoint
# gets one probe rather than a flood before its latency is known.
_UNMEASURED_PENALTY = float(1 << 48)


class PeakEwma(PowerOfChoices):
    """Finagle's peak EWMA: P2C on latency estimate x (active + 1) / weight.

    The estimate jumps straight to any sample above it (a slowing endpoint is avoided
    at once) and otherwise averages samples with weight exp(-dt / ewma_decay_s). Between
    samples it decays towards 0 with the same time constant, so an endpoint that lost
    all its traffic is retried after a while and wins it back once it is fast again.
    A never-measured endpoint costs 0 while idle, so it is tried at once (as Finagle
    and linkerd do), and a large penalty while its first request is in flight, so it is
    not flooded before its latency is known. Weight acts as capacity: at equal latency,
    in-flight requests settle in proportion to weight.
    """

    __slots__ = ("_estimate", "_index", "_measured", "_stamp", "_tau")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        config: BalancerConfig,
        rng: random.Random,
        ramp: SlowStart = NO_RAMP,
    ) -> None:
        super().__init__(endpoints, config, rng, ramp)
        self._tau = config.ewma_decay_s
        self._index = {endpoint: index for index, endpoint in enumerate(self._endpoints)}
        self._estimate = [0.0] * len(self._endpoints)
        self._stamp = [0.0] * len(self._endpoints)
        self._measured = [False] * len(self._endpoints)

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        return self._choose(available, now)

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        index = self._index.get(endpoint)
        if index is None or latency_s < 0:
            return
        if not self._measured[index]:
            self._measured[index] = True
            self._estimate[index] = latency_s
        else:
            keep = math.exp(min(0.0, self._stamp[index] - now) / self._tau)
            decayed = self._estimate[index] * keep
            if latency_s > decayed:
                self._estimate[index] = latency_s
            else:
                self._estimate[index] = decayed + latency_s * (1.0 - keep)
        self._stamp[index] = now

    def latency_estimate(self, endpoint: Endpoint, now: float) -> float | None:
        """The endpoint's current estimate in seconds, None before its first sample."""
        index = self._index.get(endpoint)
        if index is None or not self._measured[index]:
            return None
        return self._estimate[index] * math.exp(min(0.0, self._stamp[index] - now) / self._tau)

    def _cost(self, index: int, endpoint: Endpoint, now: float) -> float:
        if not self._measured[index]:
            return 0.0 if endpoint.active <= 0 else _UNMEASURED_PENALTY + endpoint.active
        keep = math.exp(min(0.0, self._stamp[index] - now) / self._tau)
        load = max(endpoint.active, 0) + 1
        return self._estimate[index] * keep * load / self._weights[index]
