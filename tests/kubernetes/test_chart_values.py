"""values.schema.json: the chart's values (as `yardarm chart` renders them) pass, a bad
value is refused, by jsonschema and by Helm itself before anything renders."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python
import jsonschema_rs
import pytest
import yaml

from tests.kubernetes.conftest import CHART, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
VALIDATOR = jsonschema_rs.Draft7Validator(SCHEMA)


def _set(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `values` with the dotted `path` set to `value`."""
    changed = copy.deepcopy(values)
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[last] = value
    return changed


def test_the_schema_is_draft_7_and_valid() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema_rs.meta.validate(SCHEMA)
    assert SCHEMA["additionalProperties"] is False


def test_the_charts_values_pass() -> None:
    VALIDATOR.validate(VALUES)


def test_the_ci_values_pass_once_merged() -> None:
    chart = helm_python.Chart.load(CHART)
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        merged = chart.merge_values(yaml.safe_load(path.read_text()) or {})
        VALIDATOR.validate(merged)


BAD = [
    ("orders.tracks.canary.replicas", -1),
    ("datastore.replicas", 0),
    ("images.gateway.tag", "latest"),
    ("images.orders.tag", ""),
    ("orders.tracks.canary.image", "yardarm/orders:latest"),
    ("orders.tracks.canary.image", "yardarm/orders"),
    ("gateway.service.type", "ExternalName"),
    ("gateway.ports.http", 0),
    ("orders.port", "8100"),
    ("gateway.env.YARDARM_GATEWAY_PORT", 8080),
    ("controller.enabled", "yes"),
    ("datastore.storage.size", "lots"),
    ("serviceMonitor.interval", "often"),
]


@pytest.mark.parametrize(("path", "value"), BAD, ids=[f"{p}={v!r}" for p, v in BAD])
def test_a_bad_value_is_refused(path: str, value: Any) -> None:
    bad = _set(VALUES, path, value)
    with pytest.raises(jsonschema_rs.ValidationError):
        VALIDATOR.validate(bad)
    with pytest.raises(helm_python.HelmValuesError):
        render(_nested(path, value))


def _nested(path: str, value: Any) -> dict[str, Any]:
    """An override file setting only `path`."""
    result: dict[str, Any] = {}
    node = result
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return result


@pytest.mark.parametrize(
    "extra",
    [{"replicaCount": 3}, {"gateway": {"replica": 2}}, {"datastore": {"storageClass": "ssd"}}],
)
def test_an_unknown_key_is_refused(extra: dict[str, Any]) -> None:
    merged = copy.deepcopy(VALUES)
    for key, value in extra.items():
        merged[key] = merged[key] | value if isinstance(merged.get(key), dict) else value
    with pytest.raises(jsonschema_rs.ValidationError):
        VALIDATOR.validate(merged)
    with pytest.raises(helm_python.HelmValuesError):
        render(extra)


def test_only_the_known_tracks_are_accepted() -> None:
    from yardarm_kit.identity import TRACKS

    names = SCHEMA["properties"]["orders"]["properties"]["tracks"]["propertyNames"]["enum"]
    assert tuple(names) == TRACKS
    purple = copy.deepcopy(VALUES["orders"]["tracks"]["canary"])
    with pytest.raises(jsonschema_rs.ValidationError):
        VALIDATOR.validate(_set(VALUES, "orders.tracks.purple", purple))
    with pytest.raises(helm_python.HelmValuesError):
        render({"orders": {"tracks": {"purple": purple}}})
