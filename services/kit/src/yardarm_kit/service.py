"""One service process: telemetry, metrics, flags and the HTTP app, wired once.

Services create a `Service`, add routes to `service.app`, register readiness checks and
lifecycle hooks, then call `run()`. Nothing else in a service sets up exporters,
loggers or middleware. Inside a running loop (tests, embedding) use `await start()` /
`await stop()`, or `await serve()` and end it with `request_stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from yardarm_kit import deadline
from yardarm_kit.flags import Flags
from yardarm_kit.httpclient import HttpClient
from yardarm_kit.logs import setup_logging
from yardarm_kit.metrics import Metrics
from yardarm_kit.problem import Problem
from yardarm_kit.settings import ServiceSettings
from yardarm_kit.telemetry import setup_tracing

Hook = Callable[[], Awaitable[None]]
Check = Callable[[], Awaitable[bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_BODY_BYTES = 1024 * 1024
READINESS_TIMEOUT_S = 2.0
SHUTDOWN_GRACE_S = 10.0


ROUTE_KEY = "yardarm.route"


def route_of(request: web.Request) -> str:
    """The route template (never the raw path, which would explode cardinality).

    A handler that routes further itself (the gateway's catch-all) names the route it
    chose with `request[ROUTE_KEY]`.
    """
    named = request.get(ROUTE_KEY)
    if isinstance(named, str):
        return named
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else str(resource.canonical)


GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze what start-up allocated and collect the young generation less often.

    Measured on the gateway under load with CPython's defaults: a full collection
    about every second, each pausing the loop for up to ~50 ms (the p99), and ~9% of
    the CPU in the collector, mostly re-scanning long-lived start-up objects. Frozen
    objects are never scanned again; a larger first threshold makes collections rare
    and cheap. Only for a service's own process (tests embed services in pytest).
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class Service:
    """The runtime of one service instance."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.log = setup_logging(settings)
        self.tracer_provider = setup_tracing(settings)
        self.tracer = self.tracer_provider.get_tracer(
            f"yardarm.{settings.service}", settings.version
        )
        self.metrics = Metrics(settings)
        self.flags = Flags(settings)
        self._checks: dict[str, Check] = {}
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._stopped = False
        # Listener options a service may set before start(): TLS, SO_REUSEPORT (several
        # processes sharing one port) and aiohttp request-parser limits.
        self.ssl_context: ssl.SSLContext | None = None
        self.reuse_port = False
        self.server_options: dict[str, Any] = {}
        self._own_process = False
        self.app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[self._trace_mw, self._metrics_mw, self._problem_mw, self._deadline_mw,
                         self._fault_mw],
        )  # fmt: skip
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self._metrics)

    # -- registration -------------------------------------------------------------

    def add_readiness_check(self, name: str, check: Check) -> None:
        """`/readyz` answers 200 only while every check returns True."""
        self._checks[name] = check

    def on_startup(self, hook: Hook) -> None:
        """Runs before the listener opens, so readiness is honest."""
        self._startup.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Runs after the listener stopped and in-flight requests finished."""
        self._shutdown.append(hook)

    def http_client(self, upstream: str, *, traced: bool = True) -> HttpClient:
        """A client for one named upstream sharing this process's connection pool.

        Safe to call before the loop runs: the pool is opened at startup (or on first use)
        and closed at shutdown. `traced=False` suits background polling, whose spans
        would only flood the trace store.
        """
        tracer = self.tracer if traced else trace.NoOpTracer()
        return HttpClient(self._client_session, upstream, tracer, self.metrics.http_client_duration)

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=64),
                auto_decompress=False,
            )
        return self._session

    # -- middleware ---------------------------------------------------------------

    @web.middleware
    async def _trace_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPERATIONAL_PATHS:
            return await handler(request)
        ctx = propagate.extract(dict(request.headers))
        route = route_of(request)
        token = otel_context.attach(ctx)
        try:
            with self.tracer.start_as_current_span(
                f"{request.method} {route}",
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": request.method,
                    "http.route": route,
                    "url.path": request.path,
                },
            ) as span:
                response = await handler(request)
                chosen = route_of(request)
                if chosen != route:
                    span.update_name(f"{request.method} {chosen}")
                    span.set_attribute("http.route", chosen)
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                return response
        finally:
            otel_context.detach(token)

    @web.middleware
    async def _metrics_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            self.metrics.http_server_duration.observe(
                time.perf_counter() - started,
                http_route=route_of(request),
                http_request_method=request.method,
                http_response_status_code=str(status),
            )

    @web.middleware
    async def _problem_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return problem.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
            if exc.status == 404:
                detail = f"no route for {request.method} {request.path}"
            elif exc.status == 405:
                detail = f"{request.method} is not allowed on {request.path}"
            elif exc.status == 413:
                detail = f"the request body exceeds {request.app._client_max_size} bytes"
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return Problem(exc.status, exc.reason, detail, headers=headers).response()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("unhandled error in %s %s", request.method, request.path)
            span = trace.get_current_span()
            span.set_status(Status(StatusCode.ERROR, "unhandled exception"))
            return Problem(
                500, "Internal Server Error", "the server failed; see its logs"
            ).response()

    @web.middleware
    async def _deadline_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        budget = deadline.parse_header(request.headers.get(deadline.TIMEOUT_HEADER))
        if budget is None:
            return await handler(request)
        if budget <= 0:
            raise Problem(504, "Deadline exceeded", "the caller's deadline had already passed")
        token = deadline.set_deadline(budget)
        scope = asyncio.timeout(budget)
        try:
            async with scope:
                return await handler(request)
        except TimeoutError:
            if not scope.expired():  # a TimeoutError of the handler's own making
                raise
            raise Problem(
                504, "Deadline exceeded", f"no answer within the caller's {budget:.3f}s deadline"
            ) from None
        finally:
            deadline.reset_deadline(token)

    @web.middleware
    async def _fault_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPERATIONAL_PATHS:
            return await handler(request)
        latency_ms = self.flags.int("fault.latency-ms", 0)
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000.0)
        error_rate = self.flags.float("fault.error-rate", 0.0)
        if error_rate > 0 and random.random() < error_rate:
            raise Problem(500, "Injected fault", "fault.error-rate flag is on for this instance")
        return await handler(request)

    # -- operational endpoints ----------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "instance": self.settings.instance})

    async def readyz(self, request: web.Request) -> web.Response:
        names = list(self._checks)

        async def run(check: Check) -> bool:
            try:
                async with asyncio.timeout(READINESS_TIMEOUT_S):
                    return bool(await check())
            except Exception:
                return False

        results = await asyncio.gather(*(run(self._checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        if all(results):
            return web.json_response({"status": "ready", "checks": checks})
        failing = [name for name, ok in checks.items() if not ok]
        raise Problem(
            503,
            "Not ready",
            f"failing checks: {', '.join(failing)}",
            extra={"checks": checks},
            headers={"Retry-After": "1"},
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Run startup hooks, then open the listener (for tests and embedding).

        Pair with `stop()`; or use `serve()` with `request_stop()`.
        """
        await self.flags.wait_ready()
        self._client_session()
        for hook in self._startup:
            await hook()
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S, **self.server_options
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.settings.host,
            self.settings.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            ssl_context=self.ssl_context,
        )
        await site.start()
        self.log.info(
            "listening on %s:%d", self.settings.host, self.settings.port,
            extra={"event": "started"},
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, run shutdown hooks, flush spans.

        Idempotent: a second call does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for hook in self._shutdown:
            try:
                async with asyncio.timeout(SHUTDOWN_GRACE_S):
                    await hook()
            except Exception:
                self.log.exception("shutdown hook failed")
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.flags.close()
        self.tracer_provider.force_flush(timeout_millis=5000)

    def request_stop(self) -> None:
        """Make `serve()` return (signal handlers call this)."""
        self._stopping.set()

    async def serve(self) -> None:
        """Start, wait for `request_stop()` (SIGTERM/SIGINT under `run`), then stop."""
        await self.start()
        if self._own_process:
            tune_gc()
        try:
            await self._stopping.wait()
        finally:
            self.log.info("stopping", extra={"event": "stopping"})
            await self.stop()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT on a uvloop event loop (the process's main)."""
        import uvloop

        self._own_process = True

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop)
            await self.serve()

        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(main())
        self.tracer_provider.shutdown()
