"""The access document the control plane renders, and its principals' tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yardarm.credentials import ensure_credentials


@dataclass(frozen=True)
class Credentials:
    """The document's path, each principal's token, and the group's peer secret file."""

    access_file: Path
    peer_token_file: Path
    admin: str
    orders: str
    gateway: str

    def bearer(self, principal: str) -> dict[str, str]:
        token: str = getattr(self, principal)
        return {"Authorization": f"Bearer {token}"}

    def env(self) -> dict[str, str]:
        return {
            "YARDARM_DATASTORE_ACCESS_FILE": str(self.access_file),
            "YARDARM_DATASTORE_PEER_TOKEN_FILE": str(self.peer_token_file),
        }


def make_credentials(root: Path) -> Credentials:
    """The stack's own credentials (`yardarm.credentials`), issued into `root`: admin
    (every key and the Raft admin API), orders (readwrite `stock/`), gateway (read
    `config/gateway/`), the access document naming them and the peer secret."""
    issued = ensure_credentials(root)
    tokens = {name: issued.token(name) for name in ("admin", "orders", "gateway")}
    return Credentials(issued.access_file, issued.peer_secret_file, **tokens)
