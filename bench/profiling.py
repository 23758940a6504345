"""Profiles with py-spy: how to run it here, and a plain-text report of where time went."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter


def py_spy_command() -> list[str] | None:
    """How to run py-spy here: installed, or through uvx (fetched once, before sampling)."""
    if shutil.which("py-spy"):
        return ["py-spy"]
    if shutil.which("uvx"):
        subprocess.run(["uvx", "py-spy", "--version"], capture_output=True, timeout=180)
        return ["uvx", "py-spy"]
    return None


def profile_report(folded: str, title: str, top: int = 25) -> str:
    """Self time per package and per function, and inclusive time, from folded stacks.

    Reads `py-spy record --format raw --full-filenames` output: one `frame;frame;... N`
    line per distinct stack.
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(frame) for frame in stack.split(";")]
        total += count
        self_time[frames[-1]] += count
        by_package[_package_of(stack.split(";")[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return f"{title}\n\npy-spy recorded no samples\n"

    def table(counter: Counter[str]) -> list[str]:
        return [f"{n / total * 100:6.1f}%  {n:6d}  {name}" for name, n in counter.most_common(top)]

    return "\n".join(
        [
            title,
            f"{total} samples",
            "",
            "self time by package:",
            *table(by_package),
            "",
            f"top {top} functions by self time:",
            *table(self_time),
            "",
            f"top {top} functions by inclusive time:",
            *table(inclusive),
            "",
        ]
    )


_PATH_MARKERS = ("site-packages/", "/src/", "/lib/python3.11/")
_NAMESPACE_PACKAGES = frozenset({"opentelemetry", "google"})


def _location(frame: str) -> str:
    start, end = frame.rfind(" ("), frame.rfind(")")
    return frame[start + 2 : end] if 0 <= start < end else ""


def _short_frame(frame: str) -> str:
    """`fn (/venv/lib/.../site-packages/aiohttp/x.py:12)` -> `fn (aiohttp/x.py:12)`."""
    location = _location(frame)
    short = location
    for marker in _PATH_MARKERS:
        if marker in short:
            short = short.rsplit(marker, 1)[1]
            break
    return frame.replace(location, short) if location else frame


def _package_of(frame: str) -> str:
    """The distribution a frame's code belongs to, or "stdlib (module)" for the stdlib."""
    path = _location(frame).rsplit(":", 1)[0]
    if "site-packages/" in path or "/src/" in path:
        marker = "site-packages/" if "site-packages/" in path else "/src/"
        parts = path.rsplit(marker, 1)[1].split("/")
        depth = 2 if parts[0] in _NAMESPACE_PACKAGES and len(parts) > 2 else 1
        return ".".join(parts[:depth]).removesuffix(".py")
    if "/lib/python3" in path or path.startswith("<frozen"):
        module = path.rsplit("/lib/python3.11/", 1)[-1].split("/")[0].removesuffix(".py")
        return f"stdlib ({module.removeprefix('<frozen ').removesuffix('>')})"
    return path or "unknown"
