"""Who may do what: bearer credentials, roles and key-prefix permissions (etcd's model).

The control plane issues one random token per principal (a service, the operator) and
renders an access document that names each principal by the SHA-256 of its token (the
document holds no secret), the roles it has, and what each role may do: read, write or
both on key prefixes, and whether it is an admin (every key, and the Raft admin API).
A service that guards an API loads the document and asks `Authorizer`; a service that
calls one reads its own token from a file and sends `Authorization: Bearer <token>`.

Tokens are 256-bit random strings, so a plain SHA-256 is a safe verifier (no password
stretching needed) and a dictionary lookup by digest leaks nothing useful by timing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from yardarm_kit.problem import Problem

Access = Literal["read", "write", "readwrite"]
Action = Literal["read", "write"]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
TOKEN_BYTES = 32


class Permission(BaseModel):
    """`access` on every key that starts with `prefix` ("" is every key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(max_length=512)
    access: Access

    def allows(self, action: Action, key: str) -> bool:
        return key.startswith(self.prefix) and (self.access == "readwrite" or self.access == action)


class Role(BaseModel):
    """A named set of permissions; `admin` allows every key and the Raft admin API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    admin: bool = False
    permissions: list[Permission] = Field(default_factory=list)


class Principal(BaseModel):
    """A holder of one token, known by the token's SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_sha256: Digest
    roles: list[Name] = Field(min_length=1)


class AccessDocument(BaseModel):
    """The access document a guarded service loads (`YARDARM_<SERVICE>_ACCESS_FILE`)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    roles: dict[Name, Role]
    principals: dict[Name, Principal]

    @model_validator(mode="after")
    def _check(self) -> AccessDocument:
        for name, principal in self.principals.items():
            unknown = sorted(set(principal.roles) - set(self.roles))
            if unknown:
                raise ValueError(f"principal {name!r} has undefined roles {unknown}")
        digests = [p.token_sha256 for p in self.principals.values()]
        if len(set(digests)) != len(digests):
            raise ValueError("two principals share one token")
        return self

    @classmethod
    def load(cls, path: Path) -> AccessDocument:
        return cls.model_validate_json(path.read_bytes())


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_token(path: Path) -> str:
    """A credential from its file (a Kubernetes Secret, an ansible-vault file, the
    stack's home), stripped of the trailing newline editors add."""
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"the credential file {path} is empty")
    return token


def write_token(path: Path, token: str) -> None:
    """Write a credential readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    path.chmod(0o600)


@dataclass(frozen=True)
class Caller:
    """An authenticated principal and the union of its roles."""

    name: str
    admin: bool
    permissions: tuple[Permission, ...]

    def can(self, action: Action, key: str) -> bool:
        """May this caller `action` the key `key` (or, for a listing, every key under
        the prefix `key`)?"""
        return self.admin or any(p.allows(action, key) for p in self.permissions)


def bearer_token(request: web.BaseRequest) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def unauthorized(realm: str, detail: str) -> Problem:
    return Problem(
        401,
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
    )


class Authorizer:
    """Answers who a bearer token belongs to and what it may do."""

    def __init__(self, document: AccessDocument, realm: str) -> None:
        self.realm = realm
        self._callers: dict[str, Caller] = {}
        for name, principal in document.principals.items():
            roles = [document.roles[r] for r in principal.roles]
            self._callers[principal.token_sha256] = Caller(
                name=name,
                admin=any(role.admin for role in roles),
                permissions=tuple(p for role in roles for p in role.permissions),
            )

    def caller(self, request: web.BaseRequest) -> Caller:
        """The request's authenticated caller; a 401 problem without a valid token."""
        token = bearer_token(request)
        if token is None:
            raise unauthorized(self.realm, "send 'Authorization: Bearer <token>'")
        found = self._callers.get(digest(token))
        if found is None:
            raise unauthorized(self.realm, "the bearer token is not a valid credential")
        return found

    def require(self, request: web.BaseRequest, action: Action, key: str) -> Caller:
        """The caller, if its roles allow `action` on `key`; 401/403 problems otherwise."""
        caller = self.caller(request)
        if not caller.can(action, key):
            raise Problem(
                403,
                "Forbidden",
                f"{caller.name} may not {action} {key!r}; ask for a role that grants it",
            )
        return caller

    def require_admin(self, request: web.BaseRequest) -> Caller:
        caller = self.caller(request)
        if not caller.admin:
            raise Problem(403, "Forbidden", f"{caller.name} is not an admin; this needs one")
        return caller


def admin_only(token: str, realm: str) -> Authorizer:
    """An authorizer that knows one caller, the stack's admin: for the control plane's
    own services (the chaos and rollout controllers), which only the admin may use."""
    document = AccessDocument(
        roles={"admin": Role(admin=True)},
        principals={"admin": Principal(token_sha256=digest(token), roles=["admin"])},
    )
    return Authorizer(document, realm)
