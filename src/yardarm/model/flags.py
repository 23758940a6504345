"""Feature flags in flagd's format: the defaults, their checks, and a version's overrides.

A version of a service may pin flags to one of their declared variants (a release that
injects errors is the same code with `fault.error-rate` pinned to `high`); the flags an
instance reads are the stack's flags with its version's pins as default variants.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any


def default_flags() -> dict[str, Any]:
    """The generic fault flags, defined and off (flagd format): HTTP errors and latency
    (the kit), a queue consumer's failed deliveries (fulfillment)."""
    return {
        "fault.error-rate": {
            "state": "ENABLED",
            "variants": {"off": 0.0, "some": 0.05, "low": 0.1, "high": 0.5, "all": 1.0},
            "defaultVariant": "off",
        },
        "fault.consumer-error-rate": {
            "state": "ENABLED",
            "variants": {"off": 0.0, "some": 0.05, "low": 0.1, "high": 0.5, "all": 1.0},
            "defaultVariant": "off",
        },
        "fault.latency-ms": {
            "state": "ENABLED",
            "variants": {"off": 0, "small": 100, "large": 1000},
            "defaultVariant": "off",
        },
    }


def check_flag(key: str, flag: Any) -> None:
    """The parts of a flagd flag definition the services rely on."""
    if not isinstance(flag, dict):
        raise ValueError(f"flag {key!r} must be a mapping (got {type(flag).__name__})")
    if flag.get("state") not in ("ENABLED", "DISABLED"):
        raise ValueError(f"flag {key!r}: state must be ENABLED or DISABLED")
    variants = flag.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"flag {key!r}: variants must be a non-empty mapping")
    default = flag.get("defaultVariant")
    if default not in variants:
        raise ValueError(
            f"flag {key!r}: defaultVariant must name one of {sorted(variants)} (got {default!r})"
        )


def read_flags_file(path: Path) -> dict[str, Any]:
    """The "flags" object of a flagd JSON file; ValueError says what is wrong with it."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    flags = document.get("flags") if isinstance(document, dict) else None
    if not isinstance(flags, dict):
        raise ValueError(f'{path} is not a flagd file: it needs a top-level "flags" object')
    for key, flag in flags.items():
        check_flag(key, flag)
    return flags


def pin_problem(flags: dict[str, Any], key: str, variant: str) -> str | None:
    """Why pinning flag `key` to `variant` is impossible, or None when it is fine."""
    flag = flags.get(key)
    if flag is None:
        return f"unknown flag {key!r} (defined: {', '.join(sorted(flags)) or 'none'})"
    variants = flag.get("variants", {})
    if variant not in variants:
        return f"flag {key!r} has no variant {variant!r} (variants: {', '.join(variants)})"
    return None


def pinned(flags: dict[str, Any], pins: dict[str, str]) -> dict[str, Any]:
    """`flags` with each pinned flag enabled and defaulting to its pinned variant."""
    if not pins:
        return flags
    out = copy.deepcopy(flags)
    for key, variant in pins.items():
        out[key]["state"] = "ENABLED"
        out[key]["defaultVariant"] = variant
    return out
