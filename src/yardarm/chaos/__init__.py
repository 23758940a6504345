"""Fault injection on a local stack: link proxies between instances, and a controller.

`python -m yardarm.chaos --config <home>/chaos.json` runs one stack's controller; the
`yardarm chaos` commands drive it. This package's root imports nothing until a name is
asked for (PEP 562): every CLI command imports `yardarm.chaos.commands` through it, and
`yardarm --help` should not pay for pydantic models it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    """Import a re-exported name's submodule when the name is first asked for."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value
    return value
