"""Feature flags (and fault injection) through OpenFeature's flagd provider in file mode.

The flag file is flagd's JSON format, the convention the OpenTelemetry demo uses; the
provider re-reads it when it changes, so faults can be switched on a running stack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import FeatureProvider, ProviderStatus

from yardarm_kit.settings import ServiceSettings

log = logging.getLogger("yardarm.flags")


CACHE_TTL_S = 0.5
Kind = Literal["bool", "float", "int", "str"]


class Flags:
    """Typed flag lookups evaluated with this instance's identity as context.

    The context is the same for every evaluation in a process, so a value is cached
    for CACHE_TTL_S: middleware asks on every request, and one OpenFeature evaluation
    costs tens of microseconds. The flag file is re-read by the provider within
    seconds anyway, so the cache adds at most half a second to a change.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self._cache: dict[tuple[Kind, str, Any], tuple[float, Any]] = {}
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

    def _value(self, kind: Kind, key: str, default: Any) -> Any:
        """The flag's value, evaluated at most once per CACHE_TTL_S for each (kind, key)."""
        client = self._client
        if client is None:
            return default
        now = time.monotonic()
        entry = self._cache.get((kind, key, default))
        if entry is not None and entry[0] > now:
            return entry[1]
        methods: dict[Kind, Callable[..., Any]] = {
            "bool": client.get_boolean_value,
            "float": client.get_float_value,
            "int": client.get_integer_value,
            "str": client.get_string_value,
        }
        value = methods[kind](key, default, self._context)
        self._cache[(kind, key, default)] = (now + CACHE_TTL_S, value)
        return value

    def bool(self, key: str, default: bool) -> bool:
        return bool(self._value("bool", key, default))

    def float(self, key: str, default: float) -> float:
        return float(self._value("float", key, default))

    def int(self, key: str, default: int) -> int:
        return int(self._value("int", key, default))

    def str(self, key: str, default: str) -> str:
        return str(self._value("str", key, default))
