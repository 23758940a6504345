"""The stack's credentials: a token per principal, the access document, the peer secret.

The control plane is the only issuer (etcd's model, with tokens instead of passwords):
one random token per principal, written to a file only its owner can read; the
datastore's access document names each principal by its token's SHA-256 with its roles,
so it holds no secret; the Raft group shares one peer secret for its handshake. Locally
they live under `<home>/credentials/` (the admin token at `<home>/admin-token`, where
operators and tools have always found it); Kubernetes Secrets and ansible-vault carry
the same files on the other targets.

Roles follow least privilege: orders reads and writes stock; the gateway reads its own
configuration; only the control plane (admin) writes `config/` and `rollouts/`, and only
it may use the Raft admin API.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# yardarm_kit.access (and the aiohttp it serves) is imported when a credential is read
# or issued: every CLI command reaches this module through the local control plane.
if TYPE_CHECKING:
    from yardarm_kit.access import AccessDocument, Role

    ROLES: dict[str, Role]

ADMIN = "admin"


@functools.cache
def _roles() -> dict[str, Role]:
    from yardarm_kit.access import Permission, Role

    return {
        ADMIN: Role(admin=True),
        "orders": Role(permissions=[Permission(prefix="stock/", access="readwrite")]),
        "gateway": Role(permissions=[Permission(prefix="config/gateway/", access="read")]),
    }


def __getattr__(name: str) -> Any:
    """`ROLES`, built on first use (PEP 562)."""
    if name == "ROLES":
        return _roles()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Each principal and its roles: the control plane and the two services that call the
# datastore (fulfillment keeps its state in Postgres and never does).
PRINCIPALS: dict[str, tuple[str, ...]] = {ADMIN: (ADMIN,), "orders": ("orders",),
                                          "gateway": ("gateway",)}  # fmt: skip


@dataclass(frozen=True)
class StackCredentials:
    """Where one stack's credential files are."""

    home: Path

    @property
    def directory(self) -> Path:
        return self.home / "credentials"

    @property
    def access_file(self) -> Path:
        return self.directory / "access.json"

    @property
    def peer_secret_file(self) -> Path:
        return self.directory / "raft-peer.secret"

    def token_file(self, principal: str) -> Path:
        if principal not in PRINCIPALS:
            raise KeyError(f"no principal {principal!r} (principals: {', '.join(PRINCIPALS)})")
        if principal == ADMIN:
            return self.home / "admin-token"
        return self.directory / f"{principal}.token"

    def token(self, principal: str) -> str:
        from yardarm_kit.access import read_token

        return read_token(self.token_file(principal))


class CredentialFiles:
    """A target's credential paths, in the stack home's layout under `self.credentials`
    (the model's `Target` methods for them, the same on every target)."""

    credentials: StackCredentials

    def credential_file(self, principal: str) -> str:
        return str(self.credentials.token_file(principal))

    def access_file(self) -> str:
        return str(self.credentials.access_file)

    def peer_secret_file(self) -> str:
        return str(self.credentials.peer_secret_file)


def _ensure_token(path: Path) -> str:
    from yardarm_kit.access import new_token, write_token

    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token
    token = new_token()
    write_token(path, token)
    return token


def access_document(tokens: dict[str, str]) -> AccessDocument:
    """The access document for these principals' tokens."""
    from yardarm_kit.access import AccessDocument, Principal, digest

    return AccessDocument(
        roles=_roles(),
        principals={
            name: Principal(token_sha256=digest(tokens[name]), roles=list(roles))
            for name, roles in PRINCIPALS.items()
        },
    )


def ensure_credentials(home: Path) -> StackCredentials:
    """Issue what is missing (existing tokens are kept, so a restart changes nothing) and
    write the access document for the current tokens."""
    creds = StackCredentials(home)
    creds.directory.mkdir(parents=True, exist_ok=True)
    creds.directory.chmod(0o700)
    tokens = {name: _ensure_token(creds.token_file(name)) for name in PRINCIPALS}
    _ensure_token(creds.peer_secret_file)
    document = access_document(tokens).model_dump_json(indent=2)
    if not creds.access_file.is_file() or creds.access_file.read_text() != document:
        tmp = creds.access_file.with_suffix(".json.tmp")
        tmp.write_text(document)
        os.replace(tmp, creds.access_file)
    return creds


def admin_token(home: Path) -> str:
    """The stack's admin token (issued on first use)."""
    return ensure_credentials(home).token(ADMIN)
