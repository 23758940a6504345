"""Take one host out of service and back, for the rolling upgrade (ansible/upgrade.yml).

`python -m yardarm.baremetal.rolling drain|restore|handoff --plan FILE --host NAME` runs
on the host being upgraded, with the plan the inventory renders (`yardarm_rolling`):

- `drain`: the gateways' routing document loses every endpoint on the host (orders and
  datastore), and the command returns once every gateway routes without them. A
  gateway stops sending new requests to an endpoint that leaves the document and lets
  those in flight finish, so the host's instances can then stop without failing one.
- `restore`: every endpoint back, once every gateway applied it.
- `handoff`: when the datastore's leader runs on the host, leadership moves to a
  replica on another host first (a leader that just stops costs the group an election
  timeout of unavailability; a transfer costs about one round trip).

Each prints one JSON line, `{"changed": bool, ...}`, which the playbook reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Final

import httpx
from pydantic import BaseModel, ConfigDict

from yardarm.routing_writer import Endpoint, RoutingWriter

APPLY_TIMEOUT_S: Final = 30.0  # every gateway routes by a new document within this
HANDOFF_TIMEOUT_S: Final = 30.0  # a new leader elsewhere within this
POLL_S: Final = 0.2


class PlanEndpoint(BaseModel):
    """One endpoint the gateways route to, and the host it runs on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    track: str
    host: str


class Replica(BaseModel):
    """One datastore replica: its Raft id, URL and host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    url: str
    host: str


class RollingPlan(BaseModel):
    """Where the control plane is and what runs where (the inventory's `yardarm_rolling`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    datastore_urls: list[str]
    gateway_admin_urls: list[str]
    admin_token_file: str
    endpoints: dict[str, list[PlanEndpoint]]
    replicas: list[Replica]

    def token(self) -> str:
        from yardarm_kit.access import read_token

        return read_token(Path(self.admin_token_file))

    def writer(self) -> RoutingWriter:
        return RoutingWriter(self.datastore_urls, self.gateway_admin_urls, self.token())


class RollingError(RuntimeError):
    """A step did not complete; the message says which and why."""


async def _publish(plan: RollingPlan, keep: dict[str, list[PlanEndpoint]]) -> dict[str, Any]:
    writer = plan.writer()
    version = 0
    for upstream, endpoints in keep.items():
        if not endpoints:
            raise RollingError(
                f"draining would leave {upstream} without an endpoint: its instances all "
                "run on this host (place them on more hosts for a rolling upgrade)"
            )
        listed = [Endpoint(e.url, e.track) for e in endpoints]
        version = max(version, await writer.publish(upstream, listed))
    late = await writer.wait_applied(version, APPLY_TIMEOUT_S)
    # A gateway that is down routes nothing; one that is up but late is an error.
    stuck = [url for url in late if await answers(url)]
    if stuck:
        raise RollingError(
            f"gateways {', '.join(stuck)} did not apply routing version {version} within "
            f"{APPLY_TIMEOUT_S:.0f} s"
        )
    return {"version": version, "endpoints": {u: len(e) for u, e in keep.items()}}


async def answers(admin_url: str) -> bool:
    """Whether a gateway's admin port answers at all (one that is down routes nothing)."""
    try:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            await client.get(f"{admin_url}/readyz")
    except httpx.HTTPError:
        return False
    return True


async def _document_endpoints(plan: RollingPlan) -> dict[str, list[dict[str, Any]]] | None:
    """The routing document's endpoints now (None: no document or no endpoints yet)."""
    from yardarm.control_kv import ControlKv
    from yardarm.routing_writer import ROUTING_KEY

    document, _ = await ControlKv(plan.datastore_urls, plan.token()).get(ROUTING_KEY)
    if document is None:
        return None
    endpoints = document.get("endpoints")
    return endpoints if isinstance(endpoints, dict) else None


async def drain(plan: RollingPlan, host: str) -> dict[str, Any]:
    keep = {
        upstream: [e for e in endpoints if e.host != host]
        for upstream, endpoints in plan.endpoints.items()
    }
    on_host = sum(len(e) for e in plan.endpoints.values()) - sum(len(e) for e in keep.values())
    before = await _document_endpoints(plan)
    result = await _publish(plan, keep)
    wanted = {u: [Endpoint(e.url, e.track).document() for e in es] for u, es in keep.items()}
    changed = before is None or any(before.get(u) != wanted[u] for u in wanted)
    return {"changed": changed and on_host > 0, "drained": on_host, **result}


async def restore(plan: RollingPlan) -> dict[str, Any]:
    before = await _document_endpoints(plan)
    result = await _publish(plan, dict(plan.endpoints))
    wanted = {
        u: [Endpoint(e.url, e.track).document() for e in es] for u, es in plan.endpoints.items()
    }
    changed = before is None or any(before.get(u) != wanted[u] for u in wanted)
    return {"changed": changed, **result}


async def _statuses(plan: RollingPlan, client: httpx.AsyncClient) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for replica in plan.replicas:
        try:
            response = await client.get(f"{replica.url}/raft/status")
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            found[replica.id] = response.json()
    return found


def _leader(statuses: dict[int, dict[str, Any]]) -> int | None:
    """The leader the replicas agree on at the highest term (None while electing)."""
    best: tuple[int, int] | None = None
    for status in statuses.values():
        leader, term = status.get("leader"), int(status.get("term") or 0)
        if leader and (best is None or term > best[0]):
            best = (term, int(leader))
    return None if best is None else best[1]


async def handoff(plan: RollingPlan, host: str) -> dict[str, Any]:
    by_id = {replica.id: replica for replica in plan.replicas}
    headers = {"Authorization": f"Bearer {plan.token()}"}
    deadline = time.monotonic() + HANDOFF_TIMEOUT_S
    async with httpx.AsyncClient(headers=headers, timeout=5.0, trust_env=False) as client:
        moved = False
        while True:
            statuses = await _statuses(plan, client)
            leader = _leader(statuses)
            if leader is not None and by_id[leader].host != host:
                return {"changed": moved, "leader": leader}
            if time.monotonic() > deadline:
                raise RollingError(
                    f"the datastore's leader is still on {host} (or none is elected) after "
                    f"{HANDOFF_TIMEOUT_S:.0f} s"
                )
            if leader is not None and not moved:
                # The most caught-up replica elsewhere: the transfer waits for it less.
                elsewhere = [r for r in plan.replicas if r.host != host and r.id in statuses]
                if not elsewhere:
                    raise RollingError(f"no datastore replica off {host} answers: cannot hand off")
                target = max(elsewhere, key=lambda r: int(statuses[r.id].get("applied") or 0))
                response = await client.post(
                    f"{by_id[leader].url}/raft/transfer", json={"to": target.id}
                )
                if response.status_code not in (200, 202):
                    raise RollingError(f"transfer to {target.id} refused: {response.text}")
                moved = True
            await asyncio.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yardarm.baremetal.rolling")
    parser.add_argument("step", choices=("drain", "restore", "handoff"))
    parser.add_argument("--plan", type=Path, required=True, help="the rendered yardarm_rolling")
    parser.add_argument("--host", default="", help="the inventory name of the host upgraded")
    args = parser.parse_args(argv)
    try:
        plan = RollingPlan.model_validate_json(args.plan.read_text())
        if args.step != "restore" and not args.host:
            raise RollingError(f"{args.step} needs --host")
        if args.step == "drain":
            result = asyncio.run(drain(plan, args.host))
        elif args.step == "restore":
            result = asyncio.run(restore(plan))
        else:
            result = asyncio.run(handoff(plan, args.host))
    except (OSError, ValueError, RollingError) as exc:
        print(f"yardarm rolling {args.step}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
