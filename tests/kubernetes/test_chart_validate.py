"""Every rendered object is valid for the API server: the built-in kinds against the
official schemas of two Kubernetes versions (strict: an unknown field is an error, as it
is for `kubectl apply --validate=strict`), the Prometheus Operator's kinds against its
CRDs' schemas, and `helm lint --strict` has nothing to say."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema_rs
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.kubernetes.conftest import CHART, CI_VALUES, NAMESPACE, Manifest, Rendering

KUBERNETES_VERSIONS = ("1.31.0", "1.33.0")
SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-v1.json",
}


def _ecma_pattern(pattern: str) -> str:
    """A Go (RE2) pattern with a leading `(?i)` as an ECMA-262 one: each letter as a
    class of both cases (JSON Schema patterns have no inline flags)."""
    head, _, rest = pattern.partition("(?i)")
    if not rest:
        return pattern
    assert "[" not in rest, pattern  # letters inside classes would need more care
    return head + re.sub(r"[A-Za-z]", lambda m: f"[{m[0].lower()}{m[0].upper()}]", rest)


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema that refuses unknown fields (the API server would drop them silently,
    so a misspelt field would be lost rather than refused), in ECMA-262 patterns."""
    schema = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                node["pattern"] = _ecma_pattern(node["pattern"])
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


@functools.cache
def _custom_validator(api_version: str, kind: str) -> jsonschema_rs.Draft7Validator:
    schema = _closed(json.loads((SCHEMAS / CUSTOM[(api_version, kind)]).read_text()))
    # metadata is the API server's ObjectMeta, not described by the CRD.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema_rs.Draft7Validator(schema)


def validate(manifest: Manifest, version: str) -> None:
    key = (manifest["apiVersion"], manifest["kind"])
    if key in CUSTOM:
        _custom_validator(*key).validate(manifest)
    else:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes(rendering: Rendering, version: str) -> None:
    errors = []
    for manifest in rendering.manifests:
        try:
            validate(manifest, version)
        except (kubernetes_validate.ValidationError, jsonschema_rs.ValidationError) as exc:
            errors.append(f"{manifest['kind']} {manifest['metadata']['name']}: {exc}")
    assert errors == []


def test_every_kind_has_a_schema(production: Rendering) -> None:
    kinds = {(m["apiVersion"], m["kind"]) for m in production.manifests}
    assert set(CUSTOM) <= kinds  # the production values render both custom kinds
    for manifest in production.manifests:
        validate(manifest, KUBERNETES_VERSIONS[0])


@pytest.mark.parametrize(
    ("kind", "break_it"),
    [
        ("Deployment", lambda m: m["spec"].__setitem__("replica", 1)),
        ("StatefulSet", lambda m: m["spec"].__setitem__("replicas", "three")),
        ("ServiceMonitor", lambda m: m["spec"]["endpoints"][0].__setitem__("honorLabel", True)),
        ("ServiceMonitor", lambda m: m["spec"]["endpoints"][0].__setitem__("honorLabels", "yes")),
        ("PrometheusRule", lambda m: m["spec"]["groups"][0].__setitem__("rules", "none")),
    ],
)
def test_the_validation_refuses_a_broken_object(
    production: Rendering, kind: str, break_it: Any
) -> None:
    manifest = copy.deepcopy(production.of_kind(kind)[0])
    break_it(manifest)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema_rs.ValidationError)):
        validate(manifest, KUBERNETES_VERSIONS[-1])


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_lint_is_clean_in_strict_mode(values_file: Path) -> None:
    values = yaml.safe_load(values_file.read_text()) or {}
    # Lint renders as the release `test-release`; the values must name it or the
    # templates refuse (and lint would check nothing).
    values["release"] = "test-release"
    result = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []
