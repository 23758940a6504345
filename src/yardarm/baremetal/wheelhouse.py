"""The wheelhouse a bare-metal stack installs from: the `yardarm` distribution and all it
requires, as wheels for CPython 3.11 on manylinux x86_64 (what the control image gets),
so hosts install with `pip --no-index` and never reach a package index.

The workspace's wheels are built from the tree; the locked third-party wheels are
downloaded once into the image builds' cache (`.yardarm/images/wheels`) and shared with
them, under the same lock.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from yardarm.images.build import CACHE_DIR, Progress, _exclusive
from yardarm.images.specs import SERVICE_IMAGES
from yardarm.images.wheels import Wheelhouse

PACKAGE = "yardarm"


def gather(root: Path, destination: Path, progress: Progress) -> list[Path]:
    """Every wheel the `yardarm` package needs, in `destination` (created; wheels no
    longer needed are removed from it); the wheels, by name."""
    spec = next(spec for spec in SERVICE_IMAGES if spec.package == PACKAGE)
    cache = root / CACHE_DIR
    destination.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache, progress):
        house = Wheelhouse(root, cache)
        house.prepare([spec])
        wheels = sorted(house.wheels_for(spec), key=lambda path: path.name)
        wanted = {wheel.name for wheel in wheels}
        for stale in destination.glob("*.whl"):
            if stale.name not in wanted:
                stale.unlink()
        placed = []
        for wheel in wheels:
            target = destination / wheel.name
            if target.is_file() and target.read_bytes() == wheel.read_bytes():
                placed.append(target)
                continue
            target.unlink(missing_ok=True)
            # A hard link when it can: the next image build replaces the cached file
            # rather than writing into it.
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
            placed.append(target)
    return placed
