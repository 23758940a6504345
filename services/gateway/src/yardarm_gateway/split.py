"""Weighted traffic split between the release tracks of one service.

Two ways to choose, for two needs:

- Without a sticky key: nginx's smooth weighted round robin. It is deterministic and
  exact (over each cycle of `total weight` picks every track gets exactly its weight)
  and smooth: a 10% canary sees every tenth request, not ten in a row, so a canary's
  error rate is measured on traffic spread over time like stable's.
- With a sticky key (a client's header or cookie): the key's stable hash is a point on
  [0, total weight) and each track owns an interval of it. One client keeps its track
  while the weights hold, and a weight change moves only the clients whose point
  changes interval: going from 90/10 to 80/20 moves 10% of clients, all stable->canary,
  so a ramp-up never bounces clients back and forth between versions.

On the sticky range the new version's tracks come first, `canary` then `green`, then
every other track in name order (whatever the order of the mapping, so two splits with
the same weights place every key identically). The canary owns [0, w): as its weight
grows its interval only grows, so a client on the canary never goes back to the old
version during a ramp (name order would put `baseline` first and push some canary
clients onto it at the next step). The round robin keeps name order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator
from yardarm_kit.openapi import portable_pattern

# An HTTP token (RFC 9110): what a header or cookie name may be.
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")


_NAME_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": portable_pattern(f"^{TOKEN.pattern}$")},
        {"type": "null"},
    ]
}
STICKY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "exactly one of a header or a cookie (an HTTP token) carries the key",
    "additionalProperties": False,
    "properties": {"header": _NAME_SCHEMA, "cookie": _NAME_SCHEMA},
    "oneOf": [
        {"required": ["header"], "properties": {"header": {"type": "string"}}},
        {"required": ["cookie"], "properties": {"cookie": {"type": "string"}}},
    ],
}


def _sticky_schema(schema: dict[str, Any]) -> None:
    schema.update({k: v for k, v in STICKY_SCHEMA.items() if k != "description"})


class StickyConfig(BaseModel):
    """Where the client's sticky key is read: exactly one of a header or a cookie, named
    by an HTTP token (a name with spaces or separators could never be sent)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, json_schema_extra=_sticky_schema
    )

    header: str | None = None
    cookie: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("sticky needs exactly one of 'header' or 'cookie'")
        for field, value in (("header", self.header), ("cookie", self.cookie)):
            if value is not None and not TOKEN.fullmatch(value):
                raise ValueError(
                    f"sticky {field} name {value[:40]!r} must be an HTTP token of 1..128 "
                    "letters, digits or !#$%&'*+.^_`|~-"
                )
        return self


# The tracks that run a rollout's new version, first on the sticky range in this order.
NEW_VERSION_TRACKS = ("canary", "green")


def _sticky_rank(track: str) -> tuple[int, str]:
    """Where a track's interval goes on the sticky range: new-version tracks first."""
    if track in NEW_VERSION_TRACKS:
        return NEW_VERSION_TRACKS.index(track), ""
    return len(NEW_VERSION_TRACKS), track


def _point(key: bytes, total: int) -> int:
    """The key's place on [0, total): a 64-bit hash scaled down, so the same key keeps
    the same fraction of the range whatever the total weight."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return (int.from_bytes(digest, "big") * total) >> 64


class TrafficSplit:
    """Per route: which track (stable/canary/baseline/blue/green) serves the next request.

    `pick` costs O(number of tracks) and allocates nothing on the round-robin path.
    """

    __slots__ = (
        "_bounds",
        "_current",
        "_sticky_tracks",
        "_total",
        "_tracks",
        "_weights",
        "_weights_view",
    )

    def __init__(self, weights: Mapping[str, int]) -> None:
        if not weights:
            raise ValueError("a traffic split needs at least one track")
        for track, weight in weights.items():
            if not isinstance(track, str) or not track:
                raise ValueError(f"track name {track!r} must be a non-empty string")
            if isinstance(weight, bool) or not isinstance(weight, int):
                raise ValueError(f"weight of track {track!r} must be an integer (got {weight!r})")
            if weight < 0:
                raise ValueError(f"weight of track {track!r} must be >= 0 (got {weight})")
        positive = sorted((track, weight) for track, weight in weights.items() if weight > 0)
        if not positive:
            raise ValueError(
                f"a traffic split needs a track with weight above 0 (got {dict(weights)})"
            )
        self._weights_view: Mapping[str, int] = MappingProxyType(dict(weights))
        self._tracks = tuple(track for track, _ in positive)
        self._weights = tuple(weight for _, weight in positive)
        placed = sorted(positive, key=lambda item: _sticky_rank(item[0]))
        bounds: list[int] = []
        upper = 0
        for _, weight in placed:
            upper += weight
            bounds.append(upper)
        # _sticky_tracks[i] owns the sticky points [bounds[i-1], bounds[i]).
        self._sticky_tracks = tuple(track for track, _ in placed)
        self._bounds = tuple(bounds)
        self._total = upper
        self._current = [0] * len(self._tracks)

    @property
    def weights(self) -> Mapping[str, int]:
        """The configured weights, tracks of weight 0 included."""
        return self._weights_view

    def pick(
        self,
        available: Callable[[str], bool] | None = None,
        sticky_key: bytes | None = None,
    ) -> str | None:
        """The track for the next request, or None when no weighted track is available.

        `available(track)` says whether a track can serve now (None: all can). A sticky
        client whose track is unavailable is served by the round robin over the others
        rather than refused.
        """
        if sticky_key is not None:
            point = _point(sticky_key, self._total)
            for index, bound in enumerate(self._bounds):
                if point < bound:
                    track = self._sticky_tracks[index]
                    if available is None or available(track):
                        return track
                    break
        return self._round_robin(available)

    def _round_robin(self, available: Callable[[str], bool] | None) -> str | None:
        # nginx: every eligible track gains its weight, the richest is picked and pays
        # back the eligible total. Ineligible tracks keep their credit for later.
        tracks = self._tracks
        weights = self._weights
        current = self._current
        best = -1
        best_credit = 0
        total = 0
        for index in range(len(tracks)):
            if available is not None and not available(tracks[index]):
                continue
            weight = weights[index]
            credit = current[index] + weight
            current[index] = credit
            total += weight
            if best < 0 or credit > best_credit:
                best = index
                best_credit = credit
        if best < 0:
            return None
        current[best] -= total
        return tracks[best]


def shares(split: TrafficSplit, serving: Callable[[str], bool]) -> dict[str, float]:
    """The percentage of a route's traffic each configured track gets right now: its
    weight over the weights of the tracks that can serve (`serving(track)`, i.e. have
    endpoints), and 0 for the others, as `pick` does it."""
    live = {track: weight for track, weight in split.weights.items() if serving(track)}
    total = sum(live.values())
    return {
        track: (100.0 * live.get(track, 0) / total if total else 0.0)
        for track in sorted(split.weights)
    }
