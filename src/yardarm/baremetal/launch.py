"""`python -m yardarm.baremetal.launch FILE`: start one instance from its launch document.

The roles write each instance's document (`{"service": "orders", "env": {...}}`, the
settings `instance_settings` gives it) and have supervisord or systemd run this module
with it; it replaces itself with the service (`python -m yardarm_<service>`) in that
environment. A process manager's own environment syntax would have to quote the
settings' JSON values; a document read by the same Python needs no quoting at all.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from yardarm.model import SERVICE_NAMES


class LaunchError(ValueError):
    """The launch document cannot be used; the message says why."""


def read_document(path: Path) -> tuple[str, dict[str, str]]:
    """The service and its settings from a launch document."""
    try:
        document: Any = json.loads(path.read_text())
    except OSError as exc:
        raise LaunchError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:  # not UTF-8, or not JSON
        raise LaunchError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise LaunchError(f"{path} must hold an object with `service` and `env`")
    service, env = document.get("service"), document.get("env")
    if service not in SERVICE_NAMES:
        raise LaunchError(f"{path}: service must be one of {', '.join(SERVICE_NAMES)}")
    if not isinstance(env, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in env.items()
    ):
        raise LaunchError(f"{path}: env must map names to strings")
    for key, value in env.items():
        # What execve cannot pass: it would fail after the document was accepted.
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise LaunchError(f"{path}: env {key!r}: names must be non-empty without '=' or NUL")
    return str(service), dict(env)


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m yardarm.baremetal.launch FILE", file=sys.stderr)
        raise SystemExit(64)
    try:
        service, env = read_document(Path(args[0]))
    except LaunchError as exc:
        print(f"yardarm launch: {exc}", file=sys.stderr)
        raise SystemExit(78) from exc  # EX_CONFIG: restarting will not help
    argv_out = [sys.executable, "-m", f"yardarm_{service}"]
    os.execve(sys.executable, argv_out, {**os.environ, **env})


if __name__ == "__main__":
    main()
