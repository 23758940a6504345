"""The rule groups, and their files as deterministic YAML text."""

from __future__ import annotations

from typing import Any

from yardarm.observability import yamltext
from yardarm.observability.rules import alerts
from yardarm.observability.rules.model import Alert, Group, Record
from yardarm.observability.rules.red import red_records
from yardarm.observability.rules.slo import LONG_WINDOW_INTERVAL, burn_alerts, sli_records

RULES_DIR = "prometheus/rules"
TESTS_DIR = "prometheus/tests"


def groups() -> tuple[Group, ...]:
    """Every rule group, recording groups first (alerts read their series)."""
    return (
        Group("yardarm-red", tuple(red_records())),
        Group("yardarm-slo-sli", tuple(sli_records(long=False))),
        Group("yardarm-slo-sli-long", tuple(sli_records(long=True)), LONG_WINDOW_INTERVAL),
        Group("yardarm-slo-burn", tuple(burn_alerts())),
        Group("yardarm-datastore", tuple(alerts.datastore_alerts())),
        Group("yardarm-messaging", tuple(alerts.messaging_alerts())),
        Group("yardarm-gateway", tuple(alerts.gateway_alerts())),
        Group("yardarm-orders", tuple(alerts.orders_alerts())),
    )


def rule_file(group: Group) -> str:
    """The path of a group's file, relative to `observability/`."""
    return f"{RULES_DIR}/{group.name}.yml"


def recording_rules() -> list[str]:
    """Every recorded series name, once each, in file order."""
    names = [r.record for g in groups() for r in g.rules if isinstance(r, Record)]
    return list(dict.fromkeys(names))


def alert_names() -> list[str]:
    """Every alert name, once each, in file order."""
    names = [r.alert for g in groups() for r in g.rules if isinstance(r, Alert)]
    return list(dict.fromkeys(names))


def all_alerts() -> list[Alert]:
    return [r for g in groups() for r in g.rules if isinstance(r, Alert)]


def dump(document: Any) -> str:
    return yamltext.dump(document, "yardarm.observability.rules")


def render_files() -> dict[str, str]:
    """Path relative to `observability/` -> file text: the rule files and their promtool
    tests."""
    from yardarm.observability.rules.promtool_tests import test_files  # imports this module

    files = {rule_file(group): dump(group.document()) for group in groups()}
    for name, document in test_files().items():
        files[f"{TESTS_DIR}/{name}.yml"] = dump(document)
    return dict(sorted(files.items()))
