"""Followers relay admin requests (membership, transfer) to the leader over HTTP.

Client reads and writes never come here: they travel to the leader over the Raft stream.

One hop only: a forwarded request that reaches a replica which is not (or no longer)
the leader is answered 503 with Retry-After rather than passed on again, so a leader
change can never bounce a request around the group.

The caller's `Authorization` travels with the request: the leader authorizes it again
(the follower's own check only spares the leader requests it would refuse anyway), and
its 401's `WWW-Authenticate` comes back. The relay uses the service's client session, so
it speaks HTTPS to a leader whose URL says so, trusting the stack's CA.
"""

from __future__ import annotations

from aiohttp import web
from yardarm_kit import Problem
from yardarm_kit.httpclient import HttpClient, UpstreamTimeout, UpstreamUnavailable

FORWARDED = "X-Yardarm-Forwarded-By"
PASS_REQUEST = ("Authorization", "Content-Type", "Idempotency-Key")
PASS_RESPONSE = (
    "Content-Type",
    "Retry-After",
    "Idempotent-Replayed",
    "Location",
    "WWW-Authenticate",
)


def forwarded(request: web.Request) -> bool:
    return FORWARDED in request.headers


async def forward(
    client: HttpClient, request: web.Request, leader_url: str, node_id: int
) -> web.Response:
    """Replay `request` on the leader and answer with the leader's response."""
    if forwarded(request):
        raise Problem(
            503,
            "Leader moved",
            "this replica was named the leader but no longer leads; retry shortly",
            headers={"Retry-After": "1"},
        )
    body = await request.read()
    headers = {name: request.headers[name] for name in PASS_REQUEST if name in request.headers}
    headers[FORWARDED] = str(node_id)
    try:
        answer = await client.request(
            request.method, leader_url + request.rel_url.path_qs, data=body, headers=headers
        )
    except (UpstreamTimeout, UpstreamUnavailable) as exc:
        raise Problem(
            503,
            "Leader unreachable",
            f"the leader at {leader_url} did not answer ({exc}); retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    out = {name: answer.headers[name] for name in PASS_RESPONSE if name in answer.headers}
    return web.Response(status=answer.status, body=answer.body, headers=out)
