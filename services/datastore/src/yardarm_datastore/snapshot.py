"""Snapshot files: the whole state at one revision, written atomically.

The file holds one WAL-framed record, so a damaged snapshot is detected by its checksum
instead of being half-loaded. It is written to a temporary file, fsynced, renamed over the
old one and the directory fsynced: a crash leaves either the old or the new snapshot.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from yardarm_datastore.state import CorruptState
from yardarm_datastore.wal import encode, fsync_dir, scan

MAX_SNAPSHOT_BYTES = 2**32 - 1  # what the u32 length field can say


def write_snapshot(path: Path, doc: dict[str, Any]) -> None:
    frame = encode(doc, MAX_SNAPSHOT_BYTES)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(frame)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """The snapshot document, or None when there is none yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    records, end = scan(data, MAX_SNAPSHOT_BYTES)
    if len(records) != 1 or end != len(data):
        raise CorruptState(
            f"snapshot {path} is damaged (checksum or length mismatch); restore it from a "
            "backup or remove the data directory to start empty"
        )
    return records[0]
