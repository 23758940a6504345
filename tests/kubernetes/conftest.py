"""The chart rendered offline (helm_python: Helm's own library, no cluster), once per
values file of `charts/yardarm/ci/`, for the release the values name."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "yardarm"
RELEASE = "yardarm"
NAMESPACE = "yardarm"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUES_NAMES = [path.name.removesuffix("-values.yaml") for path in CI_VALUES]

Manifest = dict[str, Any]

helm_python.disable_logging()


@dataclass(frozen=True)
class Rendering:
    """One rendering of the chart: its objects and NOTES.txt."""

    values: dict[str, Any]  # the merged values the templates saw
    manifests: list[Manifest]
    notes: str

    def get(self, kind: str, name: str) -> Manifest:
        found = [m for m in self.manifests if m["kind"] == kind and m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, got {len(found)}"
        return found[0]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def names(self, kind: str) -> set[str]:
        return {m["metadata"]["name"] for m in self.of_kind(kind)}


@functools.cache
def load_chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> Rendering:
    """Render the chart; raises helm_python's error when a template or the schema refuses."""
    chart = load_chart()
    files = chart.render(values or {}, name=release, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendering(chart.merge_values(values or {}), manifests, notes)


@functools.cache
def render_ci(name: str) -> Rendering:
    """The rendering of `ci/<name>-values.yaml` (cached: each file renders once a run)."""
    values = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}
    return render(values)


@pytest.fixture(scope="module", params=VALUES_NAMES)
def rendering(request: pytest.FixtureRequest) -> Rendering:
    """The chart for each ci values file."""
    name: str = request.param
    return render_ci(name)


@pytest.fixture(scope="module")
def default() -> Rendering:
    return render_ci("default")


@pytest.fixture(scope="module")
def production() -> Rendering:
    return render_ci("production")


def containers(manifest: Manifest, *, init: bool = True) -> list[dict[str, Any]]:
    """A workload's containers (and init containers)."""
    spec = pod_spec(manifest)
    if spec is None:
        return []
    found: list[dict[str, Any]] = list(spec.get("containers", []))
    if init:
        found += spec.get("initContainers", [])
    return found


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    """The pod template's spec of a workload, None for other objects."""
    if manifest["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
        return spec
    if manifest["kind"] == "Pod":
        pod: dict[str, Any] = manifest["spec"]
        return pod
    return None


def env_of(container: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """A container's env: literal values, and the downward-API field paths."""
    values: dict[str, str] = {}
    fields: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            values[item["name"]] = item["value"]
        else:
            fields[item["name"]] = item["valueFrom"]["fieldRef"]["fieldPath"]
    return values, fields
