"""Fault injection on a local stack: link proxies between instances, and a controller.

`python -m yardarm.chaos --config <home>/chaos.json` runs one stack's controller; the
`yardarm chaos` commands drive it. This package's root stays light (no aiohttp) so the
topology and the CLI can import the config models cheaply.
"""

from yardarm.chaos.config import ACTIONS, Action, ChaosConfig, FaultRequest, LinkConfig
from yardarm.chaos.proxy import LinkProxy, LinkState, LinkStats

__all__ = [
    "ACTIONS",
    "Action",
    "ChaosConfig",
    "FaultRequest",
    "LinkConfig",
    "LinkProxy",
    "LinkState",
    "LinkStats",
]
