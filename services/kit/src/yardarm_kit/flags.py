"""Feature flags (and fault injection) through OpenFeature's flagd provider in file mode.

The flag file is flagd's JSON format, the convention the OpenTelemetry demo uses; the
provider re-reads it when it changes, so faults can be switched on a running stack.
"""

from __future__ import annotations

import asyncio
import logging
import time

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import FeatureProvider, ProviderStatus

from yardarm_kit.settings import ServiceSettings

log = logging.getLogger("yardarm.flags")


class Flags:
    """Typed flag lookups evaluated with this instance's identity as context."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._client: OpenFeatureClient | None = None
        self._provider: FeatureProvider | None = None
        self._context = EvaluationContext(
            targeting_key=settings.instance,
            attributes={
                "service": settings.service,
                "instance": settings.instance,
                "version": settings.version,
                "track": settings.track,
            },
        )
        if settings.flags_file is not None:
            from openfeature.contrib.provider.flagd import FlagdProvider
            from openfeature.contrib.provider.flagd.config import ResolverType

            provider = FlagdProvider(
                resolver_type=ResolverType.FILE,
                offline_flag_source_path=str(settings.flags_file),
            )
            self._provider = provider
            domain = f"yardarm:{settings.instance}:{id(self)}"
            api.set_provider(provider, domain=domain)
            self._client = api.get_client(domain)

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until the provider has loaded the file; False if it has not."""
        if self._client is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._client.get_provider_status() == ProviderStatus.READY:
                return True
            await asyncio.sleep(0.05)
        log.warning("flag provider not ready after %.1fs; using defaults", timeout)
        return False

    def close(self) -> None:
        """Stop the provider's file watcher thread."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
        self._client = None

    def bool(self, key: str, default: bool) -> bool:
        if self._client is None:
            return default
        return self._client.get_boolean_value(key, default, self._context)

    def float(self, key: str, default: float) -> float:
        if self._client is None:
            return default
        return float(self._client.get_float_value(key, default, self._context))

    def int(self, key: str, default: int) -> int:
        if self._client is None:
            return default
        return self._client.get_integer_value(key, default, self._context)

    def str(self, key: str, default: str) -> str:
        if self._client is None:
            return default
        return self._client.get_string_value(key, default, self._context)
