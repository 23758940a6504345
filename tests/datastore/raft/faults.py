"""How hostile a simulated run is: its regime, its fault mix and its Raft configuration.

A regime is a family of runs aimed at a class of bugs; each seed draws one, then draws
every knob from that regime's choices, so the seeds of one sweep range from calm to
hostile and every regime is also run against the correct core (a regime that only ever
ran with bugs switched on could blame the core for its own false alarms).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any

# For each regime, the values each knob is drawn from (see FaultMix for their meaning).
_MIXES: dict[str, dict[str, tuple[float, ...]]] = {
    # Long stable leaderships: deep logs, compaction, snapshots to laggards.
    "calm": {
        "drop": (0.0, 0.5),
        "delay": (0.0, 1.0),
        "disk": (1.0, 3.0),
        "compact": (0.3, 1.0),
        "crash": (0.0, 0.005),
        "partition": (0.0, 0.005),
    },
    # A bit of everything.
    "mixed": {
        "drop": (0.0, 0.5, 2.0, 5.0),
        "crash": (0.0, 0.01, 0.03),
        "restart": (0.05, 0.2),
        "partition": (0.01, 0.03),
        "outage": (1.0, 3.0),
        "power_failure": (0.0, 0.005),
    },
    # Crashes and power failures while disks are slow: what an acknowledgement sent
    # before its fsync turns into lost data.
    "churn": {
        "drop": (1.0, 3.0),
        "delay": (1.0, 3.0),
        "disk": (0.3, 0.5),
        "crash": (0.03, 0.06),
        "restart": (0.1, 0.3),
        "partition": (0.04, 0.08),
        "outage": (0.5, 2.0),
        "power_failure": (0.01, 0.02),
    },
    # Links fail one at a time and writes come in bursts: a node that lost the leader
    # but not its peers, with a log as long as theirs, is what leases and check-quorum
    # are about.
    "flaky": {
        "crash": (0.0, 0.005),
        "partition": (0.1, 0.2),
        "outage": (2.0, 4.0),
        "isolate": (0.0,),
        "split": (0.0,),
        "idle": (0.1, 0.2),
        "reads": (6.0, 10.0),
    },
    # Leaders cut off for several election timeouts while clients that cached them keep
    # reading there: a deposed leader that has not noticed must not answer from its own
    # state (check-quorum is often off here, so it does not notice).
    "split-brain": {
        "crash": (0.0, 0.01),
        "partition": (0.05, 0.1),
        "outage": (2.0, 4.0),
        "split": (0.0,),
        "links": (0.0,),
        "reads": (6.0, 10.0),
        "idle": (0.0,),
    },
    # Leaders cut off while taking writes and killed soon after winning, with one-entry
    # appends: logs diverge across terms, the ground of the Raft paper's Figure 8.
    "figure8": {
        "drop": (0.0, 0.5),
        "disk": (1.0, 3.0),
        "compact": (0.0,),
        "crash": (0.01, 0.03),
        "fragile": (0.8,),
        "restart": (0.2,),
        "partition": (0.2,),
        "outage": (1.5, 3.0),
        "links": (0.0,),
        "idle": (0.0,),
        "transfer": (0.0,),
        "membership": (0.0,),
    },
}

# The defaults, for the knobs a regime does not set.
_DEFAULTS: dict[str, tuple[float, ...]] = {
    "drop": (0.0, 0.5, 2.0),
    "duplicate": (0.0, 0.5, 2.0),
    "delay": (0.0, 1.0, 3.0),
    "disk": (0.3, 1.0, 3.0),
    "compact": (0.0, 0.3, 1.0),
    "crash": (0.0, 0.01),
    "restart": (0.1, 0.3),
    "partition": (0.0, 0.01),
    "outage": (1.0, 3.0),
    "isolate": (1.0,),
    "split": (1.0,),
    "links": (1.0,),
    "transfer": (0.0, 0.01, 0.03),
    "membership": (0.0, 0.02, 0.05),
    "power_failure": (0.0,),
    "fragile": (0.0,),
    "idle": (0.0, 0.05, 0.1),
    "writes": (2.0, 4.0),
    "reads": (1.0, 3.0),
}

REGIMES = tuple(_MIXES)
_REGIME_WEIGHTS = {"calm": 2, "mixed": 4, "churn": 2, "flaky": 1, "split-brain": 1, "figure8": 1}


def draw_regime(rng: random.Random) -> str:
    """Mostly mixed runs; the targeted regimes each get a share."""
    return rng.choices(REGIMES, [_REGIME_WEIGHTS[r] for r in REGIMES])[0]


@dataclass(frozen=True)
class FaultMix:
    """How often things go wrong. Message faults are weights next to a tick's 12 (a
    delivery weighs 4 per message in flight); node, network and client faults are chances
    per round of the clock, so they keep pace with election timeouts however busy the
    network is."""

    drop: float
    duplicate: float
    delay: float
    disk: float  # how quickly disk writes complete (lower: acks wait longer for fsync)
    compact: float
    crash: float
    restart: float  # per node that is down
    partition: float
    outage: float  # a partition lasts up to this many election timeouts
    isolate: float  # the kinds of partition, as weights: the leader (and a companion)
    split: float  # a random split in two
    links: float  # single links fail (a partial partition)
    transfer: float
    membership: float  # remove a follower, or add it back (5 nodes only)
    power_failure: float  # a majority, or everyone, crashes at once
    fragile: float  # a leader of less than two rounds crashes as a write completes
    idle: float  # client writes stop, or resume
    writes: float  # client load, as weights
    reads: float

    @classmethod
    def draw(cls, rng: random.Random, nodes: int, regime: str) -> FaultMix:
        if regime not in _MIXES:
            raise ValueError(f"unknown regime {regime!r}; expected one of {REGIMES}")
        mix = {**_DEFAULTS, **_MIXES[regime]}
        knobs = {f.name: rng.choice(mix[f.name]) for f in fields(cls)}
        if nodes < 5:
            knobs["membership"] = 0.0
        return cls(**knobs)


def draw_config(rng: random.Random, read_mode: str, regime: str) -> dict[str, Any]:
    """RaftConfig fields for one run: small batches and windows stress replication."""
    tight = regime in ("churn", "figure8")
    check_quorum = read_mode == "lease" or rng.random() < (0.5 if regime == "split-brain" else 0.85)
    return {
        "election_ticks": 6 if tight else rng.choice((6, 10)),
        "heartbeat_ticks": rng.choice((1, 1, 2)),
        "max_entries_per_msg": 1 if regime == "figure8" else rng.choice((1, 2, 3, 8, 256)),
        "max_inflight": rng.choice((1, 2) if tight else (1, 2, 4, 64)),
        "pre_vote": rng.random() < 0.8,
        "check_quorum": check_quorum,
        "read_mode": read_mode,
    }
