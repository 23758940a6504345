"""One service process: telemetry, metrics, flags and the HTTP app, wired once.

Services create a `Service`, add routes to `service.app`, register readiness checks and
lifecycle hooks, then call `run()`. Nothing else in a service sets up exporters,
loggers or middleware. Inside a running loop (tests, embedding) use `await start()` /
`await stop()`, or `await serve()` and end it with `request_stop()`.

Stopping (SIGTERM, SIGINT, `request_stop()`) drains as Kubernetes and Envoy expect:
readiness fails first while the listeners keep serving for `drain_delay_s`, then the
listeners close (a new connection is refused), requests in flight get `drain_timeout_s`
to finish, the shutdown hooks run, spans are flushed, and `run()` returns (exit 0).
Closing refuses nothing a client already sent (`_leave_port`, `_settle`), and a
listener sharing its port (SO_REUSEPORT) leaves it as the drain begins: replicas of one
port are restarted one at a time without a failed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import random
import re
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

import aiohttp
from aiohttp import typedefs, web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel

from yardarm_kit import deadline, tls
from yardarm_kit.flags import Flags
from yardarm_kit.http_server import AppRunner
from yardarm_kit.httpclient import HttpClient
from yardarm_kit.logs import setup_log_export, setup_logging
from yardarm_kit.metrics import Metrics
from yardarm_kit.openapi import ApiSpec, Header, Reply
from yardarm_kit.problem import Problem
from yardarm_kit.settings import ServiceSettings
from yardarm_kit.telemetry import setup_tracing

Hook = Callable[[], Awaitable[None]]
Check = Callable[[], Awaitable[bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
MAX_BODY_BYTES = 1024 * 1024
READINESS_TIMEOUT_S = 2.0
SHUTDOWN_GRACE_S = 10.0  # each shutdown hook's bound
LISTEN_BACKLOG = 128
SETTLE_POLL_S = 0.01  # how often stopping looks whether every connection has settled
# How long stopping waits for the first request of a connection that has sent nothing
# yet (one that landed as its listener closed sends it within a round trip or two; a
# preconnecting browser may never send one).
FIRST_REQUEST_S = 2.0
# The status recorded for a request whose client went away before it was answered
# (nginx's convention): not the server's failure, and no answer can reach anyone.
CLIENT_CLOSED = 499
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


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


def check_target(raw_target: str) -> None:
    """400 for a request target whose percent-escapes are broken, whose escaped bytes
    are not UTF-8, or that carries NUL: yarl would keep such text literally (`%zz`,
    `%ff`), so `/kv/a%zz` and `/kv/a%25zz` would name one key."""
    if "%" not in raw_target:
        return
    if _BAD_ESCAPE.search(raw_target):
        raise Problem(400, "Invalid URL", "a '%' in the URL is not followed by two hex digits")
    try:
        decoded = unquote_to_bytes(raw_target).decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "Invalid URL", "the URL's percent-escapes are not UTF-8") from None
    if "\x00" in decoded:
        raise Problem(400, "Invalid URL", "the URL contains an escaped NUL (%00)")


def http_error_problem(
    request: web.Request, exc: web.HTTPException, not_found: str | None = None
) -> web.Response:
    """aiohttp's own 4xx (no route, method not allowed, body too large) as a problem;
    `not_found` replaces the 404's detail."""
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
    if exc.status == 404:
        detail = not_found or f"no route for {request.method} {request.path}"
    elif exc.status == 405:
        detail = f"{request.method} is not allowed on {request.path}"
    elif exc.status == 413:
        detail = f"the request body exceeds {request.app._client_max_size} bytes"
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return Problem(exc.status, exc.reason, detail, headers=headers).response()


def problem_middleware(
    log: logging.Logger, *, not_found: Callable[[web.Request], str] | None = None
) -> typedefs.Middleware:
    """Every error as problem+json (a Service's, and any other app a service runs): the
    URL check first, a `Problem` as raised, aiohttp's own 4xx (`not_found` names a 404's
    detail), a client gone mid-request as 499, anything else as a logged 500."""

    @web.middleware
    async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            check_target(request.raw_path)
            return await handler(request)
        except Problem as problem:
            return problem.response()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            # The client went away mid-request (often mid-body): nobody is left to answer.
            if request.transport is not None and not request.transport.is_closing():
                raise
            log.info(
                "client closed %s %s before it was answered", request.method, request.path,
                extra={"event": "client_closed"},
            )  # fmt: skip
            return web.Response(status=CLIENT_CLOSED, reason="Client Closed Request")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http_error_problem(
                request, exc, None if not_found is None else not_found(request)
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            span = trace.get_current_span()
            span.set_status(Status(StatusCode.ERROR, "unhandled exception"))
            return Problem(
                500, "Internal Server Error", "the server failed; see its logs"
            ).response()

    return problems


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


@dataclass
class _Listening:
    """One open port of the process: aiohttp's runner and the listening server the kit
    owns (so that closing can take over what the kernel queued on it)."""

    runner: web.AppRunner
    server: asyncio.Server
    shared: bool  # SO_REUSEPORT: other processes listen on the port too
    left: bool = False

    def leave(self) -> list[socket.socket]:
        """Close the listener once; the connections that were queued on it."""
        if self.left:
            return []
        self.left = True
        return _leave_port(self.server)


def _leave_port(server: asyncio.Server) -> list[socket.socket]:
    """Close `server`'s listening sockets; the connections the kernel had queued on them.

    Closing a listener resets every connection queued on it that the process has not
    accepted yet: with SO_REUSEPORT the kernel keeps sending a share of new connections
    to each listener of the port until the moment it closes, so a replica leaving under
    load would refuse some (unless `net.ipv4.tcp_migrate_req` is 1: then Linux moves
    them to another listener of the port, which an unprivileged process cannot set). A
    duplicate of each socket keeps it listening while the server's own closes; what is
    queued is accepted from it, then it closes at once, so only a handshake completing
    in the microseconds between the last accept and the close can be lost.
    """
    copies = [socket.socket(fileno=os.dup(sock.fileno())) for sock in server.sockets]
    server.close()
    taken: list[socket.socket] = []
    for listener in copies:
        with listener:
            listener.setblocking(False)
            while True:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionAbortedError:  # reset by its client while queued
                    continue
                except OSError:  # out of file descriptors: what is left is lost
                    break
                taken.append(conn)
    return taken


def _settled(conn: web.RequestHandler, *, awaiting_first: bool) -> bool:
    """Whether closing the connection now loses nothing sent on it: no request is in
    progress (its body may still be arriving, which aiohttp drops once it closes), and
    it has had one, unless its first is no longer `awaiting_first`."""
    # aiohttp keeps no public per-connection state; these are its own (3.14) fields.
    if conn._request_in_progress:
        return False
    return conn._request_count > 0 or not awaiting_first


async def _settle(
    runners: list[web.AppRunner], adopting: set[asyncio.Task[None]], deadline: float
) -> None:
    """Until every open connection has settled (each response closes its connection
    while draining), or `deadline`; connections taken from a listener (a TLS one until
    its handshake is done) and those yet to send a request are waited for at most
    FIRST_REQUEST_S. Idle keep-alive connections are settled: a client may send on one
    as it is closed (HTTP/1.1 has no way to say "no more" on an idle connection), which
    the drain delay's `Connection: close` answers make rare."""
    loop = asyncio.get_running_loop()
    first_by = loop.time() + FIRST_REQUEST_S
    while loop.time() < deadline:
        awaiting_first = loop.time() < first_by
        if not (adopting and awaiting_first) and all(
            _settled(conn, awaiting_first=awaiting_first)
            for runner in runners
            if runner.server is not None
            for conn in runner.server.connections
        ):
            break
        await asyncio.sleep(SETTLE_POLL_S)
    for task in list(adopting):
        task.cancel()


class Liveness(BaseModel):
    status: Literal["ok"]
    instance: str


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, bool]


_RETRY = Header("seconds to wait before asking again", required=True)


class Service:
    """The runtime of one service instance."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.log = setup_logging(settings)
        self.tracer_provider = setup_tracing(settings)
        # Log records over OTLP too when an endpoint is set, with the spans' resource.
        self.logger_provider = setup_log_export(self.tracer_provider.resource)
        self.tracer = self.tracer_provider.get_tracer(
            f"yardarm.{settings.service}", settings.version
        )
        self.metrics = Metrics(settings)
        self.flags = Flags(settings)
        self._malformed = self.metrics.counter(
            "yardarm_http_malformed_requests_total",
            "Requests refused before routing because they were not valid HTTP/1.x.",
            ("reason",),
        )
        self._checks: dict[str, Check] = {}
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._session: aiohttp.ClientSession | None = None
        self._listening: list[_Listening] = []
        self._adopting: set[asyncio.Task[None]] = set()  # connections taken from a listener
        self._listeners: list[tuple[web.Application, int]] = []
        self._stopping = asyncio.Event()
        self._stopped = False
        self.draining = False
        # Listener options a service may set before start(): TLS, SO_REUSEPORT (several
        # processes sharing one port) and aiohttp request-parser limits.
        self.ssl_context: ssl.SSLContext | None = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            self.ssl_context = tls.server_context(settings.tls_cert_file, settings.tls_key_file)
        self.reuse_port = False
        self.server_options: dict[str, Any] = {}
        self._own_process = False
        self.app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[self._trace_mw, self._metrics_mw, problem_middleware(self.log),
                         self._deadline_mw, self._fault_mw],
        )  # fmt: skip
        self.app.on_response_prepare.append(self._close_when_draining)
        self.api = ApiSpec(self.app.router, f"yardarm {settings.service}", settings.version)
        self._describe_operational()

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

    def add_listener(self, app: web.Application, port: int) -> None:
        """Serve another app on `port` (the gateway's admin API): bound to the same
        `host` with the same TLS, opened with the main listener after the start-up hooks,
        drained and closed with it."""
        app.on_response_prepare.append(self._close_when_draining)
        self._listeners.append((app, port))

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
                connector=aiohttp.TCPConnector(
                    limit=256, limit_per_host=64, ssl=self.client_ssl() or True
                ),
                auto_decompress=False,
            )
        return self._session

    @functools.cached_property
    def _client_ssl(self) -> ssl.SSLContext | None:
        settings = self.settings
        if settings.tls_ca_file is None:
            return None
        return tls.client_context(
            settings.tls_ca_file, cert=settings.tls_cert_file, key=settings.tls_key_file
        )

    def client_ssl(self) -> ssl.SSLContext | None:
        """The context for calls out: trusts the stack's CA and presents this service's
        certificate; None (the system's trust) without a CA file. Built once: every
        session of the process shares it."""
        return self._client_ssl

    def _describe_operational(self) -> None:
        """`/healthz`, `/readyz`, `/metrics` and `/openapi.json`, described like any route."""
        tags = ("operations",)
        self.api.add(
            "GET", "/healthz", self._healthz, operation_id="healthz", tags=tags, operational=True,
            summary="Liveness: the process answers",
            responses={200: Reply("alive", Liveness)},
        )  # fmt: skip
        self.api.add(
            "GET", "/readyz", self.readyz, operation_id="readyz", tags=tags, operational=True,
            summary="Readiness: every dependency check passes",
            responses={
                200: Reply("ready", Readiness),
                503: Reply.error("a check fails; `checks` says which", **{"Retry-After": _RETRY}),
            },
        )  # fmt: skip
        self.api.add(
            "GET", "/metrics", self._metrics, operation_id="metrics", tags=tags, operational=True,
            summary="Prometheus metrics (OpenMetrics with exemplars when asked for)",
            responses={
                200: Reply(
                    "the exposition",
                    content_type="text/plain,application/openmetrics-text",
                )
            },
        )  # fmt: skip
        self.api.serve()

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
    async def _deadline_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = request.headers.get(deadline.TIMEOUT_HEADER)
        if raw is None or request.path in OPERATIONAL_PATHS:
            return await handler(request)
        budget = deadline.parse_header(raw)
        if budget is None:
            raise Problem(
                400,
                f"Invalid {deadline.TIMEOUT_HEADER}",
                f"{deadline.TIMEOUT_HEADER} must be a positive number of milliseconds "
                f"(got {raw[:40]!r})",
            )
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

    def count_malformed(self, reason: str) -> None:
        """Count a request refused before routing (see yardarm_kit.http_server)."""
        self._malformed.inc(reason=reason)

    # -- operational endpoints ----------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "instance": self.settings.instance})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            raise Problem(
                503,
                "Not ready",
                "draining: the instance is shutting down",
                extra={"checks": {}, "draining": True},
                headers={"Retry-After": "1"},
            )
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

    async def _close_when_draining(
        self, request: web.Request, response: web.StreamResponse
    ) -> None:
        """While draining, no connection is kept alive: a client's next request opens a
        new one, which a router that has seen readiness fail sends elsewhere."""
        if self.draining:
            response.force_close()  # aiohttp has set the headers already: say it there too
            response.headers["Connection"] = "close"

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
        await self._listen(self.app, self.settings.port, self.server_options, self.reuse_port)
        for app, port in self._listeners:
            await self._listen(app, port, {}, False)

    async def _listen(
        self, app: web.Application, port: int, options: dict[str, Any], reuse_port: bool
    ) -> None:
        runner = AppRunner(
            app,
            access_log=None,
            shutdown_timeout=self.settings.drain_timeout_s,
            on_malformed=self.count_malformed,
            **options,
        )
        await runner.setup()
        assert runner.server is not None
        host = self.settings.host
        warning = tls.plaintext_warning(
            host, port, tls=self.ssl_context is not None, mesh_tls=self.settings.mesh_tls
        )
        if warning is not None:
            self.log.warning(warning, extra={"event": "plaintext_listener"})
        # The listening server is the kit's own (not an aiohttp site), so that closing
        # it can take over what the kernel queued on it (`_leave_port`).
        server = await asyncio.get_running_loop().create_server(
            runner.server,
            host,
            port,
            ssl=self.ssl_context,
            backlog=LISTEN_BACKLOG,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        self._listening.append(_Listening(runner, server, shared=reuse_port))
        self.log.info("listening on %s:%d", host, port, extra={"event": "started"})

    async def drain(self) -> None:
        """Fail readiness, then keep serving for `drain_delay_s`, so that whatever
        routes by readiness stops sending here before the listeners close.

        A listener sharing its port with other processes (`reuse_port`) leaves the port
        at once instead: the kernel then gives every new connection to the listeners
        that remain, and the delay only serves the connections already open, each
        answer closing its connection, so their clients reconnect to a peer.
        """
        self.draining = True
        delay = self.settings.drain_delay_s
        shared = [listening for listening in self._listening if listening.shared]
        self.log.info(
            "draining: readiness fails; %s close in %.1fs",
            "the shared port is left now, the other listeners" if shared else "the listeners",
            delay,
            extra={"event": "draining"},
        )
        self._leave(shared)
        if delay > 0:
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Fail readiness, close the listeners, let requests in flight finish (up to
        `drain_timeout_s`), run shutdown hooks, flush spans. `serve()` drains first.

        Nothing a client already sent is refused: connections the kernel had queued on
        a listener are taken over as it closes (`_leave_port`), and the connections
        still open are answered (`Connection: close`) until each has had a request and
        has none in progress (`_settle`) before the idle ones are closed.

        Idempotent: a second call does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        self.draining = True
        listening, self._listening = self._listening, []
        self._leave(listening)
        runners = [each.runner for each in listening]
        deadline = asyncio.get_running_loop().time() + self.settings.drain_timeout_s
        await _settle(runners, self._adopting, deadline)
        await asyncio.gather(*(runner.cleanup() for runner in runners))
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
        if self.logger_provider is not None:
            self.logger_provider.force_flush(timeout_millis=5000)

    def _leave(self, listening: list[_Listening]) -> None:
        """Close these listeners (those still open), then serve the connections the
        kernel had queued on them like any other (`_settle` waits for them)."""
        # One step, no await between a listener's closing and the takeover.
        taken = [(each.runner, sock) for each in listening for sock in each.leave()]
        for runner, sock in taken:
            task = asyncio.create_task(self._adopt(runner, sock))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    async def _adopt(self, runner: web.AppRunner, sock: socket.socket) -> None:
        assert runner.server is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                runner.server,
                sock,
                ssl=self.ssl_context,
                ssl_handshake_timeout=(
                    None if self.ssl_context is None else self.settings.drain_timeout_s
                ),
            )
        except Exception:  # the client left, or its TLS handshake failed
            sock.close()

    def request_stop(self) -> None:
        """Make `serve()` return (signal handlers call this)."""
        self._stopping.set()

    async def serve(self) -> None:
        """Start, wait for `request_stop()` (SIGTERM/SIGINT under `run`), drain, stop."""
        await self.start()
        if self._own_process:
            tune_gc()
        try:
            await self._stopping.wait()
            await self.drain()
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
        if self.logger_provider is not None:
            self.logger_provider.shutdown()
