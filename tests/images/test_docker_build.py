"""`yardarm images build` against a real Docker daemon: a second run on an unchanged tree
builds nothing, and the image is the hardened one the services run in.

Skipped without a daemon; with YARDARM_REQUIRE_DOCKER=1 (CI) a missing daemon fails.
The first run makes the offline base when it is missing (debootstrap, as root), so it
may take minutes; the second one is a few `docker image inspect` calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_RUN_TIMEOUT_S = 1500.0  # cold: debootstrap, wheel downloads, the build itself
CACHED_RUN_TIMEOUT_S = 120.0  # a few inspections; the machine may be busy
COMMAND = [sys.executable, "-m", "yardarm", "images", "build", "--offline", "--only", "orders"]


def _docker_or_skip() -> str:
    docker = shutil.which("docker")
    why = "no `docker` on PATH"
    if docker is not None:
        done = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return docker
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        why = f"`docker info` failed: {last}"
    if os.environ.get("YARDARM_REQUIRE_DOCKER") == "1":
        pytest.fail(f"Docker is required (YARDARM_REQUIRE_DOCKER=1) but {why}")
    pytest.skip(f"needs a Docker daemon ({why}); install Docker and start the daemon")


def _build(timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [*COMMAND, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _inspect(docker: str, ref: str) -> dict[str, Any]:
    done = subprocess.run(
        [docker, "image", "inspect", ref], capture_output=True, text=True, timeout=60, check=True
    )
    image: dict[str, Any] = json.loads(done.stdout)[0]
    return image


@pytest.mark.timeout(FIRST_RUN_TIMEOUT_S + CACHED_RUN_TIMEOUT_S + 120)
def test_a_second_build_of_an_unchanged_tree_builds_nothing() -> None:
    docker = _docker_or_skip()
    first = _build(FIRST_RUN_TIMEOUT_S)
    [orders] = first["images"]
    assert orders["status"] in {"built", "cached"}

    second = _build(CACHED_RUN_TIMEOUT_S)
    assert second["docker_builds"] == 0
    [again] = second["images"]
    assert again["status"] == "cached"
    assert (again["id"], again["inputs"]) == (orders["id"], orders["inputs"])

    image = _inspect(docker, "yardarm/orders:0.1.0")
    assert image["Id"] == orders["id"]
    assert _inspect(docker, "yardarm/orders:latest")["Id"] == orders["id"]
    config = image["Config"]
    assert config["Labels"]["org.yardarm.inputs"] == orders["inputs"]
    assert config["User"] == "10001:10001"  # numeric: a runtime can tell it is not root
    assert config["Entrypoint"] == ["python", "-m", "yardarm_orders"]
    assert config["Healthcheck"]["Interval"] == 2_000_000_000  # nanoseconds
    assert "YARDARM_ORDERS_SPAN_FILES=false" in config["Env"]
    assert "/var/lib/yardarm" in config["Volumes"]
