"""From command-line strings to a LoadConfig, with errors that name the offending option."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from yardarm.load.config import LoadConfig
from yardarm.load.mix import parse_mix

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

OPTION_NAMES = {
    "url": "--url",
    "rate": "--rate",
    "concurrency": "--concurrency",
    "connections": "--connections",
    "max_in_flight": "--max-in-flight",
    "duration_s": "--duration",
    "max_requests": "--max-requests",
    "mix": "--mix",
    "timeout_s": "--timeout",
    "seed": "--seed",
}
# Used to check every other option before looking for a running stack to aim at.
_STAND_IN_URL = "http://127.0.0.1"


class LoadOptionError(ValueError):
    """An option is invalid; the message names it and says what is expected."""


class NoTargetError(LoadOptionError):
    """No --url was given and no local stack is running to aim at."""


def parse_duration(text: str) -> float:
    """`30s`, `500ms`, `2m`, `1h`, `1m30s` or a bare number of seconds -> seconds."""
    value = text.strip()
    try:
        if not value:
            raise ValueError(text)
        return _parse_units(value) if value[-1].isalpha() else float(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration; use e.g. 30s, 500ms, 2m, 1m30s or a number of seconds"
        ) from None


def _parse_units(value: str) -> float:
    position, total = 0, 0.0
    while position < len(value):
        match = _DURATION_PART.match(value, position)
        if match is None:
            raise ValueError(value)
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total


def build_config(
    *,
    url: str | None,
    default_url: Callable[[], str | None],
    rate: float | None = None,
    concurrency: int | None = None,
    connections: int | None = None,
    max_in_flight: int | None = None,
    duration: str = "30s",
    max_requests: int = 1_000_000,
    mix: str = "orders=20,reads=70,stock=10",
    timeout: str = "5s",
    seed: int | None = None,
    allow_remote: bool = False,
    ca_file: Path | None = None,
    default_ca_file: Callable[[], Path | None] = lambda: None,
) -> LoadConfig:
    """Validate every option first, then find the target (`default_url` when no --url)."""
    fields: dict[str, Any] = {
        "rate": rate,
        "concurrency": concurrency,
        "connections": connections,
        "max_in_flight": max_in_flight,
        "duration_s": _parsed("--duration", parse_duration, duration),
        "max_requests": max_requests,
        "mix": _parsed("--mix", parse_mix, mix),
        "timeout_s": _parsed("--timeout", parse_duration, timeout),
        "seed": seed,
        "allow_remote": allow_remote,
    }
    _validate({**fields, "url": url if url is not None else _STAND_IN_URL})
    target = url if url is not None else default_url()
    if target is None:
        raise NoTargetError("no local stack is running here and no --url was given")
    if ca_file is None and url is None:  # the local stack's own CA, when it runs TLS
        ca_file = default_ca_file()
    return _validate({**fields, "url": target, "ca_file": ca_file})


def _parsed(option: str, parse: Callable[[str], Any], text: str) -> Any:
    try:
        return parse(text)
    except ValueError as exc:
        raise LoadOptionError(f"{option}: {exc}") from None


def _validate(fields: dict[str, Any]) -> LoadConfig:
    try:
        return LoadConfig.model_validate(fields)
    except ValidationError as exc:
        raise LoadOptionError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line per problem, naming the option (`--rate: must be greater than 0, got -5`)."""
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        location = error["loc"]
        if location:
            option = OPTION_NAMES.get(str(location[0]), str(location[0]))
            message = message.replace("Input should be", "must be")
            lines.append(f"{option}: {message}, got {error['input']!r}")
        else:
            lines.append(_flag_names(message))
    return "; ".join(lines)


_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\")")


def _flag_names(message: str) -> str:
    """Model-level messages use field names; on the command line, say the options.

    Quoted parts are values the user gave (a URL may well contain "rate"): left alone.
    """
    parts = _QUOTED.split(message)
    for index in range(0, len(parts), 2):
        for field, option in OPTION_NAMES.items():
            parts[index] = re.sub(rf"\b{field}\b", option, parts[index])
    return "".join(parts)
