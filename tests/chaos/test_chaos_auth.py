"""Only the stack's admin may inject faults: the controller's API takes a bearer token."""

from __future__ import annotations

from pathlib import Path

import httpx
import schemathesis

from tests.chaos.conftest import replica_links, running_controller
from tests.conftest import free_port
from yardarm.credentials import ensure_credentials


def test_faults_need_the_admin_credential(tmp_path: Path) -> None:
    home = tmp_path / "home"
    creds = ensure_credentials(home)
    links = replica_links({"a": free_port(), "b": free_port()})
    token_file = creds.token_file("admin")
    with running_controller(home, links, admin_token_file=token_file) as controller:
        url = f"{controller.url}/faults"
        heal = {"action": "heal", "target": "all"}
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": f"Bearer {creds.token('orders')}"}):  # fmt: skip
            for method, body in (("GET", None), ("POST", heal), ("POST", {"action": "nope"})):
                answer = httpx.request(method, url, json=body, headers=headers, timeout=10)
                # Refused before the body is read: an anonymous caller learns nothing.
                assert answer.status_code == 401, answer.text
                assert answer.headers["WWW-Authenticate"] == 'Bearer realm="yardarm-chaos"'
                assert answer.headers["Content-Type"] == "application/problem+json"
        admin = {"Authorization": f"Bearer {creds.token('admin')}"}
        assert httpx.get(url, headers=admin, timeout=10).status_code == 200
        applied = httpx.post(url, json=heal, headers=admin, timeout=10)
        assert applied.status_code == 200 and applied.json()["total"] == 1
        # Probes and the API's description stay open.
        assert httpx.get(f"{controller.url}/readyz", timeout=10).status_code == 200
        doc = httpx.get(f"{controller.url}/openapi.json", timeout=10).json()
        assert doc["paths"]["/faults"]["post"]["security"] == [{"bearer": []}]
        schema = schemathesis.openapi.from_dict(doc)
        labels = sorted(result.ok().label for result in schema.get_all_operations())
        assert "POST /faults" in labels and "GET /faults" in labels
