"""The Kubernetes controller's settings: what the chart's environment gives it, its
defaults, and a bad setting refused by name before anything starts; then the process
itself, against a fake API server and a real datastore on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.gateway.conftest import datastore_url, unused_port
from tests.gateway.processes import spawn, wait_ready
from yardarm.kubernetes import controller
from yardarm.kubernetes.controller import SettingsError, prepare
from yardarm.model import Topology
from yardarm.routing_writer import ROUTING_KEY

__all__ = ["datastore_url"]

TOKEN = "k8s-admin-token-0123456789abcdef"


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The files the chart mounts, and only the settings the chart always sets."""
    for name in list(os.environ):
        if name.startswith(("YARDARM_K8S_", "YARDARM_ROLLOUTS_")):
            monkeypatch.delenv(name)
    (tmp_path / "topology.json").write_text(Topology(base_port=9000).model_dump_json())
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    monkeypatch.setenv("YARDARM_K8S_NAMESPACE", "shop-ns")
    monkeypatch.setenv("YARDARM_K8S_TOPOLOGY_FILE", str(tmp_path / "topology.json"))
    monkeypatch.setenv("YARDARM_K8S_ADMIN_TOKEN_FILE", str(tmp_path / "admin-token"))
    return tmp_path


def test_the_chart_environment_and_the_defaults(files: Path) -> None:
    prepared = prepare()
    assert prepared.settings.namespace == "shop-ns"
    assert prepared.settings.release == "yardarm"
    assert prepared.token == TOKEN
    assert prepared.topology.base_port == 9000
    assert prepared.port == Topology(base_port=9000).rollouts_port  # the topology's own
    assert prepared.settings.prometheus_url is None
    assert prepared.tuning.sub_window_s == 2.0


def test_the_default_files_are_where_the_chart_mounts_them(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("YARDARM_K8S_TOPOLOGY_FILE")
    monkeypatch.delenv("YARDARM_K8S_ADMIN_TOKEN_FILE")
    settings = controller.KubernetesSettings()  # type: ignore[call-arg]
    assert settings.topology_file == Path("/etc/yardarm/topology/topology.json")
    assert settings.admin_token_file == Path("/run/yardarm/admin-token")


def test_release_port_prometheus_and_tuning_from_the_environment(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YARDARM_K8S_RELEASE", "shop")
    monkeypatch.setenv("YARDARM_K8S_PORT", "8126")
    monkeypatch.setenv("YARDARM_K8S_PROMETHEUS_URL", "http://prometheus.monitoring:9090/")
    monkeypatch.setenv("YARDARM_ROLLOUTS_SUB_WINDOW_S", "1.5")
    prepared = prepare()
    assert prepared.settings.release == "shop"
    assert prepared.port == 8126
    assert prepared.settings.prometheus_url == "http://prometheus.monitoring:9090"
    assert prepared.tuning.sub_window_s == 1.5


def test_an_empty_prometheus_url_means_scraping_the_pods(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YARDARM_K8S_PROMETHEUS_URL", "")  # the chart's default value
    assert prepare().settings.prometheus_url is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("YARDARM_K8S_NAMESPACE", None, "YARDARM_K8S_NAMESPACE: Field required"),
        ("YARDARM_K8S_PORT", "0", "YARDARM_K8S_PORT: Input should be greater than or equal to 1"),
        ("YARDARM_K8S_PROMETHEUS_URL", "prometheus:9090", "YARDARM_K8S_PROMETHEUS_URL: Value "
         "error, must be an http:// or https:// URL"),
        ("YARDARM_ROLLOUTS_SUB_WINDOW_S", "0", "YARDARM_ROLLOUTS_SUB_WINDOW_S: Input should be "
         "greater than 0"),
        ("YARDARM_K8S_TOPOLOGY_FILE", "/nonexistent/topology.json",
         "YARDARM_K8S_TOPOLOGY_FILE: cannot read /nonexistent/topology.json"),
        ("YARDARM_K8S_ADMIN_TOKEN_FILE", "/nonexistent/admin-token",
         "YARDARM_K8S_ADMIN_TOKEN_FILE: cannot read /nonexistent/admin-token"),
    ],
)  # fmt: skip
def test_a_bad_setting_is_refused_by_name(
    files: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str | None, message: str
) -> None:
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        prepare()
    assert str(refused.value).startswith(message)


def test_a_file_that_is_not_a_topology_or_an_empty_token(files: Path) -> None:
    (files / "topology.json").write_text('{"services": {"orders": {"replicas": 0}}}')
    with pytest.raises(SettingsError, match=r"YARDARM_K8S_TOPOLOGY_FILE: .* is not a topology"):
        prepare()
    (files / "topology.json").write_text(Topology().model_dump_json())
    (files / "admin-token").write_text("\n")
    with pytest.raises(SettingsError, match=r"YARDARM_K8S_ADMIN_TOKEN_FILE: .* is empty"):
        prepare()


def test_main_prints_the_refusal_and_exits_2(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("YARDARM_K8S_NAMESPACE")
    assert controller.main([]) == 2
    assert "YARDARM_K8S_NAMESPACE: Field required" in capsys.readouterr().err


# -- the process -----------------------------------------------------------------------


class FakeApiServer:
    """The EndpointSlice list and watch of a Kubernetes API server, on loopback."""

    def __init__(self, slices: list[dict[str, Any]]) -> None:
        self.slices = slices
        self.requests: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", self.endpointslices
        )
        return app

    async def endpointslices(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"namespace": request.match_info["namespace"], **request.query})
        if request.query.get("watch") in ("true", "True", "1"):
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await asyncio.sleep(1.0)  # no change, then the server ends the watch
            await response.write_eof()
            return response
        return web.json_response({
            "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": "7"}, "items": self.slices,
        })  # fmt: skip


async def test_the_process_publishes_serves_and_stops_on_sigterm(
    files: Path, datastore_url: str
) -> None:
    slice_ = {
        "metadata": {"name": "shop-orders-stable-x", "resourceVersion": "7",
                     "labels": {"kubernetes.io/service-name": "shop-orders-stable"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8100}],
    }  # fmt: skip
    api = FakeApiServer([slice_])
    runner = web.AppRunner(api.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    api_port = runner.addresses[0][1]
    kubeconfig = files / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [
                    {"name": "fake", "cluster": {"server": f"http://127.0.0.1:{api_port}"}}
                ],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            }
        )
    )
    port = unused_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("YARDARM_", "OTEL_", "KUBERNETES_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env |= {
        "YARDARM_K8S_NAMESPACE": "shop-ns",
        "YARDARM_K8S_RELEASE": "shop",
        "YARDARM_K8S_TOPOLOGY_FILE": str(files / "topology.json"),
        "YARDARM_K8S_ADMIN_TOKEN_FILE": str(files / "admin-token"),
        "YARDARM_K8S_PORT": str(port),
        "YARDARM_K8S_DATASTORE_URLS": json.dumps([datastore_url]),
        "YARDARM_K8S_STATE_DIR": str(files / "state"),
        "KUBECONFIG": str(kubeconfig),
    }
    log = files / "controller.log"
    process = spawn([sys.executable, "-m", "yardarm.kubernetes.controller"], log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, log, within_s=30)  # ready once the slices were listed
        listed = [r for r in api.requests if r.get("watch") is None]
        assert listed[0]["namespace"] == "shop-ns"
        assert "shop-orders-stable" in listed[0]["labelSelector"]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200
            deadline = time.monotonic() + 10
            endpoints = None
            while time.monotonic() < deadline:
                entry = (await client.get(f"{datastore_url}/kv/{ROUTING_KEY}")).json()
                endpoints = entry.get("value", {}).get("endpoints")
                if endpoints:
                    break
                await asyncio.sleep(0.1)
            assert endpoints == {"orders": [{"url": "http://10.0.0.1:8100", "track": "stable"}]}
            # The rollout API, behind the release's admin token.
            assert (await client.get(f"{url}/rollouts")).status_code == 401
            answer = await client.get(
                f"{url}/rollouts", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"rollouts": []}
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        await runner.cleanup()
