"""The replica's Raft admin API: status, membership changes, leader transfer.

Membership changes are one replica at a time (so every old and new majority overlap) and
are proposed on the leader; a follower forwards them like any write.
"""

from __future__ import annotations

import json
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from yardarm_kit import Problem, Service, parse_json

from yardarm_datastore.forward import forward
from yardarm_datastore.raft.core import ProposalRefused
from yardarm_datastore.raft.types import ConfChange
from yardarm_datastore.replica import Redirect, Replica, Unavailable
from yardarm_datastore.settings import PeerAddress

NodeId = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]


class AddMember(BaseModel):
    """`{"id": 4, "raft": "host:port", "http": "http://host:port"}`."""

    model_config = ConfigDict(extra="forbid")

    id: NodeId
    raft: str
    http: str


class Transfer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: NodeId


class RaftAdmin:
    """Routes under /raft on the service's app."""

    def __init__(self, service: Service, replica: Replica) -> None:
        self._replica = replica
        self._leader = service.http_client("datastore-leader")
        router = service.app.router
        router.add_get("/raft/status", self.status)
        router.add_post("/raft/members", self.add)
        router.add_delete("/raft/members/{id}", self.remove)
        router.add_post("/raft/transfer", self.transfer)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._replica.status())

    async def add(self, request: web.Request) -> web.Response:
        body = await parse_json(request, AddMember)
        try:
            address = PeerAddress(raft=body.raft, http=body.http)
        except ValueError as exc:
            raise Problem(422, "Invalid member address", str(exc)) from None
        context = json.dumps({"raft": address.raft, "http": address.http})
        return await self._change(request, ConfChange("add", body.id, context))

    async def remove(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
            raise Problem(422, "Invalid replica id", f"a replica id is an integer >= 1 ({raw!r})")
        return await self._change(request, ConfChange("remove", int(raw)))

    async def _change(self, request: web.Request, change: ConfChange) -> web.Response:
        try:
            index = await self._replica.change_membership(change)
        except Redirect as leader:
            return await forward(self._leader, request, leader.url, self._replica.config.node_id)
        except ProposalRefused as exc:
            raise Problem(409, "Membership change refused", str(exc)) from None
        except Unavailable as exc:
            raise _unavailable(exc) from None
        return web.json_response(
            {"op": change.op, "id": change.node, "index": index, **self._replica.status()}
        )

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
