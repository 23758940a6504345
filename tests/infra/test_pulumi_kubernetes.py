"""The Pulumi program under Pulumi's mocks: what each stack declares, and the values it
hands the yardarm chart checked against the deployment model (no CLI, no cluster).

Under mocks a `helm.v4.Chart` is one opaque resource (nothing is rendered), so these
tests assert on its inputs; the chart itself is tested on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pulumi
import pytest
import yaml
from pulumi.runtime import MockResourceArgs
from yardarm_infra import pins
from yardarm_infra.config import ConfigError
from yardarm_infra.dependencies import pgpass_line
from yardarm_infra.program import ROOT, main
from yardarm_infra.rollout_owned import (
    CONTAINERS,
    DEPLOYMENT,
    POD_LABELS,
    REPLICAS,
    ignore_rollout_owned,
    rollout_owned_fields,
)

from tests.infra.conftest import Recorder as BaseRecorder
from yardarm.images.specs import SERVICE_IMAGES
from yardarm.model import ROLLABLE, Topology
from yardarm.observability.stack import JAEGER_IMAGE, PROMETHEUS_UID

CHART = "kubernetes:helm.sh/v4:Chart"
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how Pulumi marks a secret value
PASSWORD = "pa:ss\\word"


class Recorder(BaseRecorder):
    """Every resource the program registers, with its inputs."""

    def chart(self, name: str) -> MockResourceArgs:
        (found,) = [r for r in self.of_type(CHART) if r.name == name]
        return found


def run(monkeypatch: pytest.MonkeyPatch, **config: str) -> Recorder:
    """The program run under mocks with stack config `yardarm:<key>` = value."""
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({f"yardarm:{k}": v for k, v in config.items()}))
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, preview=False)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> None:
        main(ROOT)

    program()
    return recorder


def strings(value: Any) -> Iterator[str]:
    """Every string in a nested document, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def unsecret(value: Any) -> Any:
    """A secret-wrapped input's plain value (asserting it is secret)."""
    assert isinstance(value, dict) and SECRET_SIG in value, f"not marked secret: {value!r}"
    return value["value"]


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    yield run(monkeypatch, target="kubernetes", postgresPassword=PASSWORD)


def yardarm_values(recorder: Recorder, release: str = "yardarm") -> dict[str, Any]:
    values = recorder.chart(release).inputs["values"]
    assert isinstance(values, dict)
    return values


def test_the_stack_lives_in_its_namespace(stack: Recorder) -> None:
    (namespace,) = stack.of_type("kubernetes:core/v1:Namespace")
    assert namespace.inputs["metadata"]["name"] == "yardarm"
    namespaced = [r for r in stack.resources if r.custom and r.typ != namespace.typ]
    assert namespaced
    assert all(r.inputs["metadata"]["namespace"] == "yardarm" for r in namespaced)
    assert all(c.inputs["namespace"] == "yardarm" for c in stack.of_type(CHART))


def test_dependencies_are_pinned_upstream_charts(stack: Recorder) -> None:
    nats = stack.chart("yardarm-nats")
    assert nats.inputs["chart"] == "nats"
    assert nats.inputs["version"] == pins.NATS.version == "2.14.2"
    assert nats.inputs["repositoryOpts"]["repo"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert nats.inputs["values"]["config"]["jetstream"]["enabled"] is True
    postgres = stack.chart("yardarm-postgresql")
    assert postgres.inputs["chart"] == "oci://registry-1.docker.io/bitnamicharts/postgresql"
    assert postgres.inputs["version"] == "16.7.27"
    values = postgres.inputs["values"]
    auth = values["auth"]
    # The init job creates the services' databases as the yardarm user: the image creates
    # the chart's `auth.username` with CREATEDB, so it must be that user, and no
    # first-start script (which would block every start while it fails) is needed.
    assert (auth["username"], auth["database"]) == ("yardarm", "postgres")
    assert auth["existingSecret"] == "yardarm-postgres"
    assert "initdb" not in values["primary"]
    assert values["primary"]["service"]["ports"]["postgresql"] == 5432


def test_the_postgres_secret_holds_the_password_as_a_secret(stack: Recorder) -> None:
    (secret,) = stack.of_type("kubernetes:core/v1:Secret")
    assert secret.inputs["metadata"]["name"] == "yardarm-postgres"
    data = unsecret(secret.inputs["stringData"])
    assert data["password"] == data["postgres-password"] == PASSWORD
    # libpq's escapes: a ':' or '\' in the password is preceded by '\'.
    assert data["pgpass"] == "*:*:*:yardarm:pa\\:ss\\\\word\n"
    # The chart's keys are the ones the Secret has.
    keys = stack.chart("yardarm-postgresql").inputs["values"]["auth"]["secretKeys"]
    assert {keys["adminPasswordKey"], keys["userPasswordKey"]} <= set(data)
    # Nowhere else: no chart's values carry it.
    for chart in stack.of_type(CHART):
        assert not [text for text in strings(chart.inputs["values"]) if PASSWORD in text]


def test_pgpass_line_matches_any_host_port_and_database_for_the_yardarm_user() -> None:
    assert pgpass_line("plain") == "*:*:*:yardarm:plain\n"


def test_observability_charts_are_pinned_and_named_as_the_files_expect(stack: Recorder) -> None:
    expected = {
        "monitoring": ("kube-prometheus-stack", "79.0.0"),
        "jaeger": ("jaeger", "4.11.1"),
        "loki": ("loki", "6.29.0"),
        "otel-collector": ("opentelemetry-collector", "0.145.0"),
    }
    for name, (chart, version) in expected.items():
        inputs = stack.chart(name).inputs
        assert (inputs["chart"], inputs["version"]) == (chart, version)
        assert inputs["repositoryOpts"]["repo"].startswith("https://")
        assert inputs["values"]["fullnameOverride"] == name
    # The collector runs the config `yardarm observability` renders, whose exporters
    # name the Jaeger and Loki Services above.
    rendered = yaml.safe_load((ROOT / "observability/otel-collector/config.yaml").read_text())
    collector = stack.chart("otel-collector").inputs["values"]
    assert collector["alternateConfig"] == rendered
    assert rendered["exporters"]["otlp_grpc/jaeger"]["endpoint"].startswith("jaeger:")
    assert urlsplit(rendered["exporters"]["otlp_http/loki"]["endpoint"]).hostname == "loki"
    # The collector's Service carries OTLP (the services' exporter) and no port the config
    # has no receiver for.
    ports = collector["ports"]  # the chart's `otlp` and `otlp-http` stay as they are
    assert set(ports) == {"jaeger-compact", "jaeger-thrift", "jaeger-grpc", "zipkin"}
    assert all(port == {"enabled": False} for port in ports.values())
    # Jaeger runs the release its config is written for, as the compose stack does.
    jaeger = stack.chart("jaeger").inputs["values"]
    image = jaeger["jaeger"]["image"]
    assert f"{image['repository']}:{image['tag']}" == JAEGER_IMAGE
    assert jaeger["userconfig"] == yaml.safe_load(
        (ROOT / "observability/jaeger/config.yaml").read_text()
    )
    # Prometheus selects the yardarm chart's ServiceMonitor and PrometheusRule (empty
    # selectors, not `release: monitoring`, which they do not carry).
    monitoring = stack.chart("monitoring").inputs["values"]
    spec = monitoring["prometheus"]["prometheusSpec"]
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    assert spec["ruleSelectorNilUsesHelmValues"] is False
    assert not spec.get("serviceMonitorSelector") and not spec.get("ruleSelector")
    # Grafana: the Prometheus datasource's UID is the one the dashboards name, and the
    # sidecar loads the dashboard ConfigMaps' label.
    grafana = monitoring["grafana"]
    assert grafana["fullnameOverride"] == "grafana"
    assert grafana["sidecar"]["datasources"]["uid"] == PROMETHEUS_UID
    dashboards = grafana["sidecar"]["dashboards"]
    assert (dashboards["enabled"], dashboards["label"], dashboards["labelValue"]) == (
        True, "grafana_dashboard", "1",
    )  # fmt: skip


def test_each_dashboard_is_a_labelled_config_map(stack: Recorder) -> None:
    files = sorted((ROOT / "observability/dashboards").glob("*.json"))
    maps = stack.of_type("kubernetes:core/v1:ConfigMap")
    assert len(files) == len(maps) > 0
    by_key = {key: m for m in maps for key in m.inputs["data"]}
    for path in files:
        config_map = by_key[path.name]
        assert config_map.inputs["metadata"]["labels"] == {"grafana_dashboard": "1"}
        assert config_map.inputs["data"][path.name] == path.read_text()


def test_the_yardarm_chart_gets_the_models_replicas_and_images(stack: Recorder) -> None:
    chart = stack.chart("yardarm")
    assert chart.inputs["chart"] == str(ROOT / "charts/yardarm")
    assert chart.inputs["name"] == "yardarm"
    values = yardarm_values(stack)
    topology = Topology()
    for service in ROLLABLE:
        spec = topology.services.spec(service)
        tracks = values[service]["tracks"]
        assert values[service]["primaryTrack"] == spec.track
        assert tracks[spec.track]["replicas"] == spec.replicas
        assert {t: tracks[t]["replicas"] for t in tracks if t != spec.track} == {
            "canary": 0, "baseline": 0, "green": 0,
        }  # fmt: skip
    assert values["gateway"]["replicas"] == topology.services.gateway.replicas
    assert values["datastore"]["replicas"] == topology.services.datastore.replicas
    for image in SERVICE_IMAGES:
        repository, _, tag = image.tags(ROOT)[0].rpartition(":")
        assert values["images"][image.name] == {"repository": repository, "tag": tag}


def test_services_reach_the_dependencies_the_program_configures(stack: Recorder) -> None:
    values = yardarm_values(stack)
    postgres_service = stack.chart("yardarm-postgresql").inputs["values"]["fullnameOverride"]
    nats_service = stack.chart("yardarm-nats").inputs["values"]["fullnameOverride"]
    for service in ROLLABLE:
        for track in values[service]["tracks"].values():
            env = track["env"]
            prefix = f"YARDARM_{service.upper()}_"
            assert urlsplit(env[prefix + "DATABASE_URL"]).hostname == postgres_service
            assert urlsplit(env[prefix + "NATS_URL"]).hostname == nats_service
    assert values["postgres"]["host"] == postgres_service
    (secret,) = stack.of_type("kubernetes:core/v1:Secret")
    assert values["postgres"]["existingSecret"] == secret.inputs["metadata"]["name"]


def test_the_yardarm_chart_reports_to_the_observability_stack(stack: Recorder) -> None:
    values = yardarm_values(stack)
    collector = stack.chart("otel-collector").inputs["values"]["fullnameOverride"]
    otlp = urlsplit(values["otlp"]["endpoint"])
    assert (otlp.hostname, otlp.port) == (f"{collector}.yardarm.svc", 4318)
    monitoring = stack.chart("monitoring").inputs["values"]["fullnameOverride"]
    prometheus = urlsplit(values["controller"]["prometheusUrl"])
    assert (prometheus.hostname, prometheus.port) == (f"{monitoring}-prometheus.yardarm.svc", 9090)
    assert values["serviceMonitor"]["enabled"] is True
    assert values["prometheusRule"]["enabled"] is True
    assert values["gateway"]["service"]["type"] == "ClusterIP"
    assert values["image"]["registry"] == ""


def test_settings_reach_the_chart(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = run(
        monkeypatch,
        postgresPassword=PASSWORD,
        namespace="shop",
        release="ya",
        imageRegistry="registry.example:5000/",
        gatewayServiceType="NodePort",
        observability="false",
    )
    values = yardarm_values(recorder, "ya")
    assert recorder.chart("ya").inputs["namespace"] == "shop"
    assert values["release"] == "ya"
    assert values["image"]["registry"] == "registry.example:5000"
    assert values["gateway"]["service"]["type"] == "NodePort"
    # Without the observability stack nothing points at it, and no Operator resources.
    assert {c.name for c in recorder.of_type(CHART)} == {"ya", "ya-nats", "ya-postgresql"}
    assert not recorder.of_type("kubernetes:core/v1:ConfigMap")
    assert values["otlp"]["endpoint"] == ""
    assert values["controller"]["prometheusUrl"] == ""
    assert values["serviceMonitor"]["enabled"] is False
    assert values["prometheusRule"]["enabled"] is False
    host = urlsplit(values["orders"]["tracks"]["stable"]["env"]["YARDARM_ORDERS_DATABASE_URL"])
    assert host.hostname == "ya-postgresql"


def test_a_yardarm_yaml_changes_the_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "yardarm.yaml"
    config.write_text("services:\n  orders:\n    replicas: 3\n")
    recorder = run(monkeypatch, postgresPassword=PASSWORD, config=str(config))
    orders = yardarm_values(recorder)["orders"]
    assert orders["tracks"][orders["primaryTrack"]]["replicas"] == 3
    assert orders["autoscaling"]["minReplicas"] == 3
    assert '"replicas":3' in yardarm_values(recorder)["topology"]


def test_a_bad_yardarm_yaml_is_refused_with_its_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "yardarm.yaml"
    config.write_text("services:\n  orders:\n    replicas: 0\n")
    with pytest.raises(ConfigError, match=r"yardarm:config: .*services\.orders\.replicas"):
        run(monkeypatch, postgresPassword=PASSWORD, config=str(config))


def test_a_missing_postgres_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"pulumi config set --secret yardarm:postgresPassword"):
        run(monkeypatch, target="kubernetes")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"target": "openstack"}, r"yardarm:target must be one of kubernetes, baremetal"),
        ({"gatewayServiceType": "Ingress"}, r"gatewayServiceType must be one of"),
        ({"release": "Yard_arm"}, r"yardarm:release must be a lowercase DNS label"),
        ({"observability": "maybe"}, r"yardarm:observability must be true or false"),
        ({"config": "missing.yaml"}, r"yardarm:config names 'missing.yaml', which is not a file"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        run(monkeypatch, postgresPassword=PASSWORD, **settings)


def deployment(name: str) -> pulumi.ResourceTransformArgs:
    """The transform's view of a Deployment the yardarm chart renders."""
    props = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "yardarm"},
        "spec": {"replicas": 0, "template": {"spec": {"containers": [{"name": "orders"}]}}},
    }
    return pulumi.ResourceTransformArgs(
        custom=True,
        type_=DEPLOYMENT,
        name=f"yardarm:yardarm/{name}",
        props=props,
        opts=pulumi.ResourceOptions(ignore_changes=["metadata.annotations"]),
    )


def ignored(transform: Any, args: pulumi.ResourceTransformArgs) -> list[str] | None:
    result = transform(args)
    if result is None:
        return None
    assert result.props == args.props  # only the options change
    return sorted(result.opts.ignore_changes or [])


def test_rollout_owned_fields_are_ignored_on_updates(stack: Recorder) -> None:
    values = yardarm_values(stack)
    transform = ignore_rollout_owned(rollout_owned_fields("yardarm", values))
    rollout = sorted(["metadata.annotations", REPLICAS, CONTAINERS, POD_LABELS])
    replicas_only = sorted(["metadata.annotations", REPLICAS])
    for service in ROLLABLE:
        assert ignored(transform, deployment(f"yardarm-{service}-stable")) == replicas_only
        for track in ("canary", "baseline", "green"):
            assert ignored(transform, deployment(f"yardarm-{service}-{track}")) == rollout
    assert ignored(transform, deployment("yardarm-gateway")) == replicas_only
    # Everything else is Pulumi's: other Deployments, and the datastore's StatefulSet.
    assert ignored(transform, deployment("yardarm-controller")) is None
    statefulset = deployment("yardarm-datastore")
    statefulset.type_ = "kubernetes:apps/v1:StatefulSet"
    assert ignored(transform, statefulset) is None


def test_the_chart_carries_the_rollout_owned_transform(stack: Recorder) -> None:
    chart = stack.chart("yardarm")
    (transform,) = chart.transforms or []
    assert ignored(transform, deployment("yardarm-orders-canary")) == sorted(
        ["metadata.annotations", REPLICAS, CONTAINERS, POD_LABELS]
    )
    assert ignored(transform, deployment("yardarm-orders-stable")) == sorted(
        ["metadata.annotations", REPLICAS]
    )
    # The dependency charts' workloads are theirs to manage.
    assert not stack.chart("yardarm-postgresql").transforms
