"""Command lines and one-time preparation for the stack's infrastructure servers.

Postgres refuses to run as root, so when we are root its data directory is owned by, and
its processes run as, an unprivileged system user (created on first use).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from yardarm import databases
from yardarm.local.binaries import nats_server_binary, postgres_bin_dir

POSTGRES_SYSTEM_USER = "yardarm-pg"


@dataclass(frozen=True)
class RunAs:
    """The identity a server process runs under (None fields: the current user)."""

    uid: int | None = None
    gid: int | None = None


def nats_command(*, port: int, monitor_port: int, store_dir: Path) -> list[str]:
    """nats-server with JetStream, listening on loopback only."""
    store_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(nats_server_binary()),
        "-js",
        "-sd",
        str(store_dir),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        str(monitor_port),
    ]


def postgres_run_as() -> RunAs:
    """Root must hand Postgres to an unprivileged user; anyone else runs it as themselves."""
    if os.geteuid() != 0:
        return RunAs()
    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


def _make_traversable(path: Path) -> None:
    """Let the Postgres user reach its data directory through every parent."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def prepare_postgres(data_dir: Path) -> RunAs:
    """initdb the cluster once (trust auth on loopback, UTF-8); returns who must run it."""
    run_as = postgres_run_as()
    data_dir.mkdir(parents=True, exist_ok=True)
    if run_as.uid is not None:
        _make_traversable(data_dir.parent)
        shutil.chown(data_dir, user=run_as.uid, group=run_as.gid)
    data_dir.chmod(0o700)
    if (data_dir / "PG_VERSION").exists():
        return run_as
    subprocess.run(
        [
            str(postgres_bin_dir() / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ],
        check=True,
        capture_output=True,
        user=run_as.uid,
        group=run_as.gid,
        cwd=data_dir,
    )
    return run_as


def postgres_command(*, data_dir: Path, port: int) -> list[str]:
    """postgres on loopback TCP only (no unix socket, so path lengths never matter)."""
    return [
        str(postgres_bin_dir() / "postgres"),
        "-D",
        str(data_dir),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        "",
        "-c",
        "max_connections=200",
        "-c",
        "shared_buffers=64MB",
        "-c",
        "fsync=on",
    ]


def postgres_dsn(port: int, database: str = "postgres") -> str:
    """Connection string for the local cluster."""
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


async def create_databases(port: int, names: list[str]) -> None:
    """Create each database unless it exists (idempotent; safe to run on every start)."""
    await databases.create_databases(postgres_dsn(port), names)
