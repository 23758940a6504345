"""Bearer credentials, roles and key-prefix permissions (etcd's model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import ValidationError
from yardarm_kit import Problem
from yardarm_kit.access import (
    AccessDocument,
    Authorizer,
    Permission,
    Principal,
    Role,
    digest,
    new_token,
    read_token,
    write_token,
)

ADMIN, ORDERS, GATEWAY = new_token(), new_token(), new_token()


def _document() -> AccessDocument:
    return AccessDocument(
        roles={
            "admin": Role(admin=True),
            "orders": Role(permissions=[Permission(prefix="stock/", access="readwrite")]),
            "gateway": Role(permissions=[Permission(prefix="config/gateway/", access="read")]),
        },
        principals={
            "admin": Principal(token_sha256=digest(ADMIN), roles=["admin"]),
            "orders": Principal(token_sha256=digest(ORDERS), roles=["orders"]),
            "gateway": Principal(token_sha256=digest(GATEWAY), roles=["gateway"]),
        },
    )


def _request(token: str | None, scheme: str = "Bearer") -> object:
    headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
    return make_mocked_request("GET", "/kv/x", headers=headers)


def _refusal(call: object) -> Problem:
    with pytest.raises(Problem) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_roles_allow_exactly_their_prefixes_and_actions() -> None:
    auth = Authorizer(_document(), "test")
    orders = auth.caller(_request(ORDERS))  # type: ignore[arg-type]
    assert orders.name == "orders" and not orders.admin
    assert orders.can("read", "stock/rope") and orders.can("write", "stock/rope")
    assert not orders.can("write", "config/gateway/routing")
    assert not orders.can("read", "stoc")  # a listing wider than the permission
    assert not orders.can("read", "")
    gateway = auth.caller(_request(GATEWAY))  # type: ignore[arg-type]
    assert gateway.can("read", "config/gateway/routing")
    assert not gateway.can("write", "config/gateway/routing")
    admin = auth.caller(_request(ADMIN))  # type: ignore[arg-type]
    assert admin.admin and admin.can("write", "anything") and admin.can("read", "")


def test_missing_malformed_and_unknown_tokens_are_401_with_a_challenge() -> None:
    auth = Authorizer(_document(), "yardarm-test")
    for request in (_request(None), _request(ADMIN, scheme="Basic"), _request("nope")):
        problem = _refusal(lambda r=request: auth.caller(r))  # type: ignore[misc]
        assert problem.status == 401
        assert problem.headers["WWW-Authenticate"] == 'Bearer realm="yardarm-test"'


def test_a_role_that_does_not_allow_it_is_403() -> None:
    auth = Authorizer(_document(), "t")
    problem = _refusal(lambda: auth.require(_request(GATEWAY), "write", "config/gateway/r"))  # type: ignore[arg-type]
    assert problem.status == 403 and "gateway may not write" in (problem.detail or "")
    assert _refusal(lambda: auth.require_admin(_request(ORDERS))).status == 403  # type: ignore[arg-type]
    assert auth.require(_request(ORDERS), "write", "stock/a").name == "orders"  # type: ignore[arg-type]


def test_the_document_refuses_undefined_roles_and_shared_tokens() -> None:
    with pytest.raises(ValidationError, match="undefined roles"):
        AccessDocument(roles={}, principals={"x": Principal(token_sha256=digest("t"), roles=["r"])})
    same = Principal(token_sha256=digest("t"), roles=["r"])
    with pytest.raises(ValidationError, match="share one token"):
        AccessDocument(roles={"r": Role()}, principals={"a": same, "b": same})


def test_the_document_holds_no_secret_and_tokens_are_private_files(tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    path.write_text(_document().model_dump_json())
    assert ADMIN not in path.read_text()
    assert AccessDocument.load(path) == _document()
    token_file = tmp_path / "creds" / "admin.token"
    write_token(token_file, ADMIN + "\n")
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert read_token(token_file) == ADMIN
    token_file.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(token_file)
