"""An access document like the one the control plane renders: admin, orders, gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from yardarm_kit.access import digest, new_token, write_token


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
    """Tokens for three principals and the document that names them by digest:
    admin (every key and the Raft admin API), orders (readwrite `stock/`), gateway
    (read `config/gateway/`)."""
    root.mkdir(parents=True, exist_ok=True)
    tokens = {name: new_token() for name in ("admin", "orders", "gateway")}
    document = {
        "format": 1,
        "roles": {
            "admin": {"admin": True},
            "orders": {"permissions": [{"prefix": "stock/", "access": "readwrite"}]},
            "gateway": {"permissions": [{"prefix": "config/gateway/", "access": "read"}]},
        },
        "principals": {
            name: {"token_sha256": digest(token), "roles": [name]} for name, token in tokens.items()
        },
    }
    access_file = root / "access.json"
    access_file.write_text(json.dumps(document, indent=2))
    peer_token_file = root / "peer.token"
    write_token(peer_token_file, new_token())
    return Credentials(access_file, peer_token_file, **tokens)
