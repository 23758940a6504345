"""The chart's values: what the deployment model says, committed up to date, in the shape
the chart's pods can share (per-pod settings left to the downward API).

The expectations are computed from the model's own specs (replicas, versions, image
tags, port plan), not from the renderer's target, so a wrong name in the target cannot
make both sides agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from yardarm.cli import app
from yardarm.images.specs import SERVICE_IMAGES
from yardarm.kubernetes.values import CHART_DIR, VALUES_FILE, render_values
from yardarm.model import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {spec.name: spec.tags(ROOT)[0] for spec in SERVICE_IMAGES}
runner = CliRunner()


def _values(topology: Topology | None = None, release: str = "yardarm") -> dict[str, Any]:
    return render_values(topology or Topology(), IMAGES, release)


def test_the_committed_values_are_the_models() -> None:
    result = runner.invoke(app, ["chart", "--check"])
    assert result.exit_code == 0, result.output
    committed = yaml.safe_load((ROOT / CHART_DIR / VALUES_FILE).read_text())
    assert committed == json.loads(json.dumps(_values()))


def test_replicas_versions_and_images_follow_the_model(tmp_path: Path) -> None:
    config = tmp_path / "yardarm.yaml"
    config.write_text(
        "services:\n  orders:\n    replicas: 3\n    tracks:\n"
        "      canary: {replicas: 1, version: 0.3.0-errors}\n"
        "  datastore:\n    replicas: 5\n"
    )
    topology = load_topology(config)
    values = _values(topology)
    orders = values["orders"]["tracks"]
    assert orders["stable"]["replicas"] == 3
    assert (orders["canary"]["replicas"], orders["canary"]["version"]) == (1, "0.3.0-errors")
    assert orders["baseline"]["replicas"] == orders["green"]["replicas"] == 0
    canary_env = orders["canary"]["env"]
    assert canary_env["YARDARM_ORDERS_TRACK"] == "canary"
    assert canary_env["YARDARM_ORDERS_VERSION"] == "0.3.0-errors"
    flags = canary_env["YARDARM_ORDERS_FLAGS_FILE"].rpartition("/")[2]
    pinned = json.loads(values["flags"][flags])
    assert pinned["flags"]["fault.error-rate"]["defaultVariant"] == "high"
    assert values["datastore"]["replicas"] == 5
    for name, image in values["images"].items():
        assert f"{image['repository']}:{image['tag']}" == IMAGES[name]
    assert Topology.model_validate_json(values["topology"]) == topology


def test_pods_share_one_environment_and_the_per_pod_keys_are_left_out() -> None:
    values = _values()
    for env in (
        values["gateway"]["env"],
        values["datastore"]["env"],
        *(
            track["env"]
            for svc in ("orders", "fulfillment")
            for track in values[svc]["tracks"].values()
        ),
    ):
        assert not any(key.endswith("_INSTANCE") for key in env), env
        assert "YARDARM_DATASTORE_REPLICA_ID" not in env


@pytest.mark.parametrize("release", ["yardarm", "shop"])
def test_every_peer_and_upstream_is_named_once_by_the_release(release: str) -> None:
    topology = Topology()
    values = _values(topology, release)
    assert values["release"] == release
    peers = json.loads(values["datastore"]["env"]["YARDARM_DATASTORE_PEERS"])
    replicas = topology.services.datastore.replicas
    assert sorted(int(n) for n in peers) == list(range(1, replicas + 1))
    raft, http = values["datastore"]["ports"]["raft"], values["datastore"]["ports"]["http"]
    for n, peer in peers.items():
        pod = f"{release}-datastore-{int(n) - 1}.{release}-datastore-peers"
        assert peer == {"raft": f"{pod}:{raft}", "http": f"http://{pod}:{http}"}
    upstreams = json.loads(values["gateway"]["env"]["YARDARM_GATEWAY_UPSTREAMS"])
    orders = [e["url"] for e in upstreams["orders"]]
    assert orders == [f"http://{release}-orders-stable:{values['orders']['port']}"]
    assert len(upstreams["datastore"]) == replicas
    dsn = values["orders"]["tracks"]["stable"]["env"]["YARDARM_ORDERS_DATABASE_URL"]
    assert dsn.startswith(f"postgresql://yardarm@{values['postgres']['host']}:5432/orders?")
    assert values["postgres"]["host"] == f"{release}-postgresql"


def test_a_stack_renders_its_own_values(tmp_path: Path) -> None:
    config = tmp_path / "yardarm.yaml"
    config.write_text("services:\n  gateway:\n    replicas: 2\n")
    out = tmp_path / "values.yaml"
    result = runner.invoke(app, ["chart", "-c", str(config), "--release", "shop", "-o", str(out)])
    assert result.exit_code == 0, result.output
    values = yaml.safe_load(out.read_text())
    assert (values["release"], values["gateway"]["replicas"]) == ("shop", 2)
    stale = runner.invoke(app, ["chart", "--check", "-o", str(out)])
    assert stale.exit_code == 1 and "differ from the model" in " ".join(stale.output.split())
