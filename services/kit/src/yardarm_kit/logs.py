"""JSON log lines on stderr, each carrying the current trace and span ids, and the same
records over OTLP when an endpoint is configured.

Stderr is the local default (the runtime writes it to `<STATE_DIR>/logs/<instance>.log`).
With `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` set, every
record is also exported as an OTLP log record carrying the span context it was logged
in and the tracer provider's resource (service, version, instance, track), which Loki
turns into the `service_name` stream label and per-line structured metadata
(`trace_id`, `span_id`, `severity_text`). The OTLP SDK is imported only then.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry._logs import SeverityNumber

from yardarm_kit.settings import ServiceSettings
from yardarm_kit.telemetry import current_trace_ids

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.util.types import AttributeValue

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


def otlp_logs_configured() -> bool:
    """Whether the standard environment names an OTLP endpoint for logs."""
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    )


def setup_log_export(resource: Resource) -> LoggerProvider | None:
    """Also export every record of the root logger over OTLP/HTTP, when configured;
    returns the provider to flush and shut down, or None (files only)."""
    if not otlp_logs_configured():
        return None
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    logging.getLogger().addHandler(OtlpLogHandler(provider))
    return provider


# Python's levels on OTel's severity numbers (the first of each range).
_SEVERITIES = (
    (logging.CRITICAL, SeverityNumber.FATAL),
    (logging.ERROR, SeverityNumber.ERROR),
    (logging.WARNING, SeverityNumber.WARN),
    (logging.INFO, SeverityNumber.INFO),
    (logging.DEBUG, SeverityNumber.DEBUG),
)
_INT64 = 2**63


class OtlpLogHandler(logging.Handler):
    """Emits each record as an OTLP log record into `provider`.

    The SDK's `LoggingHandler` is deprecated (it warns on construction) and renames
    Python's levels (`CRITICAL` becomes `FATAL`, `WARNING` `WARN`); this one keeps the
    level name as the severity text, as the JSON lines and the dashboards' error
    queries spell it, and the `extra=` fields as attributes, as the JSON lines have
    them. The SDK's own records, and any logged while it exports (its retries and
    failures), stay on stderr: exported, they would feed the exporter its own complaints.
    """

    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__()
        self._provider = provider

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("opentelemetry") or otel_context.get_value(
            otel_context._SUPPRESS_INSTRUMENTATION_KEY
        ):
            return
        try:
            exception = record.exc_info[1] if record.exc_info else None
            self._provider.get_logger(record.name).emit(
                timestamp=int(record.created * 1e9),
                observed_timestamp=time.time_ns(),
                context=otel_context.get_current(),
                severity_number=_severity(record.levelno),
                severity_text=record.levelname,
                body=record.getMessage(),
                attributes=_attributes(record),
                exception=exception,
            )
        except Exception:
            self.handleError(record)


def _severity(levelno: int) -> SeverityNumber:
    for floor, severity in _SEVERITIES:
        if levelno >= floor:
            return severity
    return SeverityNumber.TRACE


def _attributes(record: logging.LogRecord) -> dict[str, AttributeValue]:
    """The record's `extra=` fields as OTLP attribute values (others as JSON text)."""
    attributes: dict[str, AttributeValue] = {}
    for key, value in vars(record).items():
        if key in _RESERVED or key.startswith("_") or value is None:
            continue
        if isinstance(value, bool | str | float) or (
            isinstance(value, int) and -_INT64 <= value < _INT64
        ):
            attributes[key] = value
        else:
            attributes[key] = json.dumps(value, default=str)
    return attributes
