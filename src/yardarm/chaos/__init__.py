"""Fault injection on a local stack: link proxies between instances, and a controller.

`python -m yardarm.chaos --config <home>/chaos.json` runs one stack's controller; the
`yardarm chaos` commands drive it. This package's root imports nothing until a name is
asked for (PEP 562): every CLI command imports `yardarm.chaos.commands` through it, and
`yardarm --help` should not pay for pydantic models it never uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from yardarm_kit.lazy import lazy_exports

if TYPE_CHECKING:
    from yardarm.chaos.config import ACTIONS, Action, ChaosConfig, FaultRequest, LinkConfig
    from yardarm.chaos.proxy import LinkProxy, LinkState, LinkStats

# Each re-exported name and the submodule that defines it.
_SOURCES = {
    "ACTIONS": "config",
    "Action": "config",
    "ChaosConfig": "config",
    "FaultRequest": "config",
    "LinkConfig": "config",
    "LinkProxy": "proxy",
    "LinkState": "proxy",
    "LinkStats": "proxy",
}

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


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
