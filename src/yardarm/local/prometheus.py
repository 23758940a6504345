"""The local stack's own Prometheus: Debian's (or any) `prometheus` binary, run by the
supervisor like NATS and Postgres, scraping every instance on loopback.

Its configuration lives under `<home>/prometheus/`: `prometheus.yml` (one job per service
and one for the rollout controller, from `yardarm.observability.scrape`), the project's
rule files, and one file_sd file per job that every render rewrites, so a `yardarm scale`
changes what is scraped without restarting Prometheus. Without a binary the stack runs
without it, and says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from yardarm.model import Deployment, Instance, Topology
from yardarm.observability.scrape import (
    JOBS,
    duration,
    prometheus_config,
    scrape_job,
    scrape_targets,
    target_groups,
)

INSTANCE = "prometheus"
LOOPBACK = "127.0.0.1"


def binary() -> str | None:
    """The `prometheus` executable on PATH, if any."""
    return shutil.which("prometheus")


def directory(home: Path) -> Path:
    return home / "prometheus"


def url(topology: Topology) -> str:
    return f"http://{LOOPBACK}:{topology.prometheus_port}"


def metrics_address(topology: Topology, instance: Instance, port: int) -> str:
    """Where an instance's `/metrics` is: a gateway replica's on its own admin port (the
    public port is shared by every replica), any other's on its port."""
    if instance.service == "gateway":
        return f"{LOOPBACK}:{topology.gateway_admin_port(instance.ordinal)}"
    return f"{LOOPBACK}:{port}"


def write_targets(deployment: Deployment, home: Path, ports: dict[str, int]) -> None:
    """Rewrite each job's file_sd file (atomically: Prometheus watches them)."""
    topology = deployment.topology

    def address(inst: Instance) -> str:
        return metrics_address(topology, inst, ports[inst.name])

    targets_dir = directory(home) / "targets"
    targets_dir.mkdir(parents=True, exist_ok=True)
    controller = f"{LOOPBACK}:{topology.rollouts_port}"
    for service, targets in scrape_targets(deployment, address, controller).items():
        text = yaml.safe_dump(target_groups(targets, topology.environment), sort_keys=False)
        path = targets_dir / f"{service}.yml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


def write_config(topology: Topology, home: Path, ca_file: str | None) -> Path:
    """Write `prometheus.yml` and the rule files; returns the config's path."""
    from yardarm.observability.rules import render_files

    root = directory(home)
    rules_dir = root / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    rule_files: list[str] = []
    for relative, text in sorted(render_files().items()):
        if relative.startswith("prometheus/rules/"):
            path = rules_dir / Path(relative).name
            path.write_text(text)
            rule_files.append(str(path))
    jobs = [
        scrape_job(
            job,
            scheme=topology.tls.scheme,
            ca_file=ca_file,
            file_sd=str(root / "targets" / f"{job}.yml"),
        )
        for job in JOBS
    ]
    interval = duration(topology.prometheus.scrape_interval_s)
    config = prometheus_config(
        jobs,
        environment=topology.environment,
        scrape_interval=interval,
        evaluation_interval=interval,
        rule_files=rule_files,
    )
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def command(topology: Topology, home: Path, config_file: Path, executable: str) -> list[str]:
    """Prometheus on loopback, with exemplar storage (latency panels link to traces)."""
    data = home / "data" / "prometheus"
    data.mkdir(parents=True, exist_ok=True)
    return [
        executable,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data}",
        f"--storage.tsdb.retention.time={topology.prometheus.retention}",
        f"--web.listen-address={LOOPBACK}:{topology.prometheus_port}",
        "--enable-feature=exemplar-storage",
        "--log.format=json",
    ]
