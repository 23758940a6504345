"""The chaos controller: one per stack, it owns the link proxies and applies faults.

`POST /faults` takes `{"action", "target", "peer"?, "ms"?, "jitter_ms"?}`: kill, pause
and resume signal an instance's process (found in the supervisor's state.json; the
supervisor restarts a killed one as it does any crash); partition, heal and delay act on
the link proxies into and out of the target (or only between target and peer). Every
applied fault is logged as a JSON line and counted in `yardarm_chaos_faults_total`.
It is built on the kit's `Service`, so `/healthz`, `/readyz`, `/metrics`, JSON logs and
problem+json errors work as in every service. Link faults live in this process: a
restarted controller starts with every link healed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from aiohttp import web
from yardarm_kit import Metrics, Problem, Reply, Service, ServiceSettings, parse_json
from yardarm_kit.access import Authorizer, admin_only, read_token

from yardarm.chaos import process_faults
from yardarm.chaos.config import (
    ACTIONS,
    ALL,
    LINK_ACTIONS,
    PROCESS_ACTIONS,
    ChaosConfig,
    FaultRequest,
    LinkConfig,
)
from yardarm.chaos.documents import FaultsApplied, FaultsState
from yardarm.chaos.proxy import LinkProxy

LISTEN_HOST = "127.0.0.1"


def _unprocessable(title: str, detail: str, field: str, valid: list[str] | None = None) -> Problem:
    extra: dict[str, Any] = {} if valid is None else {"valid": valid}
    return Problem(422, title, detail, errors=[{"field": field, "message": detail}], extra=extra)


class ChaosController:
    """Applies faults to one stack's links and processes, and keeps their score."""

    def __init__(self, config: ChaosConfig, metrics: Metrics, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.links: dict[str, LinkConfig] = {link.name: link for link in config.links}
        self.proxies: dict[str, LinkProxy] = {
            link.name: LinkProxy(
                link.name, LISTEN_HOST, link.listen_port, link.target_host, link.target_port
            )
            for link in config.links
        }
        self.counts: Counter[tuple[str, str]] = Counter()
        self._faults = metrics.counter(
            "yardarm_chaos_faults_total",
            "Faults applied, by action and target.",
            ("action", "target"),
        )
        self._partitioned = metrics.gauge(
            "yardarm_chaos_link_partitioned", "1 while the link is cut.", ("link",)
        )
        self._delay = metrics.gauge(
            "yardarm_chaos_link_delay_ms", "Delay added to each chunk on the link.", ("link",)
        )
        for name in self.proxies:
            self._publish(name)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open every link's listener (all or none)."""
        started: list[LinkProxy] = []
        try:
            for proxy in self.proxies.values():
                try:
                    await proxy.start()
                except OSError as exc:
                    raise OSError(
                        exc.errno,
                        f"link {proxy.name} cannot listen on {LISTEN_HOST}:{proxy.listen_port}: "
                        f"{exc.strerror}",
                    ) from exc
                started.append(proxy)
        except BaseException:
            await asyncio.gather(*(proxy.stop() for proxy in started))
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(proxy.stop() for proxy in self.proxies.values()))

    async def listening(self) -> bool:
        """Readiness: every link accepts connections."""
        return all(proxy.listening for proxy in self.proxies.values())

    # --- faults --------------------------------------------------------------------

    def link_targets(self) -> list[str]:
        """Every instance that has links, in name order."""
        return sorted(
            {link.src for link in self.links.values()} | {link.dst for link in self.links.values()}
        )

    def _select_links(self, fault: FaultRequest) -> list[str]:
        """Links whose src or dst is the target (both ends with a peer), by instance name:
        `orders-0` reaches its own dependency links and the gateways' links into it."""
        endpoints = self.link_targets()
        target, peer = fault.target, fault.peer
        if target != ALL and target not in endpoints:
            valid = [ALL, *endpoints]
            raise _unprocessable(
                "Unknown target",
                f"no links into or out of {target!r} to {fault.action}; "
                f"valid targets: {', '.join(valid)}",
                "target",
                valid,
            )
        if peer is None:
            return [
                name
                for name, link in self.links.items()
                if target == ALL or target in (link.src, link.dst)
            ]
        if target == ALL:
            raise _unprocessable(
                "Peer needs one target", "peer narrows one target's links; name a target", "peer"
            )
        peers = sorted(
            {link.dst for link in self.links.values() if link.src == target}
            | {link.src for link in self.links.values() if link.dst == target}
        )
        if peer not in peers:
            raise _unprocessable(
                "Unknown peer",
                f"no link between {target} and {peer!r}; valid peers: {', '.join(peers)}",
                "peer",
                peers,
            )
        return [name for name, link in self.links.items() if {link.src, link.dst} == {target, peer}]

    def _check_fields(self, fault: FaultRequest) -> None:
        if fault.action != "delay" and (fault.ms is not None or fault.jitter_ms is not None):
            raise _unprocessable(
                "Field not applicable", "ms and jitter_ms apply only to delay", "ms"
            )
        if fault.action in PROCESS_ACTIONS and fault.peer is not None:
            raise _unprocessable(
                "Field not applicable", "peer applies only to partition, heal and delay", "peer"
            )
        if fault.action == "delay":
            if fault.ms is None:
                raise _unprocessable("Missing ms", "delay needs ms (0 clears the delay)", "ms")
            if (fault.jitter_ms or 0) > fault.ms:
                raise _unprocessable(
                    "Jitter exceeds delay",
                    f"jitter_ms ({fault.jitter_ms}) must not exceed ms ({fault.ms})",
                    "jitter_ms",
                )

    async def apply(self, fault: FaultRequest) -> dict[str, Any]:
        """Apply one fault; what it reached. Problem (422/409) when it cannot apply."""
        self._check_fields(fault)
        if fault.action in LINK_ACTIONS:
            names = self._select_links(fault)
            for name in names:
                self._apply_link(fault, self.proxies[name])
            affected: dict[str, Any] = {"links": names}
        else:
            try:
                reached = await asyncio.to_thread(
                    process_faults.apply,
                    self.config.home,
                    self.config.instance,
                    fault.action,
                    fault.target,
                )
            except process_faults.ProcessFaultError as exc:
                extra: dict[str, Any] = {} if exc.valid is None else {"valid": exc.valid}
                raise Problem(exc.status, exc.title, exc.detail, extra=extra) from None
            affected = {"instances": [{"instance": s.instance, "pid": s.pid} for s in reached]}
        self.counts[(fault.action, fault.target)] += 1
        self._faults.inc(action=fault.action, target=fault.target)
        applied = {**fault.model_dump(exclude_none=True), **affected}
        self.log.info(
            "fault %s %s", fault.action, fault.target, extra={"event": "fault", **applied}
        )
        return applied

    def _apply_link(self, fault: FaultRequest, proxy: LinkProxy) -> None:
        if fault.action == "partition":
            proxy.partition()
        elif fault.action == "heal":
            proxy.heal()
            proxy.delay(0, 0)
        else:
            assert fault.ms is not None
            proxy.delay(fault.ms, fault.jitter_ms or 0)
        self._publish(proxy.name)

    def _publish(self, name: str) -> None:
        proxy = self.proxies[name]
        self._partitioned.set(1.0 if proxy.partitioned else 0.0, link=name)
        self._delay.set(float(proxy.delay_ms), link=name)

    async def state(self) -> dict[str, Any]:
        """Links, paused instances and fault counts (the `GET /faults` document)."""
        paused = await asyncio.to_thread(
            process_faults.paused, self.config.home, self.config.instance
        )
        links = [
            {**proxy.state(), "src": self.links[name].src, "dst": self.links[name].dst}
            for name, proxy in self.proxies.items()
        ]
        faults = [
            {"action": action, "target": target, "count": count}
            for (action, target), count in sorted(self.counts.items())
        ]
        return {
            "links": links,
            "paused": [{"instance": p.instance, "pid": p.pid} for p in paused],
            "faults": faults,
            "total": sum(self.counts.values()),
            "targets": {
                "links": [ALL, *self.link_targets()],
                "processes": [
                    ALL,
                    *await asyncio.to_thread(
                        process_faults.process_targets, self.config.home, self.config.instance
                    ),
                ],
            },
        }


# --- HTTP ------------------------------------------------------------------------


async def _read_fault(request: web.Request) -> FaultRequest:
    try:
        return await parse_json(request, FaultRequest)
    except Problem as problem:
        if problem.status == 422 and any(e["field"] == "action" for e in problem.errors or []):
            problem.detail = f"unknown action; valid actions: {', '.join(ACTIONS)}"
            problem.extra["valid"] = list(ACTIONS)
        raise


def _authorizer(config: ChaosConfig) -> Authorizer | None:
    """Only the stack's admin may inject faults (or read where they are)."""
    if config.admin_token_file is None:
        return None
    return admin_only(read_token(config.admin_token_file), "yardarm-chaos")


def build_service(config: ChaosConfig) -> tuple[Service, ChaosController]:
    """The controller behind the kit's HTTP service, listening on the control port."""
    settings = ServiceSettings(
        service="chaos",
        instance=config.instance,
        version=config.version,
        environment=config.environment,
        host=LISTEN_HOST,
        port=config.control_port,
        state_dir=config.home,
        flags_file=None,  # no flag-driven faults inside the fault injector itself
        tls_cert_file=config.tls_cert_file,
        tls_key_file=config.tls_key_file,
    )

    service = Service(settings)
    controller = ChaosController(config, service.metrics, service.log)
    service.on_startup(controller.start)
    service.on_shutdown(controller.stop)
    service.add_readiness_check("links", controller.listening)
    authorizer = _authorizer(config)
    if authorizer is None:

        async def warn_open() -> None:
            service.log.warning(
                "no admin credential configured: anyone who reaches port %d can kill, pause "
                "and partition this stack's processes",
                config.control_port,
                extra={"event": "auth_disabled"},
            )

        service.on_startup(warn_open)

    def guard(request: web.Request) -> None:
        if authorizer is not None:
            authorizer.require_admin(request)

    async def post_faults(request: web.Request) -> web.Response:
        fault = await _read_fault(request)
        try:
            applied = await controller.apply(fault)
        except Problem as problem:
            service.log.info(
                "fault refused: %s",
                problem.detail,
                extra={"event": "fault_refused", **fault.model_dump(exclude_none=True)},
            )
            raise
        return web.json_response({"applied": applied, **await controller.state()})

    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(await controller.state())

    secured = authorizer is not None
    service.api.add(
        "POST", "/faults", post_faults, operation_id="applyFault", tags=("faults",),
        summary="Apply one fault: kill, pause, resume, partition, heal or delay",
        description="Process faults signal an instance's process group; link faults act "
        "on the link proxies into and out of the target (or only between it and `peer`).",
        body=FaultRequest, validate_body=False,  # _read_fault names the valid actions
        responses={
            200: Reply("applied; the state after it", FaultsApplied),
            409: Reply.error("the target has no running process of this stack"),
        },
        secured=secured, permission="the admin role", guard=guard,
    )  # fmt: skip
    service.api.add(
        "GET", "/faults", get_faults, operation_id="faults", tags=("faults",),
        summary="Links, paused instances and fault counts",
        responses={200: Reply("the controller's state", FaultsState)},
        secured=secured, permission="the admin role", guard=guard,
    )  # fmt: skip
    return service, controller
