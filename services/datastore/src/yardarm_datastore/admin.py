"""The replica's Raft admin API: status, membership changes, leader transfer.

Membership changes are one replica at a time (so every old and new majority overlap) and
are proposed on the leader; a follower relays them over HTTP (`forward`). Every
operation needs the admin role (`auth`).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from yardarm_kit import Param, Problem, Reply, Service, params_of, parse_json

from yardarm_datastore import auth
from yardarm_datastore.api import RETRY
from yardarm_datastore.forward import forward
from yardarm_datastore.models import (
    AddMember,
    MemberChanged,
    NodeIdParam,
    RaftStatus,
    Transfer,
    Transferring,
)
from yardarm_datastore.raft.core import ProposalRefused
from yardarm_datastore.raft.types import ConfChange
from yardarm_datastore.replica import Redirect, Replica, Unavailable

TAGS = ("raft",)
ADMIN = "the admin role"
UNAVAILABLE = Reply.error(
    "no leader, no quorum, or the leader did not answer a relayed request; retry shortly",
    **{"Retry-After": RETRY},
)


class RaftAdmin:
    """Routes under /raft on the service's app."""

    def __init__(self, service: Service, replica: Replica, guard: auth.Guard) -> None:
        self._replica = replica
        self._leader = service.http_client("datastore-leader")
        guard.add(
            "GET", "/raft/status", self.status, rule=auth.admin, permission=ADMIN,
            operation_id="raftStatus", summary="This replica's view of its Raft group",
            tags=TAGS,
            responses={200: Reply("the status", RaftStatus), 503: UNAVAILABLE},
        )  # fmt: skip
        refused = Reply.error("the change is refused (one is in progress, the replica is or "
                              "is not a member, the last member)")  # fmt: skip
        guard.add(
            "POST", "/raft/members", self.add, rule=auth.admin, permission=ADMIN,
            operation_id="addMember", summary="Add a replica to the group (on the leader)",
            description="Start the new replica with the full member list in PEERS; it "
            "catches up by snapshot. A follower relays the request to the leader.",
            tags=TAGS, body=AddMember,
            responses={200: Reply("committed", MemberChanged), 409: refused, 503: UNAVAILABLE},
        )  # fmt: skip
        guard.add(
            "DELETE", "/raft/members/{id}", self.remove, rule=auth.admin, permission=ADMIN,
            operation_id="removeMember", summary="Remove a replica from the group",
            tags=TAGS, params=[Param("id", "path", NodeIdParam, "the replica's id")],
            responses={200: Reply("committed", MemberChanged), 409: refused, 503: UNAVAILABLE},
        )  # fmt: skip
        guard.add(
            "POST", "/raft/transfer", self.transfer, rule=auth.admin, permission=ADMIN,
            operation_id="transferLeadership", summary="Hand leadership to another replica",
            description="Answers once the transfer has started; the target is caught up, "
            "then told to campaign.",
            tags=TAGS, body=Transfer,
            responses={
                202: Reply("the transfer started", Transferring),
                409: Reply.error("refused (not a member, a transfer in progress)"),
                503: UNAVAILABLE,
            },
        )  # fmt: skip

    async def status(self, request: web.Request) -> web.Response:
        status = self._replica.status()
        if not status.get("open", True):
            raise _unavailable(Unavailable("the replica is not open (recovering)"))
        return web.json_response(status)

    async def add(self, request: web.Request) -> web.Response:
        body = await parse_json(request, AddMember)
        context = json.dumps({"raft": body.raft, "http": body.http})
        return await self._change(request, ConfChange("add", body.id, context))

    async def remove(self, request: web.Request) -> web.Response:
        node: int = params_of(request)["id"]
        return await self._change(request, ConfChange("remove", node))

    async def _change(self, request: web.Request, change: ConfChange) -> web.Response:
        try:
            index = await self._replica.change_membership(change)
        except Redirect as leader:
            return await forward(self._leader, request, leader.url, self._replica.config.node_id)
        except ProposalRefused as exc:
            raise Problem(409, "Membership change refused", str(exc)) from None
        except Unavailable as exc:
            raise _unavailable(exc) from None
        answer: dict[str, Any] = {
            **self._replica.status(),
            "op": change.op,
            "member": change.node,
            "index": index,
        }
        return web.json_response(answer)

    async def transfer(self, request: web.Request) -> web.Response:
        body = await parse_json(request, Transfer)
        try:
            self._replica.transfer(body.to)
        except Redirect as leader:
            return await forward(self._leader, request, leader.url, self._replica.config.node_id)
        except ProposalRefused as exc:
            raise Problem(409, "Transfer refused", str(exc)) from None
        except Unavailable as exc:
            raise _unavailable(exc) from None
        return web.json_response({"transferring_to": body.to}, status=202)


def _unavailable(exc: Unavailable) -> Problem:
    return Problem(503, "Datastore unavailable", str(exc), headers={"Retry-After": "1"})
