"""The control plane issues every credential; the datastore's document holds no secret."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from yardarm_kit.access import AccessDocument, digest

from yardarm.credentials import PRINCIPALS, ROLES, ensure_credentials
from yardarm.local.render import instances, write_chaos_config
from yardarm.model import Topology


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_private_stable_and_named_by_digest(tmp_path: Path) -> None:
    creds = ensure_credentials(tmp_path)
    tokens = {name: creds.token(name) for name in PRINCIPALS}
    assert len(set(tokens.values())) == len(PRINCIPALS)
    assert all(len(token) >= 40 for token in tokens.values())
    assert _mode(creds.directory) == 0o700
    for name in PRINCIPALS:
        assert _mode(creds.token_file(name)) == 0o600
    assert _mode(creds.peer_secret_file) == 0o600
    assert creds.token_file("admin") == tmp_path / "admin-token"

    document = AccessDocument.load(creds.access_file)
    text = creds.access_file.read_text()
    assert not any(token in text for token in tokens.values())
    assert creds.peer_secret_file.read_text() not in text
    assert {n: p.token_sha256 for n, p in document.principals.items()} == {
        n: digest(t) for n, t in tokens.items()
    }
    assert document.roles == ROLES
    # A restart keeps every credential (running services hold them).
    again = ensure_credentials(tmp_path)
    assert {name: again.token(name) for name in PRINCIPALS} == tokens
    assert AccessDocument.load(again.access_file) == document


def test_least_privilege_roles() -> None:
    orders = ROLES["orders"]
    assert not orders.admin
    assert [(p.prefix, p.access) for p in orders.permissions] == [("stock/", "readwrite")]
    gateway = ROLES["gateway"]
    assert [(p.prefix, p.access) for p in gateway.permissions] == [("config/gateway/", "read")]
    assert ROLES["admin"].admin
    # Only the admin may write config/ and rollouts/.
    writers = [
        name
        for name, role in ROLES.items()
        if role.admin
        or any(p.access != "read" and "config/".startswith(p.prefix) for p in role.permissions)
    ]
    assert writers == ["admin"]


def test_every_guarded_service_gets_its_credential_files(tmp_path: Path) -> None:
    topology = Topology()
    specs = {spec.name: spec for spec in instances(topology, tmp_path)}
    creds = ensure_credentials(tmp_path)
    for i in range(3):
        env = specs[f"datastore-{i}"].env
        assert env["YARDARM_DATASTORE_ACCESS_FILE"] == str(creds.access_file)
        assert env["YARDARM_DATASTORE_PEER_TOKEN_FILE"] == str(creds.peer_secret_file)
    for i in range(2):
        env = specs[f"orders-{i}"].env
        assert env["YARDARM_ORDERS_DATASTORE_TOKEN_FILE"] == str(creds.token_file("orders"))
    gateway = specs["gateway-0"].env
    assert gateway["YARDARM_GATEWAY_DATASTORE_TOKEN_FILE"] == str(creds.token_file("gateway"))
    assert gateway["YARDARM_GATEWAY_ADMIN_TOKEN_FILE"] == str(creds.token_file("admin"))
    # No service's environment carries a token: each reads its own from a file.
    for spec in specs.values():
        values = " ".join(spec.env.values())
        for principal in ("admin", "orders", "gateway"):
            assert creds.token(principal) not in values
    chaos = json.loads(write_chaos_config(topology, tmp_path).read_text())
    assert chaos["admin_token_file"] == str(creds.token_file("admin"))
    # /api/kv is authorized by the datastore itself, not by a gateway-side token.
    routes = json.loads(gateway["YARDARM_GATEWAY_ROUTES"])
    assert {r["prefix"]: r.get("admin_writes", False) for r in routes}["/api/kv"] is False
