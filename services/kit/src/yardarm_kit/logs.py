"""JSON log lines on stderr, each carrying the current trace and span ids."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from yardarm_kit.settings import ServiceSettings
from yardarm_kit.telemetry import current_trace_ids

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra=` fields are kept as top-level keys."""

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__()
        self._static = {
            "service": settings.service,
            "version": settings.version,
            "track": settings.track,
            "instance": settings.instance,
        }

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = current_trace_ids()
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self._static,
            "trace_id": trace_id,
            "span_id": span_id,
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(settings: ServiceSettings) -> logging.Logger:
    """Route the root logger to JSON on stderr; returns the service's logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(settings))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return logging.getLogger(f"yardarm.{settings.service}")
