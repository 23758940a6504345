"""What the chart makes: the objects the design names, for the release the values name."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.kubernetes.conftest import (
    CHART,
    RELEASE,
    Rendering,
    containers,
    env_of,
    pod_spec,
    render,
)

SERVICES = ("orders", "fulfillment")
TRACKS = ("stable", "canary", "baseline", "green")


def test_a_release_other_than_the_values_is_refused() -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        render(release="other")
    message = str(caught.value)
    assert "uv run yardarm chart --release other -o values.yaml" in message


def test_each_track_has_a_deployment_and_a_service_of_its_name(default: Rendering) -> None:
    for service in SERVICES:
        port = default.values[service]["port"]
        for track in TRACKS:
            name = f"{RELEASE}-{service}-{track}"
            deployment = default.get("Deployment", name)
            svc = default.get("Service", name)
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert labels["yardarm.dev/service"] == service
            assert labels["yardarm.dev/track"] == track
            assert svc["metadata"]["labels"]["yardarm.dev/track"] == track
            assert svc["spec"]["type"] == "ClusterIP"
            assert svc["spec"]["ports"] == [
                {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}
            ]
            # The Service reaches this track's pods and no other's.
            selector = svc["spec"]["selector"]
            assert selector.items() <= labels.items()
            assert selector["yardarm.dev/track"] == track


def test_the_primary_track_is_autoscaled_and_the_others_start_at_zero(
    default: Rendering,
) -> None:
    for service in SERVICES:
        values = default.values[service]
        primary = f"{RELEASE}-{service}-{values['primaryTrack']}"
        assert "replicas" not in default.get("Deployment", primary)["spec"]
        hpa = default.get("HorizontalPodAutoscaler", primary)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == primary
        assert hpa["spec"]["minReplicas"] == values["autoscaling"]["minReplicas"]
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        for track in ("canary", "baseline", "green"):
            assert (
                default.get("Deployment", f"{RELEASE}-{service}-{track}")["spec"]["replicas"] == 0
            )
    assert default.names("HorizontalPodAutoscaler") == {
        f"{RELEASE}-gateway",
        f"{RELEASE}-orders-stable",
        f"{RELEASE}-fulfillment-stable",
    }


def test_without_autoscaling_the_track_replicas_are_the_values(production: Rendering) -> None:
    name = f"{RELEASE}-fulfillment-stable"
    assert production.get("Deployment", name)["spec"]["replicas"] == 2
    assert name not in production.names("HorizontalPodAutoscaler")


def test_a_track_image_overrides_the_service_image() -> None:
    rendering = render({"orders": {"tracks": {"canary": {"image": "example/orders:0.3.0"}}}})
    canary = rendering.get("Deployment", f"{RELEASE}-orders-canary")
    stable = rendering.get("Deployment", f"{RELEASE}-orders-stable")
    assert containers(canary, init=False)[0]["image"] == "example/orders:0.3.0"
    assert containers(stable, init=False)[0]["image"] == "yardarm/orders:0.1.0"


def test_the_registry_prefixes_every_image(production: Rendering) -> None:
    registry = production.values["image"]["registry"]
    images = {c["image"] for m in production.manifests for c in containers(m)}
    assert images
    assert all(image.startswith(f"{registry}/yardarm/") for image in images), images


def test_the_gateway_serves_its_ports_and_is_probed_on_admin(production: Rendering) -> None:
    svc = production.get("Service", f"{RELEASE}-gateway")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {
        ("http", 8080),
        ("admin", 8081),
    }
    container = containers(production.get("Deployment", f"{RELEASE}-gateway"), init=False)[0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "admin": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


def test_the_datastore_is_a_parallel_statefulset_with_its_volume(
    production: Rendering,
) -> None:
    name = f"{RELEASE}-datastore"
    sts = production.get("StatefulSet", name)
    values = production.values["datastore"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["replicas"] == values["replicas"]
    assert sts["spec"]["serviceName"] == f"{name}-peers"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    container = containers(sts, init=False)[0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == production.values["mounts"]["state"]
    _, fields = env_of(container)
    assert fields == {
        "YARDARM_DATASTORE_INSTANCE": "metadata.name",
        "YARDARM_DATASTORE_POD_INDEX": "metadata.labels['apps.kubernetes.io/pod-index']",
    }
    peers = production.get("Service", f"{name}-peers")
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"] for p in peers["spec"]["ports"]} == {"http", "raft"}
    assert production.get("Service", name)["spec"]["type"] == "ClusterIP"


def test_an_empty_storage_class_is_left_to_the_cluster_default(default: Rendering) -> None:
    sts = default.get("StatefulSet", f"{RELEASE}-datastore")
    assert "storageClassName" not in sts["spec"]["volumeClaimTemplates"][0]["spec"]


def test_flags_and_topology_are_configmaps(default: Rendering) -> None:
    flags = default.get("ConfigMap", f"{RELEASE}-flags")
    assert flags["data"] == default.values["flags"]
    topology = default.get("ConfigMap", f"{RELEASE}-topology")
    assert json.loads(topology["data"]["topology.json"]) == json.loads(default.values["topology"])


def _secret(rendering: Rendering, name: str) -> dict[str, str]:
    data = rendering.get("Secret", name)["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def test_the_access_document_names_each_token_by_its_digest(default: Rendering) -> None:
    from yardarm_kit.access import AccessDocument

    secret = _secret(default, f"{RELEASE}-credentials")
    document = AccessDocument.model_validate_json(secret["access.json"])
    tokens = {
        "admin": secret["admin-token"],
        "orders": secret["orders.token"],
        "gateway": secret["gateway.token"],
    }
    for principal, token in tokens.items():
        assert len(token) >= 43  # at least 256 bits of letters and digits
        assert (
            document.principals[principal].token_sha256
            == hashlib.sha256(token.encode()).hexdigest()
        )
    assert set(document.principals) == set(tokens)
    assert document.roles["admin"].admin
    assert secret["raft-peer.secret"]
    assert len(set(tokens.values()) | {secret["raft-peer.secret"]}) == 4


def test_the_access_document_is_the_one_the_control_plane_would_issue(
    default: Rendering,
) -> None:
    from yardarm.credentials import access_document

    secret = _secret(default, f"{RELEASE}-credentials")
    tokens = {"admin": secret["admin-token"], "orders": secret["orders.token"],
              "gateway": secret["gateway.token"]}  # fmt: skip
    expected = access_document(tokens).model_dump(mode="json")
    assert json.loads(secret["access.json"]) == expected


def test_postgres_pgpass_carries_the_generated_password(default: Rendering) -> None:
    secret = _secret(default, f"{RELEASE}-postgres")
    user = default.values["postgres"]["user"]
    assert secret["pgpass"] == f"*:*:*:{user}:{secret['password']}\n"
    assert len(secret["password"]) >= 43


def test_existing_secrets_replace_the_generated_ones() -> None:
    rendering = render(
        {"credentials": {"existingSecret": "ops-tokens"}, "postgres": {"existingSecret": "ops-pg"}}
    )
    assert rendering.names("Secret") == set()
    names: set[str] = set()
    for manifest in rendering.manifests:
        spec = pod_spec(manifest)
        for volume in (spec or {}).get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                names.add(source["secret"]["name"])
    assert names == {"ops-tokens", "ops-pg"}


def _home_items(manifest: dict[str, Any]) -> set[str]:
    spec = pod_spec(manifest)
    assert spec is not None
    (projected,) = [v["projected"] for v in spec["volumes"] if "projected" in v]
    return {item["path"] for s in projected["sources"] for item in s["secret"]["items"]}


def test_each_pod_gets_only_the_credentials_it_reads(default: Rendering) -> None:
    expected = {
        ("Deployment", f"{RELEASE}-gateway"): {"admin-token", "credentials/gateway.token"},
        ("Deployment", f"{RELEASE}-orders-stable"): {
            "credentials/orders.token",
            "credentials/pgpass",
        },
        ("Deployment", f"{RELEASE}-fulfillment-canary"): {"credentials/pgpass"},
        ("StatefulSet", f"{RELEASE}-datastore"): {
            "credentials/access.json",
            "credentials/raft-peer.secret",
        },
        ("Deployment", f"{RELEASE}-controller"): {"admin-token"},
        ("Job", f"{RELEASE}-init"): {"admin-token", "credentials/pgpass"},
    }
    for (kind, name), items in expected.items():
        manifest = default.get(kind, name)
        assert _home_items(manifest) == items, name
        # A service's home holds exactly the files its settings name.
        values, _ = env_of(containers(manifest, init=False)[0])
        home = default.values["mounts"]["home"]
        named = {v.split("passfile=")[-1] for v in values.values() if home in v}
        named = {path.removeprefix(f"{home}/") for path in named}
        if kind == "Job" or name.endswith("-controller"):
            assert named <= items, name  # they read the admin token at its usual place
        else:
            assert named == items, name


def test_the_home_is_copied_owner_only_for_asyncpg(default: Rendering, tmp_path: Path) -> None:
    """A Secret volume under fsGroup is group-readable, and asyncpg skips such a pgpass:
    the `home` init container's own command, run here on a copy of the projection,
    writes each item 0600 (folders 0700) where the service reads it."""
    orders = default.get("Deployment", f"{RELEASE}-orders-stable")
    spec = pod_spec(orders)
    assert spec is not None
    (init,) = spec["initContainers"]
    home = default.values["mounts"]["home"]
    python, flag, script, source, target, *items = init["command"]
    assert (python, flag, source, target) == ("python", "-c", f"{home}-secrets", home)
    assert sorted(items) == sorted(_home_items(orders))
    secrets, copied = tmp_path / "secrets", tmp_path / "home"
    for item in items:
        (secrets / item).parent.mkdir(parents=True, exist_ok=True)
        (secrets / item).write_text(f"{item}-content")
        (secrets / item).chmod(0o440)
    copied.mkdir()
    subprocess.run([sys.executable, "-c", script, str(secrets), str(copied), *items], check=True)
    for item in items:
        path = copied / item
        assert path.read_text() == f"{item}-content"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, item
        if path.parent != copied:
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, item
        assert path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO) == 0  # asyncpg's test
    main = containers(orders, init=False)[0]
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts[home]["readOnly"] is True
    home_volume = next(v for v in spec["volumes"] if v["name"] == mounts[home]["name"])
    assert home_volume["emptyDir"]["medium"] == "Memory"
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert init_mounts[home] == home_volume["name"]


def test_the_init_job_is_a_post_hook_that_prepares_the_data(default: Rendering) -> None:
    job = default.get("Job", f"{RELEASE}-init")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    command = containers(job, init=False)[0]["command"]
    assert command[:5] == ["yardarm", "init", "data", "--home", "/run/yardarm"]
    pg = default.values["postgres"]
    dsn = command[command.index("--postgres") + 1]
    assert dsn == (
        f"postgresql://{pg['user']}@{pg['host']}:{pg['port']}/postgres"
        "?passfile=/run/yardarm/credentials/pgpass"
    )
    datastores = [command[i + 1] for i, arg in enumerate(command) if arg == "--datastore"]
    assert datastores == default.values["init"]["datastoreUrls"]
    databases = [command[i + 1] for i, arg in enumerate(command) if arg == "--database"]
    assert databases == ["orders", "fulfillment"]


def test_the_controller_may_write_only_the_charts_deployments(default: Rendering) -> None:
    role = default.get("Role", f"{RELEASE}-controller")
    writes = [r for r in role["rules"] if {"patch", "update"} & set(r["verbs"])]
    (write,) = writes
    assert set(write["resources"]) == {"deployments", "deployments/scale"}
    assert set(write["resourceNames"]) == {
        f"{RELEASE}-gateway",
        *(f"{RELEASE}-{s}-{t}" for s in SERVICES for t in TRACKS),
    }
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        if rule is not write:
            assert set(rule["verbs"]) == {"get", "list", "watch"}
    assert default.of_kind("ClusterRole") == [] and default.of_kind("ClusterRoleBinding") == []
    binding = default.get("RoleBinding", f"{RELEASE}-controller")
    assert binding["subjects"][0]["name"] == f"{RELEASE}-controller"


def test_the_controller_alone_reaches_the_api_server(default: Rendering) -> None:
    controller = default.get("Deployment", f"{RELEASE}-controller")
    container = containers(controller, init=False)[0]
    assert container["command"] == ["python", "-m", "yardarm.kubernetes.controller"]
    values, fields = env_of(container)
    assert values == {
        "YARDARM_K8S_RELEASE": RELEASE,
        "YARDARM_K8S_TOPOLOGY_FILE": "/etc/yardarm/topology/topology.json",
        "YARDARM_K8S_PROMETHEUS_URL": "",
    }
    assert fields == {"YARDARM_K8S_NAMESPACE": "metadata.namespace"}
    for manifest in default.manifests:
        spec = pod_spec(manifest)
        if spec is not None:
            expected = manifest is controller
            assert spec["automountServiceAccountToken"] is expected, manifest["metadata"]["name"]
    assert default.get("ServiceAccount", f"{RELEASE}-controller")


def test_disabled_parts_are_left_out() -> None:
    off = {"enabled": False}
    rendering = render(
        {"controller": off, "init": off, "podDisruptionBudget": off, "networkPolicy": off}
    )
    kinds = {m["kind"] for m in rendering.manifests}
    assert not kinds & {"Role", "RoleBinding", "ServiceAccount", "Job"}
    assert not kinds & {"PodDisruptionBudget", "NetworkPolicy"}
    assert f"{RELEASE}-controller" not in rendering.names("Deployment")


def test_disruption_budgets_keep_a_pod_only_where_there_are_two(
    default: Rendering, production: Rendering
) -> None:
    datastore = default.get("PodDisruptionBudget", f"{RELEASE}-datastore")
    assert datastore["spec"] == {"maxUnavailable": 1, "selector": datastore["spec"]["selector"]}
    # Defaults: orders autoscales from 2 (keep one), the gateway and fulfillment from 1.
    assert (
        default.get("PodDisruptionBudget", f"{RELEASE}-orders-stable")["spec"]["minAvailable"] == 1
    )
    for name in (f"{RELEASE}-gateway", f"{RELEASE}-fulfillment-stable"):
        spec = default.get("PodDisruptionBudget", name)["spec"]
        assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec, name
    # Production: 2 gateways (autoscaled from 2) and 2 fulfillment pods (not autoscaled).
    for name in (f"{RELEASE}-gateway", f"{RELEASE}-fulfillment-stable"):
        assert production.get("PodDisruptionBudget", name)["spec"]["minAvailable"] == 1, name
    for budget in default.of_kind("PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [
            m
            for m in default.manifests
            if m["kind"] in ("Deployment", "StatefulSet")
            and selector.items() <= m["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, budget["metadata"]["name"]


def test_service_monitors_scrape_each_metrics_port(production: Rendering) -> None:
    monitors = {m["metadata"]["name"]: m for m in production.of_kind("ServiceMonitor")}
    jobs = {"gateway": "gateway", "orders": "orders", "fulfillment": "fulfillment",
            "datastore": "datastore", "controller": "rollouts"}  # fmt: skip
    assert set(monitors) == {f"{RELEASE}-{s}" for s in jobs}
    for name, monitor in monitors.items():
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["honorLabels"] is True
        # The job is named as on every other target: the rules select on it.
        job = jobs[name.removeprefix(f"{RELEASE}-")]
        assert endpoint["relabelings"] == [
            {"action": "replace", "targetLabel": "job", "replacement": job},
            {"action": "replace", "targetLabel": "environment", "replacement": "local"},
        ]
        assert endpoint["path"] == "/metrics"
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s
            for s in production.of_kind("Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert services, name
        for service in services:
            port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
            expected = 8081 if name.endswith("gateway") else port["port"]
            assert port["port"] == expected
            assert not service["metadata"]["name"].endswith("-peers")  # scraped once


def test_monitoring_objects_are_off_by_default(default: Rendering) -> None:
    """The Prometheus Operator's CRDs may not exist in the cluster."""
    assert default.of_kind("ServiceMonitor") == []
    assert default.of_kind("PrometheusRule") == []


def test_the_rules_copy_is_the_projects_rules() -> None:
    source = CHART.parents[1] / "observability" / "prometheus" / "rules"
    expected = {p.name: p.read_text() for p in sorted(source.glob("*.yml"))}
    copied = {p.name: p.read_text() for p in sorted((CHART / "files" / "rules").glob("*.yml"))}
    assert copied == expected, (
        "charts/yardarm/files/rules/ differs from observability/prometheus/rules/: copy them"
    )


def test_the_prometheus_rule_holds_every_group(production: Rendering) -> None:
    source = CHART / "files" / "rules"
    groups = [
        g for p in sorted(source.glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]
    ]
    (rule,) = production.of_kind("PrometheusRule")
    assert rule["spec"]["groups"] == groups


def test_notes_say_how_to_reach_the_gateway_and_the_admin_token(default: Rendering) -> None:
    assert f"port-forward svc/{RELEASE}-gateway 8080:8080" in default.notes
    assert f"get secret {RELEASE}-credentials" in default.notes
    assert "admin-token" in default.notes


def test_spans_go_to_the_otlp_endpoint_only_when_set(
    default: Rendering, production: Rendering
) -> None:
    endpoint = production.values["otlp"]["endpoint"]
    for rendering, expected in ((default, None), (production, endpoint)):
        for manifest in rendering.manifests:
            for container in containers(manifest, init=False):
                values, _ = env_of(container)
                assert values.get("OTEL_EXPORTER_OTLP_ENDPOINT") == expected, manifest["metadata"][
                    "name"
                ]


def test_pods_outlive_their_drain(default: Rendering) -> None:
    """The drain (delay 5 s behind a readiness probe of 2 s x 2, then up to the
    services' drain timeout) ends before the kubelet's SIGKILL."""
    from yardarm_kit.settings import ServiceSettings

    timeout = ServiceSettings.model_fields["drain_timeout_s"].default
    for manifest in default.manifests:
        spec = pod_spec(manifest)
        if spec is None or manifest["kind"] == "Job":
            continue
        container = containers(manifest, init=False)[0]
        readiness = container["readinessProbe"]
        assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 5
        values, _ = env_of(container)
        delay = [float(v) for k, v in values.items() if k.endswith("_DRAIN_DELAY_S")]
        assert delay in ([5.0], []), manifest["metadata"]["name"]
        assert spec["terminationGracePeriodSeconds"] > 5 + timeout
