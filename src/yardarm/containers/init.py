"""The one-shot init of a container stack, run from the control image.

`yardarm init credentials` issues the stack's credentials into its home volume before
anything else starts (the same files `yardarm up` issues locally), with Postgres'
password beside them. `yardarm init data` then waits for Postgres and the datastore,
creates the services' databases and seeds the demo catalog. Both are idempotent: a
restarted stack keeps its tokens, its databases and the stock orders consumed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from yardarm.catalog import seed_catalog
from yardarm.containers.target import PGPASS_FILE, POSTGRES_PASSWORD_FILE, POSTGRES_USER
from yardarm.credentials import ensure_credentials
from yardarm.databases import create_databases


class InitError(Exception):
    """A step of the init did not succeed before its deadline."""


def _write(path: Path, text: str, mode: int) -> None:
    """Write a file in one rename, with its mode set before anyone can read it."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def issue_credentials(home: Path) -> list[Path]:
    """Every credential the stack needs, kept where they exist; the files it holds.

    Postgres' password file is world-readable (0644, in a 0755 folder, the home 0711)
    because the Postgres server reads it as its own user; only the stack's containers mount the
    volume. The services read it from a pgpass file, 0600 as libpq and asyncpg require.
    """
    from yardarm_kit.access import new_token

    creds = ensure_credentials(home)
    # Postgres' user passes through the home (an image's 0700 volume) to its own file;
    # the credentials folder stays 0700.
    home.chmod(0o711)
    password_file = home / POSTGRES_PASSWORD_FILE
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.parent.chmod(0o755)
    password = password_file.read_text().strip() if password_file.is_file() else ""
    if not password:
        password = new_token()
        _write(password_file, password + "\n", 0o644)
    _write(home / PGPASS_FILE, f"*:*:*:{POSTGRES_USER}:{password}\n", 0o600)
    tokens = [creds.token_file(principal) for principal in ("admin", "orders", "gateway")]
    return [*tokens, creds.access_file, creds.peer_secret_file, password_file, home / PGPASS_FILE]


def _until(deadline: float, what: str, attempt: Callable[[], object]) -> object:
    """Call `attempt` until it returns without raising, or fail at `deadline`."""
    last: Exception | None = None
    while True:
        try:
            return attempt()
        except Exception as exc:  # any failure is retried; the last one is reported
            last = exc
        if time.monotonic() >= deadline:
            raise InitError(f"{what} did not succeed in time; the last error: {last}") from last
        time.sleep(1.0)


def prepare_data(
    *,
    postgres_dsn: str,
    databases: Sequence[str],
    datastore_urls: Sequence[str],
    admin_token: str,
    timeout_s: float,
) -> int:
    """Create the databases and seed the catalog, each retried until `timeout_s` from
    now (Postgres and the datastore's first election may still be under way); the
    number of SKUs newly seeded."""
    deadline = time.monotonic() + timeout_s

    def create() -> None:
        asyncio.run(create_databases(postgres_dsn, databases))

    _until(deadline, "creating the databases", create)
    return seed_until(datastore_urls, admin_token, deadline)


def seed_until(datastore_urls: Sequence[str], admin_token: str, deadline: float) -> int:
    """Seed the catalog, retried until `deadline` (monotonic) while the datastore elects
    its leader; the number of SKUs newly seeded."""
    turn = itertools.count()

    def seed() -> int:
        # Round-robin: a replica that cannot reach the leader yet is not asked twice in a row.
        url = datastore_urls[next(turn) % len(datastore_urls)]
        return seed_catalog(url, admin_token)

    created = _until(deadline, "seeding the catalog", seed)
    assert isinstance(created, int)
    return created
