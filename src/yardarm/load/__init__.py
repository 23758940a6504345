"""Load generation against a yardarm gateway: `yardarm load`, and the same engine from Python.

    summary = await run_load(LoadConfig(url="http://127.0.0.1:8080", rate=200, duration_s=10))
    print(summary.to_json())

The mix (`mix.py`) places orders, reads them back and reads stock; the engine
(`engine.py`) runs an open loop (fixed schedule, latency from each scheduled start) or a
closed loop (fixed workers); `stats.py` keeps a bounded-memory histogram; the JSON
document's keys are documented in `summary.py`. Targets must be loopback unless
`allow_remote` is set.
"""

from yardarm.load.client import LoadSetupError
from yardarm.load.config import LoadConfig, is_loopback
from yardarm.load.engine import LoadProgress, ProgressCallback, run_load, run_load_sync
from yardarm.load.mix import KINDS, Kind, Mix, PlannedRequest, RequestPlanner, parse_mix
from yardarm.load.options import LoadOptionError, NoTargetError, build_config, parse_duration
from yardarm.load.stats import LatencyHistogram
from yardarm.load.summary import KindSummary, LatencySummary, LoadSummary

__all__ = [
    "KINDS",
    "Kind",
    "KindSummary",
    "LatencyHistogram",
    "LatencySummary",
    "LoadConfig",
    "LoadOptionError",
    "LoadProgress",
    "LoadSetupError",
    "LoadSummary",
    "Mix",
    "NoTargetError",
    "PlannedRequest",
    "ProgressCallback",
    "RequestPlanner",
    "build_config",
    "is_loopback",
    "parse_duration",
    "parse_mix",
    "run_load",
    "run_load_sync",
]
