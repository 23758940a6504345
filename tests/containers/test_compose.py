"""compose.yaml: rendered from the deployment model, committed up to date, valid for the
compose specification and for docker-compose, and self-consistent: every address a
service dials is a service of the project listening there, every file it reads is
mounted, and nothing is published beyond loopback.

The consistency checks read the compose document alone (not the renderer's target), so
a wrong address in the target cannot make both sides agree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema_rs
import yaml
from typer.testing import CliRunner

from tests.integration.conftest import require_docker_compose
from yardarm.cli import app
from yardarm.containers import compose
from yardarm.containers.target import ContainerTarget
from yardarm.model import Topology, deployment, instance_settings, load_topology

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
SERVICES = ("gateway", "orders", "fulfillment", "datastore")
STANDARD_PORTS = {"nats": 4222, "postgres": 5432}

runner = CliRunner()


def _render(topology: Topology | None = None, **options: Any) -> compose.ComposeProject:
    return compose.render(topology or Topology(), compose.project_images(ROOT), **options)


def _committed() -> dict[str, Any]:
    return compose.load(ROOT / compose.COMPOSE_FILE)


def _instances(document: dict[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """Each service instance of the project: its compose name -> (service, settings)."""
    found = {}
    for name, service in document["services"].items():
        env = service.get("environment") or {}
        for svc in SERVICES:
            if f"YARDARM_{svc.upper()}_INSTANCE" in env:
                found[name] = (svc, {k: str(v).replace("$$", "$") for k, v in env.items()})
    return found


def _listens(document: dict[str, Any]) -> dict[str, set[int]]:
    """The ports each compose service listens on, from its own settings."""
    ports: dict[str, set[int]] = {name: set() for name in document["services"]}
    for name, (svc, env) in _instances(document).items():
        prefix = f"YARDARM_{svc.upper()}_"
        for key in ("PORT", "ADMIN_PORT", "RAFT_PORT"):
            if prefix + key in env:
                ports[name].add(int(env[prefix + key]))
    for name, port in STANDARD_PORTS.items():
        ports[name].add(port)
    return ports


def _dialed(env: dict[str, str]) -> list[str]:
    """Every host:port an instance's settings point it at."""
    found: list[str] = []
    for key, value in env.items():
        if key.endswith(("_URLS", "UPSTREAMS", "PEERS")):
            found += [
                urlsplit(url).netloc if "//" in url else url
                for url in re.findall(r'"((?:https?://)?[a-z0-9-]+:\d+)"', value)
            ]
        elif key.endswith(("_URL", "DATABASE_URL")):
            found.append(urlsplit(value).netloc.rpartition("@")[2])
    return found


def test_the_committed_project_is_what_the_model_renders() -> None:
    project = _render()
    assert compose.stale(project, ROOT) == [], "run `uv run yardarm compose`"
    # It is the whole stack: an instance per replica of each service, and the rest.
    instances = _instances(project.document)
    topology = Topology()
    for svc in SERVICES:
        replicas = topology.services.spec(svc).replicas
        assert sum(1 for s, _ in instances.values() if s == svc) == replicas, svc
    expected = {"init-credentials", "init-data", "postgres", "nats", "otel-collector", "jaeger",
                "loki", "prometheus", "grafana"}  # fmt: skip
    assert expected <= set(project.document["services"])


def test_the_compose_file_is_valid_for_the_compose_specification() -> None:
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))
    for document in (_committed(), _render(observability=False).document):
        assert [error.message for error in validator.iter_errors(document)] == []
    broken = _committed()
    broken["services"]["orders-0"]["restrat"] = "always"
    assert any("restrat" in error.message for error in validator.iter_errors(broken))


def test_every_address_a_service_dials_is_a_service_listening_there() -> None:
    document = _committed()
    listens = _listens(document)
    instances = _instances(document)
    assert instances
    checked = 0
    for name, (_svc, env) in instances.items():
        for address in _dialed(env):
            host, _, port = address.rpartition(":")
            assert host in document["services"], f"{name} dials {address}: no such service"
            assert int(port) in listens[host], (
                f"{name} dials {address}: {host} listens on {listens[host]}"
            )
            checked += 1
    # The gateway reaches both orders replicas and the three datastore replicas, the
    # datastores reach each other, orders and fulfillment their dependencies.
    assert checked >= 20


def test_every_file_a_service_reads_is_mounted() -> None:
    document = _committed()
    for name, (_svc, env) in _instances(document).items():
        service = document["services"][name]
        mounts = [volume.split(":")[1] for volume in service["volumes"]]
        paths = [v for k, v in env.items() if k.endswith(("_FILE", "_DIR"))]
        for value in env.values():
            if value.startswith("postgresql://"):
                paths += parse_qs(urlsplit(value).query)["passfile"]
        assert paths
        for path in paths:
            assert any(path == m or path.startswith(m + "/") for m in mounts), (name, path)
        flags = next(v for k, v in env.items() if k.endswith("_FLAGS_FILE"))
        source = next(v.split(":")[0] for v in service["volumes"] if v.split(":")[1] in flags)
        assert (ROOT / source / Path(flags).name).is_file(), flags
        assert service["read_only"] is True


def test_only_loopback_is_published() -> None:
    published = [
        (name, port)
        for name, service in _committed()["services"].items()
        for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} == {"gateway-0", "jaeger", "prometheus", "grafana"}
    assert all(port.startswith("127.0.0.1:") for _, port in published), published


def test_prometheus_scrapes_every_instance_where_it_serves_metrics() -> None:
    document = _committed()
    config = yaml.safe_load((ROOT / compose.FILES_DIR / "prometheus.yml").read_text())
    scraped = {
        group["labels"]["instance"]: group["targets"][0]
        for job in config["scrape_configs"]
        for group in job["static_configs"]
    }
    for name, (svc, env) in _instances(document).items():
        key = "ADMIN_PORT" if svc == "gateway" else "PORT"
        assert scraped[name] == f"{name}:{env[f'YARDARM_{svc.upper()}_{key}']}"
    mounted = [v for v in document["services"]["prometheus"]["volumes"] if "prometheus.yml" in v]
    assert mounted == [f"./{compose.FILES_DIR}/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]


def test_a_pinning_version_gets_its_own_flag_file(tmp_path: Path) -> None:
    config = tmp_path / "yardarm.yaml"
    config.write_text(
        "services:\n  orders:\n    tracks:\n      canary: {replicas: 1, version: 0.3.0-errors}\n"
    )
    project = _render(load_topology(config), observability=False)
    env = project.document["services"]["orders-canary-0"]["environment"]
    assert env["YARDARM_ORDERS_FLAGS_FILE"] == "/etc/yardarm/flags/orders-0.3.0-errors.json"
    pinned = json.loads(project.files["compose/flags/orders-0.3.0-errors.json"])
    assert pinned["flags"]["fault.error-rate"]["defaultVariant"] == "high"
    stable = json.loads(project.files["compose/flags/flags.json"])
    assert stable["flags"]["fault.error-rate"]["defaultVariant"] != "high"
    assert "otel-collector" not in project.document["services"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env


def test_compose_check_and_write(tmp_path: Path) -> None:
    out = tmp_path / "stack"
    stale = runner.invoke(app, ["compose", "--check", "--output", str(out)])
    assert stale.exit_code == 1
    assert "differs from the model" in " ".join(stale.output.split())
    wrote = runner.invoke(app, ["compose", "--output", str(out)])
    assert wrote.exit_code == 0, wrote.output
    assert runner.invoke(app, ["compose", "--check", "--output", str(out)]).exit_code == 0
    # observability/ is mounted relative to wherever the file is written.
    collector = compose.load(out / "compose.yaml")["services"]["otel-collector"]
    source = collector["volumes"][0].split(":")[0]
    assert (out / source).resolve() == ROOT / "observability/otel-collector/config.yaml"


def test_tls_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "yardarm.yaml"
    config.write_text("tls: {enabled: true}\n")
    result = runner.invoke(app, ["compose", "--config", str(config), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "tls" in result.output and "not supported by the container target" in result.output
    assert not (tmp_path / "compose.yaml").exists()


def test_docker_compose_accepts_it_and_reads_the_models_settings() -> None:
    """docker-compose's own reading (interpolation, `$$` unescaped) gives every instance
    exactly the settings the deployment model renders for it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARDARM_IMAGE_")}
    result = subprocess.run(
        [require_docker_compose(), "-f", compose.COMPOSE_FILE, "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    read = yaml.safe_load(result.stdout)
    assert read["services"]["postgres"]["image"] == "postgres:16"
    planned = deployment(Topology())
    target = ContainerTarget(planned)
    for inst in planned.instances:
        environment = read["services"][inst.name]["environment"]
        settings = {k: v for k, v in environment.items() if k.startswith("YARDARM_")}
        assert settings == instance_settings(planned, inst, target), inst.name
