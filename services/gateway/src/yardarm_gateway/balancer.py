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
"""

from __future__ import annotations

import heapq
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from hashlib import blake2b
from typing import Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from yardarm_gateway.endpoints import Endpoint

Available = Callable[[Endpoint], bool]
Policy = Literal[
    "round_robin", "weighted_round_robin", "least_request", "peak_ewma", "consistent_hash"
]
HashSource = Literal["header", "cookie", "client_address"]

# Smooth round robin precomputes one period of its sequence; this caps the work
# (period length x endpoints) so building a balancer stays in the milliseconds.
_SCHEDULE_BUDGET = 1 << 18
# Peak EWMA: an endpoint with no latency sample yet that already has requests in
# flight costs this much (plus its in-flight count), as in Finagle, so a new endpoint
# gets one probe rather than a flood before its latency is known.
_UNMEASURED_PENALTY = float(1 << 48)
_MASK64 = (1 << 64) - 1


class BalancerConfig(BaseModel):
    """How one upstream spreads its requests; invalid combinations fail at start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = "round_robin"
    hash_on: HashSource | None = None
    hash_key: str | None = Field(default=None, min_length=1)
    ring_size: int = Field(default=1024, ge=1, le=65536)
    choice_count: int = Field(default=2, ge=2, le=32)
    active_request_bias: float = Field(default=1.0, ge=0.0, le=16.0, allow_inf_nan=False)
    ewma_decay_s: float = Field(default=10.0, gt=0.0, allow_inf_nan=False)
    slow_start_window_s: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    slow_start_aggression: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    slow_start_min_weight_percent: float = Field(
        default=10.0, ge=1.0, le=100.0, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _hashing_is_complete(self) -> Self:
        if self.policy == "consistent_hash":
            if self.hash_on is None:
                raise ValueError(
                    "policy consistent_hash needs hash_on: header, cookie or client_address"
                )
            if self.slow_start_window_s > 0:
                raise ValueError(
                    "slow start does not apply to consistent_hash (a key's endpoint must not "
                    "depend on time); set slow_start_window_s to 0"
                )
        elif self.hash_on is not None:
            raise ValueError(
                f"hash_on only applies to policy consistent_hash, not {self.policy!r}; "
                "remove hash_on or set policy: consistent_hash"
            )
        if self.hash_on in ("header", "cookie") and self.hash_key is None:
            raise ValueError(f"hash_on {self.hash_on!r} needs hash_key: the {self.hash_on} name")
        if self.hash_on == "client_address" and self.hash_key is not None:
            raise ValueError("hash_key names a header or cookie; hash_on client_address has none")
        return self


class Balancer(Protocol):
    """Chooses the endpoint for the next request."""

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        """An endpoint for which available(e) is true, or None if there is none."""
        ...

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        """Called after each completed upstream attempt (only latency-aware policies use it)."""
        ...


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
    ramp = _SlowStart(config, members)
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


class _SlowStart:
    """Envoy's slow start: weight x max(min%, (age / window) ** (1 / aggression)).

    Only shares matter, so policies use `relative`: an endpoint's factor over that of
    the longest-present endpoint. Endpoints that all joined together (a gateway start)
    therefore do not ramp at all, and `until`, the loop time after which nothing ramps,
    lets the policies skip all of this with one comparison per pick.
    """

    __slots__ = ("_added", "_eldest", "_inverse_aggression", "_window", "floor", "until")

    def __init__(self, config: BalancerConfig, endpoints: Sequence[Endpoint]) -> None:
        self._window = config.slow_start_window_s
        self.floor = config.slow_start_min_weight_percent / 100.0
        self._inverse_aggression = 1.0 / config.slow_start_aggression
        self._added = [endpoint.added_at for endpoint in endpoints]
        self._eldest = min(self._added, default=0.0)
        staggered = self._window > 0 and max(self._added, default=0.0) > self._eldest
        self.until = max(self._added) + self._window if staggered else -math.inf

    def factor(self, added_at: float, now: float) -> float:
        age = now - added_at
        if age >= self._window:
            return 1.0
        if age <= 0:
            return self.floor
        return max(self.floor, math.pow(age / self._window, self._inverse_aggression))

    def relative(self, index: int, now: float) -> float:
        return self.factor(self._added[index], now) / self.factor(self._eldest, now)


_NO_RAMP = _SlowStart(BalancerConfig(), ())


class RoundRobin:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a.

    The sequence repeats every sum(weights) picks, so one period is computed up front
    and `pick` walks it: O(1), deterministic, and over N*k picks with equal weights each
    endpoint gets exactly k. An unavailable endpoint's turns are skipped, as nginx
    skips a down peer, and the others keep their order. An endpoint in slow start
    keeps a fraction of its turns (a credit of its relative factor per turn, spent 1 at
    a time), which scales its share by exactly that factor without randomness.
    """

    __slots__ = (
        "_credit",
        "_endpoints",
        "_generation",
        "_max_steps",
        "_position",
        "_ramp",
        "_schedule",
        "_stamps",
    )

    def __init__(self, endpoints: Sequence[Endpoint], ramp: _SlowStart = _NO_RAMP) -> None:
        self._endpoints = tuple(endpoints)
        self._schedule = _smooth_schedule([endpoint.weight for endpoint in self._endpoints])
        self._position = 0
        self._ramp = ramp
        self._credit = [0.0] * len(self._endpoints)
        self._stamps = [0] * len(self._endpoints)
        self._generation = 0
        # A ramping endpoint earns at least min% of a turn per visit, so this many
        # steps always reach an admitted endpoint if any is available.
        rounds = math.ceil(1.0 / ramp.floor) + 1 if ramp.until > -math.inf else 1
        self._max_steps = len(self._schedule) * rounds

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        schedule = self._schedule
        length = len(schedule)
        endpoints = self._endpoints
        position = self._position
        ramping = now < self._ramp.until
        generation = 0
        unavailable = 0
        for _ in range(self._max_steps):
            index = schedule[position]
            position += 1
            if position == length:
                position = 0
            endpoint = endpoints[index]
            if not available(endpoint):
                if generation == 0:
                    self._generation += 1
                    generation = self._generation
                if self._stamps[index] != generation:
                    self._stamps[index] = generation
                    unavailable += 1
                    if unavailable == len(endpoints):
                        break
                continue
            if ramping and not self._admit(index, now):
                continue
            self._position = position
            return endpoint
        self._position = position
        return None

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        return None

    def _admit(self, index: int, now: float) -> bool:
        factor = self._ramp.relative(index, now)
        if factor >= 1.0:
            return True
        credit = self._credit[index] + factor
        if credit >= 1.0:
            self._credit[index] = credit - 1.0
            return True
        self._credit[index] = credit
        return False


def _smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One period of nginx's smooth weighted round robin, as endpoint indexes.

    Each step adds every weight to its endpoint's current value, picks the highest
    (the first on a tie, as nginx) and takes the total off it. Weights are divided by
    their gcd first; if the period is still too long to simulate cheaply they are
    scaled down proportionally (keeping at least 1), which shifts shares by at most
    a rounding step of the scaled weights.
    """
    count = len(weights)
    if count == 0:
        return []
    divisor = math.gcd(*weights)
    reduced = [weight // divisor for weight in weights]
    total = sum(reduced)
    if total == count:
        return list(range(count))
    if total * count > _SCHEDULE_BUDGET:
        scale = _SCHEDULE_BUDGET / (total * count)
        reduced = [max(1, round(weight * scale)) for weight in reduced]
        divisor = math.gcd(*reduced)
        reduced = [weight // divisor for weight in reduced]
        total = sum(reduced)
    current = [0] * count
    schedule = [0] * total
    for step in range(total):
        best = 0
        best_value = current[0] + reduced[0]
        current[0] = best_value
        for index in range(1, count):
            value = current[index] + reduced[index]
            current[index] = value
            if value > best_value:
                best, best_value = index, value
        current[best] = best_value - total
        schedule[step] = best
    return schedule


class _PowerOfChoices(ABC):
    """Shared sampling for the P2C policies: choice_count distinct available endpoints.

    Candidates come from a partial Fisher-Yates shuffle of a reusable index array, so
    they are distinct and uniform among the available ones, unavailable ones are
    skipped without retry loops, and nothing is allocated per pick. During slow start
    a ramping endpoint enters the comparison only with its relative factor as probability.
    """

    __slots__ = ("_choices", "_endpoints", "_order", "_ramp", "_random", "_weights")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        config: BalancerConfig,
        rng: random.Random,
        ramp: _SlowStart,
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._weights = [float(endpoint.weight) for endpoint in self._endpoints]
        self._order = list(range(len(self._endpoints)))
        self._choices = config.choice_count
        self._random = rng.random
        self._ramp = ramp

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @abstractmethod
    def _cost(self, index: int, endpoint: Endpoint, now: float) -> float:
        """Lower is better; only the candidates' costs are ever compared."""

    def _choose(self, available: Available, now: float) -> Endpoint | None:
        endpoints = self._endpoints
        order = self._order
        count = len(order)
        draw = self._random
        ramping = now < self._ramp.until
        best: Endpoint | None = None
        best_cost = 0.0
        found = 0
        held_back: Endpoint | None = None
        for slot in range(count):
            swap = slot + int(draw() * (count - slot))
            index = order[swap]
            order[swap] = order[slot]
            order[slot] = index
            endpoint = endpoints[index]
            if not available(endpoint):
                continue
            if ramping and draw() >= self._ramp.relative(index, now):
                if held_back is None:
                    held_back = endpoint
                continue
            cost = self._cost(index, endpoint, now)
            if best is None or cost < best_cost:
                best, best_cost = endpoint, cost
            found += 1
            if found == self._choices:
                break
        return best if best is not None else held_back


class LeastRequest(_PowerOfChoices):
    """Envoy's least request: prefer endpoints with fewer requests in flight.

    Equal weights: power of N choices, the candidate with the lowest `active` wins, so
    the most loaded endpoint never gets a new request until it drains. Unequal weights,
    or an endpoint in slow start: Envoy's weighted mode, an earliest-deadline-first
    schedule in which the picked endpoint's next deadline is 1 / (weight x ramp /
    (active + 1) ** active_request_bias), O(log n) per pick. An endpoint that was
    unavailable rejoins at the current virtual time, so it gets no burst of catch-up
    picks when it returns.
    """

    __slots__ = ("_bias", "_equal", "_heap", "_sequence", "_virtual_time")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        config: BalancerConfig,
        rng: random.Random,
        ramp: _SlowStart = _NO_RAMP,
    ) -> None:
        super().__init__(endpoints, config, rng, ramp)
        self._bias = config.active_request_bias
        self._equal = len(set(self._weights)) <= 1
        self._heap: list[tuple[float, int, int]] | None = None
        self._sequence = 0
        self._virtual_time = 0.0

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        if self._equal and now >= self._ramp.until:
            return self._choose(available, now)
        return self._pick_weighted(available, now)

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        return None

    def _cost(self, index: int, endpoint: Endpoint, now: float) -> float:
        return float(endpoint.active)

    def _dynamic_weight(self, index: int, endpoint: Endpoint, now: float) -> float:
        weight = self._weights[index]
        if now < self._ramp.until:
            weight *= self._ramp.relative(index, now)
        load = max(endpoint.active, 0) + 1
        if self._bias == 1.0:
            return weight / load
        if self._bias == 0.0:
            return weight
        return weight / math.pow(load, self._bias)

    def _pick_weighted(self, available: Available, now: float) -> Endpoint | None:
        heap = self._heap
        if heap is None:
            heap = [
                (1.0 / self._dynamic_weight(index, endpoint, now), index, index)
                for index, endpoint in enumerate(self._endpoints)
            ]
            heapq.heapify(heap)
            self._heap = heap
            self._sequence = len(heap)
        skipped: list[tuple[float, int, int]] | None = None
        chosen: Endpoint | None = None
        while heap:
            deadline, _, index = heap[0]
            endpoint = self._endpoints[index]
            if available(endpoint):
                if deadline > self._virtual_time:
                    self._virtual_time = deadline
                self._sequence += 1
                next_deadline = self._virtual_time + 1.0 / self._dynamic_weight(
                    index, endpoint, now
                )
                heapq.heapreplace(heap, (next_deadline, self._sequence, index))
                chosen = endpoint
                break
            if skipped is None:
                skipped = []
            skipped.append(heapq.heappop(heap))
        if skipped:
            for entry in skipped:
                heapq.heappush(heap, entry)
        return chosen


class PeakEwma(_PowerOfChoices):
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
        ramp: _SlowStart = _NO_RAMP,
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


class ConsistentHash:
    """A key always reaches the same endpoint while it is available; None keys round-robin.

    The ring has `ring_size` fixed points (the hash of a key picks one; the next points
    clockwise serve it while its owner is unavailable). Each point belongs to the
    endpoint with the highest weighted rendezvous score for it, a stable 64-bit hash of
    the endpoint URL and the point, so an endpoint owns a share of points proportional
    to its weight, every gateway replica and restart builds the same ring, and a point
    changes owner only when its owner leaves or a joining endpoint outscores it: one
    endpoint joining or leaving out of N moves about 1/N of keys, and no others. Building
    costs O(ring_size x endpoints); a pick is O(1) while the owner is available.
    """

    __slots__ = ("_endpoints", "_fallback", "_generation", "_owners", "_stamps")

    def __init__(self, endpoints: Sequence[Endpoint], ring_size: int) -> None:
        self._endpoints = tuple(endpoints)
        if len(self._endpoints) > ring_size:
            raise ValueError(
                f"ring_size {ring_size} is smaller than the {len(self._endpoints)} endpoints; "
                "raise ring_size so every endpoint can own points"
            )
        self._owners = _ring_owners(self._endpoints, ring_size) if self._endpoints else []
        self._fallback = RoundRobin(self._endpoints)
        self._stamps = [0] * len(self._endpoints)
        self._generation = 0

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        if key is None:
            return self._fallback.pick(available, None, now)
        owners = self._owners
        size = len(owners)
        if size == 0:
            return None
        point = int.from_bytes(blake2b(key, digest_size=8).digest(), "little") % size
        endpoint = self._endpoints[owners[point]]
        if available(endpoint):
            return endpoint
        self._generation += 1
        generation = self._generation
        stamps = self._stamps
        stamps[owners[point]] = generation
        unavailable = 1
        for _ in range(size - 1):
            if unavailable == len(self._endpoints):
                return None
            point = point + 1 if point + 1 < size else 0
            index = owners[point]
            if stamps[index] == generation:
                continue
            endpoint = self._endpoints[index]
            if available(endpoint):
                return endpoint
            stamps[index] = generation
            unavailable += 1
        return None

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        return None


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a stable, well-spread 64-bit mix (Python's hash() is salted)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _ring_owners(endpoints: Sequence[Endpoint], size: int) -> list[int]:
    """For each ring point, the index of the endpoint with the highest rendezvous score.

    Weighted scores are ln(u) / weight for a uniform u in (0, 1): the endpoint with the
    largest wins a point with probability weight / total weight.
    """
    seeds = [
        int.from_bytes(blake2b(e.url.encode("utf-8"), digest_size=8).digest(), "little")
        for e in endpoints
    ]
    weights = [float(endpoint.weight) for endpoint in endpoints]
    equal = len(set(weights)) == 1
    owners = [0] * size
    for point in range(size):
        salt = _mix64(point)
        best = 0
        best_score = -math.inf
        for index, seed in enumerate(seeds):
            mixed = _mix64(seed ^ salt)
            score: float = mixed if equal else math.log((mixed + 0.5) / 2.0**64) / weights[index]
            if score > best_score:
                best, best_score = index, score
        owners[point] = best
    return owners
