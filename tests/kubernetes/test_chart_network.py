"""The NetworkPolicies let through exactly the architecture's paths: each (client, server,
port) is evaluated the way a CNI does, from the rendered policies and the pods' labels."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kubernetes.conftest import RELEASE, Rendering, render

# A pod outside the release (a user's client), and Prometheus in another namespace.
OUTSIDER = ("other", {"app": "client"}, {"kubernetes.io/metadata.name": "other"})
PROMETHEUS = (
    "monitoring",
    {"app.kubernetes.io/name": "prometheus"},
    {"kubernetes.io/metadata.name": "monitoring"},
)
HTTP = {"gateway": 8080, "orders": 8100, "fulfillment": 8110, "datastore": 8090}
ADMIN, RAFT, CONTROLLER = 8081, 8140, 8126

ALLOWED = {
    ("outsider", "gateway", HTTP["gateway"]),
    ("gateway", "orders", HTTP["orders"]),
    ("gateway", "datastore", HTTP["datastore"]),
    ("orders", "datastore", HTTP["datastore"]),
    ("datastore", "datastore", HTTP["datastore"]),
    ("datastore", "datastore", RAFT),
    ("controller", "gateway", ADMIN),
    ("controller", "datastore", HTTP["datastore"]),
    ("controller", "orders", HTTP["orders"]),
    ("controller", "fulfillment", HTTP["fulfillment"]),
    ("init", "datastore", HTTP["datastore"]),
    ("prometheus", "gateway", ADMIN),
    ("prometheus", "orders", HTTP["orders"]),
    ("prometheus", "fulfillment", HTTP["fulfillment"]),
    ("prometheus", "datastore", HTTP["datastore"]),
    ("prometheus", "controller", CONTROLLER),
    # The gateway's public port is open to every client, inside the release too.
    *((client, "gateway", HTTP["gateway"]) for client in
      ("gateway", "orders", "fulfillment", "datastore", "controller", "init", "prometheus")),
}  # fmt: skip


def _pods(rendering: Rendering) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    """Each component's pod: (namespace, labels, namespace labels)."""
    namespace = {"kubernetes.io/metadata.name": "yardarm"}
    pods: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {}
    for manifest in rendering.manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet", "Job"):
            labels = manifest["spec"]["template"]["metadata"]["labels"]
            pods.setdefault(labels["app.kubernetes.io/component"], ("yardarm", labels, namespace))
    pods["outsider"] = OUTSIDER
    pods["prometheus"] = PROMETHEUS
    return pods


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # the chart uses matchLabels only
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def _peer_matches(peer: dict[str, Any], client: tuple[str, dict[str, str], dict[str, str]]) -> bool:
    namespace, labels, namespace_labels = client
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif namespace != "yardarm":
        return False
    return _matches(peer.get("podSelector", {}), labels)


def allowed(rendering: Rendering, client: str, server: str, port: int) -> bool:
    """Whether NetworkPolicy lets `client` reach `server` on TCP `port`."""
    pods = _pods(rendering)
    _, labels, _ = pods[server]
    policies = [
        p
        for p in rendering.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True  # not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and not any(
                p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports
            ):
                continue
            peers = rule.get("from")
            if peers is None or any(_peer_matches(peer, pods[client]) for peer in peers):
                return True
    return False


def test_only_the_architectures_paths_are_open(default: Rendering) -> None:
    pods = _pods(default)
    servers = [name for name in pods if name not in ("outsider", "prometheus")]
    ports = {*HTTP.values(), ADMIN, RAFT, CONTROLLER}
    open_paths = {
        (client, server, port)
        for client in pods
        for server in servers
        for port in ports
        if allowed(default, client, server, port)
    }
    assert open_paths == ALLOWED


@pytest.mark.parametrize(
    ("client", "server", "port"),
    [
        ("outsider", "orders", HTTP["orders"]),
        ("outsider", "datastore", HTTP["datastore"]),
        ("outsider", "gateway", ADMIN),
        ("gateway", "fulfillment", HTTP["fulfillment"]),
        ("fulfillment", "datastore", HTTP["datastore"]),
        ("orders", "datastore", RAFT),
        ("init", "orders", HTTP["orders"]),
    ],
)
def test_paths_outside_the_architecture_are_closed(
    default: Rendering, client: str, server: str, port: int
) -> None:
    assert not allowed(default, client, server, port)


def test_every_pod_of_the_release_is_isolated(default: Rendering) -> None:
    deny = default.get("NetworkPolicy", f"{RELEASE}-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny["spec"]
    for name, (_, labels, _) in _pods(default).items():
        if name not in ("outsider", "prometheus"):
            assert _matches(deny["spec"]["podSelector"], labels), name


def test_without_policies_everything_is_open() -> None:
    rendering = render({"networkPolicy": {"enabled": False}})
    assert allowed(rendering, "outsider", "datastore", HTTP["datastore"])
