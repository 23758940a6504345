"""Prometheus recording rules and alerts as code, with their promtool tests.

The SLO table (`slo.py`) gives each service an availability and a latency SLI; the
error-ratio recording rules and the multiwindow multi-burn-rate alerts are derived from
it, the RED rules per service, version and track (`red.py`) from the same events. The
platform's own alerts are in `alerts.py`; `promtool_tests.py` writes promtool tests that
fire and do not fire every alert. `render_files()` gives the files committed under
`observability/prometheus/`.
"""

from yardarm.observability.rules.render import alert_names, recording_rules, render_files

__all__ = ["alert_names", "recording_rules", "render_files"]
