"""Against a real cluster: the EndpointSlice watch sees a pod become ready and leave.

Runs when `KUBECONFIG` names a kubeconfig file (kind, k3d, minikube...); skipped with the
reason otherwise, and failed instead when `YARDARM_REQUIRE_KUBERNETES=1` (CI with a
cluster). It creates a namespace of its own and deletes it at the end.

The pod runs the project's datastore image (`yardarm/datastore:0.1.0`, overridable with
`YARDARM_LIVE_IMAGE`) with `imagePullPolicy: Never`: no registry is assumed, so load the
image into the cluster first (`kind load docker-image yardarm/datastore:0.1.0`,
`k3d image import ...`). Its Service is named like a release's orders track
(`<release>-orders-stable`, port `http`) so the watch publishes it as orders would be.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from yardarm.kubernetes.effects import Cluster
from yardarm.kubernetes.endpoints import SliceWatch, endpoints_by_upstream, label_selector
from yardarm.routing_writer import Endpoint

IMAGE = os.environ.get("YARDARM_LIVE_IMAGE", "yardarm/datastore:0.1.0")
RELEASE = "live"
PORT = 8090
WAIT_S = 180.0


def _kubeconfig() -> Path:
    """The cluster to use, or skip (fail, when one is required) saying why."""
    required = os.environ.get("YARDARM_REQUIRE_KUBERNETES") == "1"
    named = os.environ.get("KUBECONFIG", "")
    path = Path(named.split(os.pathsep)[0]).expanduser() if named else None
    if path is None or not path.is_file():
        why = (
            "no Kubernetes cluster: set KUBECONFIG to a cluster's kubeconfig to run this test"
            if path is None
            else f"KUBECONFIG names {path}, which is not a file"
        )
        if required:
            pytest.fail(f"YARDARM_REQUIRE_KUBERNETES=1 but {why}")
        pytest.skip(why)
    return path


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A namespace of this test's own in the cluster KUBECONFIG names."""
    from kubernetes import client, config

    loader: Any = config
    api = loader.new_client_from_config(config_file=str(_kubeconfig()))
    core = client.CoreV1Api(api)
    namespace = f"yardarm-live-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        yield Cluster(namespace, client.AppsV1Api(api), core, client.DiscoveryV1Api(api))
    finally:
        core.delete_namespace(namespace)


def _create_workload(cluster: Cluster) -> str:
    """A one-pod Deployment of the datastore and its Service, named as a track of orders."""
    name = f"{RELEASE}-orders-stable"
    labels = {"app.kubernetes.io/instance": RELEASE, "yardarm.dev/service": "orders",
              "yardarm.dev/track": "stable"}  # fmt: skip
    env = {
        "YARDARM_DATASTORE_INSTANCE": "datastore-0",
        "YARDARM_DATASTORE_HOST": "0.0.0.0",
        "YARDARM_DATASTORE_PORT": str(PORT),
        "YARDARM_DATASTORE_STATE_DIR": "/var/lib/yardarm",
        "YARDARM_DATASTORE_DATA_DIR": "/var/lib/yardarm/data",
    }
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{
                        "name": "orders",
                        "image": IMAGE,
                        "imagePullPolicy": "Never",
                        "env": [{"name": k, "value": v} for k, v in env.items()],
                        "ports": [{"name": "http", "containerPort": PORT}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": PORT},
                                           "periodSeconds": 1},
                        "volumeMounts": [{"name": "state", "mountPath": "/var/lib/yardarm"}],
                    }],
                    "volumes": [{"name": "state", "emptyDir": {}}],
                },
            },
        },
    }  # fmt: skip
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": PORT,
                                                "targetPort": "http"}]},
    }  # fmt: skip
    from kubernetes.client import V1Deployment, V1Service

    as_deployment, as_service = V1Deployment.from_dict(deployment), V1Service.from_dict(service)
    assert as_deployment is not None and as_service is not None
    cluster.apps.create_namespaced_deployment(cluster.namespace, as_deployment)
    cluster.core.create_namespaced_service(cluster.namespace, as_service)
    return name


def _wait_for(
    seen: list[dict[str, list[Endpoint]]], lock: threading.Lock, test: Callable[[Any], bool]
) -> list[Endpoint]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with lock:
            latest = seen[-1] if seen else None
        if latest is not None and test(latest.get("orders")):
            return latest.get("orders") or []
        time.sleep(0.5)
    raise AssertionError(f"the watch did not see it within {WAIT_S:g}s; last seen: {seen[-1:]}")


def test_the_watch_sees_a_pod_become_ready_and_leave(cluster: Cluster) -> None:
    name = _create_workload(cluster)
    seen: list[dict[str, list[Endpoint]]] = []
    lock = threading.Lock()

    def changed(slices: list[dict[str, Any]]) -> None:
        with lock:
            seen.append(endpoints_by_upstream(slices, RELEASE))

    assert cluster.discovery is not None
    watch = SliceWatch(
        cluster.discovery, cluster.namespace, label_selector(RELEASE), changed, timeout_s=5
    )
    watch.start()
    try:
        ready = _wait_for(seen, lock, lambda found: bool(found))
        pods = cluster.pods("yardarm.dev/track=stable")
        assert [e.url for e in ready] == [f"http://{pods[0].status.pod_ip}:{PORT}"]  # type: ignore[union-attr]
        assert {e.track for e in ready} == {"stable"}
        cluster.patch_deployment(name, [{"op": "replace", "path": "/spec/replicas", "value": 0}])
        assert _wait_for(seen, lock, lambda found: found == []) == []
    finally:
        watch.stop()
