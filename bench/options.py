"""What every benchmark is given, and the one error it raises.

`python -m bench` builds the Options from its command line and reports a BenchError as
a failed run, so a benchmark neither parses arguments nor prints its own failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class BenchError(Exception):
    """A benchmark cannot run, or its numbers cannot be trusted; the message says why."""


@dataclass(frozen=True)
class Options:
    """How long and how often to measure; `quick` trades trust for a short smoke run."""

    duration_s: int = 10
    warmup_s: int = 3
    runs: int = 3
    quick: bool = False
    profile: bool = False
    artifacts_dir: Path | None = None  # where extra files (profiles) go; None: keep none
