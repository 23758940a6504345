"""Every generated observability file, written or compared in one place.

Each generator module has `render_files()`: path under `observability/` -> exact text.
`yardarm observability` writes them all; `--check` (and the tests) compare the
committed tree with what the code generates now, so the compose file and the chart
(which mount these files) never run something the code no longer says.
"""

from __future__ import annotations

import importlib
from pathlib import Path

OUT_DIR = "observability"
GENERATORS = (
    "yardarm.observability.dashboards",
    "yardarm.observability.rules",
    "yardarm.observability.collector",
    "yardarm.observability.grafana",
    "yardarm.observability.backends",
)


def rendered() -> dict[str, str]:
    """Every file the generators produce, by path relative to `observability/`."""
    files: dict[str, str] = {}
    for name in GENERATORS:
        module = importlib.import_module(name)
        for path, text in module.render_files().items():
            if path in files:
                raise ValueError(f"{name} renders {path}, which another generator renders")
            files[path] = text
    return files


def write(root: Path) -> list[Path]:
    """Write every file under `root/observability`, removing none; the paths written."""
    written = []
    for relative, text in sorted(rendered().items()):
        path = root / OUT_DIR / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def stale(root: Path) -> list[Path]:
    """Files that differ from what the code renders now, or are missing."""
    return [
        root / OUT_DIR / relative
        for relative, text in sorted(rendered().items())
        if not (root / OUT_DIR / relative).is_file()
        or (root / OUT_DIR / relative).read_text() != text
    ]
