"""The local stack's Prometheus as rendered: a config promtool accepts, one job per
service and one for the rollout controller, keeping their own labels, every instance a
target (a gateway replica on its admin port), rewritten when the desired state changes,
and none with --no-prometheus."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.observability.binaries import require_binary
from yardarm.local import prometheus
from yardarm.local.desired import write_desired
from yardarm.local.render import instances
from yardarm.model import Topology, desired_from, scaled

BASE = 24000


@pytest.fixture
def topology() -> Topology:
    return Topology(base_port=BASE, environment="ci")


def test_the_rendered_config_and_rules_pass_promtool(topology: Topology, tmp_path: Path) -> None:
    require_binary("prometheus")
    promtool = require_binary("promtool")
    specs = {spec.name: spec for spec in instances(topology, tmp_path)}
    spec = specs["prometheus"]
    assert spec.readiness_url == f"http://127.0.0.1:{BASE + 45}/-/ready"
    assert f"--web.listen-address=127.0.0.1:{BASE + 45}" in spec.command
    assert "--enable-feature=exemplar-storage" in spec.command
    config_file = prometheus.directory(tmp_path) / "prometheus.yml"
    checked = subprocess.run(
        [promtool, "check", "config", str(config_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout and "rule files found" in checked.stdout
    config = yaml.safe_load(config_file.read_text())
    assert config["global"]["scrape_interval"] == "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"gateway", "orders", "fulfillment", "datastore", "rollouts"}
    assert all(job["honor_labels"] for job in jobs.values())


def _targets(home: Path, service: str) -> dict[str, str]:
    groups = yaml.safe_load((prometheus.directory(home) / "targets" / f"{service}.yml").read_text())
    assert all(group["labels"]["environment"] == "ci" for group in groups)
    return {group["labels"]["instance"]: group["targets"][0] for group in groups}


def test_every_instance_is_a_target_and_a_scale_rewrites_the_list(
    topology: Topology, tmp_path: Path
) -> None:
    require_binary("prometheus")
    instances(topology, tmp_path)
    assert _targets(tmp_path, "gateway") == {"gateway-0": f"127.0.0.1:{BASE + 1}"}
    assert _targets(tmp_path, "rollouts") == {"rollouts": f"127.0.0.1:{BASE + 46}"}
    assert _targets(tmp_path, "datastore") == {
        f"datastore-{i}": f"127.0.0.1:{BASE + 10 + i}" for i in range(3)
    }
    assert _targets(tmp_path, "orders") == {
        "orders-0": f"127.0.0.1:{BASE + 20}",
        "orders-1": f"127.0.0.1:{BASE + 21}",
    }
    desired = scaled(topology, desired_from(topology), "orders", 1, track="canary", version="0.2.0")
    write_desired(tmp_path.resolve(), desired)
    instances(topology, tmp_path)
    assert _targets(tmp_path, "orders") == {
        "orders-0": f"127.0.0.1:{BASE + 20}",
        "orders-1": f"127.0.0.1:{BASE + 21}",
        "orders-canary-0": f"127.0.0.1:{BASE + 480}",
    }


def test_no_prometheus_runs_when_the_topology_turns_it_off(tmp_path: Path) -> None:
    off = Topology(base_port=BASE, prometheus={"enabled": False})
    assert "prometheus" not in {spec.name for spec in instances(off, tmp_path)}


def test_a_tls_stack_is_scraped_over_https_trusting_its_ca(tmp_path: Path) -> None:
    require_binary("prometheus")
    promtool = require_binary("promtool")
    topology = Topology(base_port=BASE, tls={"enabled": True})
    instances(topology, tmp_path)
    config_file = prometheus.directory(tmp_path) / "prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    ca_file = str((tmp_path / "tls" / "ca.crt").resolve())
    for job in config["scrape_configs"]:
        assert (job["scheme"], job["tls_config"]) == ("https", {"ca_file": ca_file})
    checked = subprocess.run(
        [promtool, "check", "config", str(config_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
