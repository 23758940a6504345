"""Bad rollout requests are refused before anything starts, each with what was wrong and
what would be accepted."""

from __future__ import annotations

import pytest

from yardarm.model import Topology
from yardarm.rollout.spec import RolloutSpec, RolloutSpecError, parse_steps, sticky_key


def test_steps_parse_with_pauses_between_weights() -> None:
    assert parse_steps("10,25,pause,50,100") == (10, 25, "pause", 50, 100)
    assert parse_steps(" 5%, 100 ") == (5, 100)
    assert parse_steps("100") == (100,)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "separated by commas"),
        ("10,,100", "separated by commas"),
        ("10,half,100", "neither a percentage"),
        ("pause,50,100", "cannot be first"),
        ("10,pause,pause,100", "two pauses in a row"),
        ("0,100", "not within 1-100"),
        ("10,150", "not within 1-100"),
        ("50,25,100", "must rise"),
        ("10,10,100", "must rise"),
        ("10,50", "last weight must be 100"),
        ("pause", "at least one weight"),
    ],
)
def test_invalid_steps_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(RolloutSpecError, match=why):
        parse_steps(text)


def test_an_analysis_longer_than_a_step_is_refused() -> None:
    with pytest.raises(ValueError, match="every step needs at least one analysis"):
        RolloutSpec(service="orders", version="0.2.0", step_duration_s=5, analysis_interval_s=10)


def test_unknown_services_and_versions_name_what_exists() -> None:
    topology = Topology()
    with pytest.raises(RolloutSpecError, match=r"unknown service 'billing' \(services: "):
        RolloutSpec(service="billing", version="1.0").validate_against(topology, "0.1.0")
    with pytest.raises(RolloutSpecError, match=r"declared: 0\.1\.0, 0\.2\.0, 0\.3\.0-errors"):
        RolloutSpec(service="orders", version="9.9").validate_against(topology, "0.1.0")
    with pytest.raises(RolloutSpecError, match=r"already runs 0\.1\.0"):
        RolloutSpec(service="orders", version="0.1.0").validate_against(topology, "0.1.0")
    RolloutSpec(service="orders", version="0.2.0").validate_against(topology, "0.1.0")


def test_restart_rolled_services_take_no_weights_or_blue_green() -> None:
    topology = Topology.model_validate({"services": {"gateway": {"versions": {"0.2.0": {}}}}})
    with pytest.raises(RolloutSpecError, match="restarting its replicas one at a time"):
        RolloutSpec(service="gateway", version="0.2.0", strategy="blue-green").validate_against(
            topology, "0.1.0"
        )
    RolloutSpec(service="gateway", version="0.2.0").validate_against(topology, "0.1.0")


def test_blue_green_is_for_services_behind_the_gateway_and_takes_no_steps() -> None:
    topology = Topology()
    with pytest.raises(RolloutSpecError, match="blue-green takes no --steps"):
        RolloutSpec(
            service="orders", version="0.2.0", strategy="blue-green", steps=(50, 100)
        ).validate_against(topology, "0.1.0")
    with pytest.raises(RolloutSpecError, match="roll it with --strategy canary"):
        RolloutSpec(service="fulfillment", version="0.1.0", strategy="blue-green").validate_against(
            topology, "0.0.9"
        )
    blue_green = RolloutSpec(service="orders", version="0.2.0", strategy="blue-green")
    blue_green.validate_against(topology, "0.1.0")
    # preview, switched, scale-down delay, promotion; a canary's steps; one restart
    assert blue_green.last_step == 3
    assert RolloutSpec(service="orders", version="0.2.0", steps=(10, 100)).last_step == 1
    assert RolloutSpec(service="datastore", version="0.2.0").last_step == 0


def test_sticky_is_a_header_or_cookie_for_a_canary_behind_the_gateway() -> None:
    spec = RolloutSpec(service="orders", version="0.2.0", sticky="cookie:session")
    assert sticky_key(spec.sticky or "") == {"cookie": "session"}
    assert sticky_key("header:x-user") == {"header": "x-user"}
    for bad in ("x-user", "query:x", "header:", "header:a b", "header:" + "x" * 129):
        with pytest.raises(ValueError, match="give header:NAME or cookie:NAME"):
            RolloutSpec(service="orders", version="0.2.0", sticky=bad)
    for service, strategy, how in (
        ("orders", "blue-green", "orders by blue-green"),
        ("fulfillment", "canary", "fulfillment by instances"),
        ("gateway", "canary", "gateway by restart"),
    ):
        with pytest.raises(ValueError, match=f"{how} has none"):
            RolloutSpec(service=service, version="0.2.0", strategy=strategy, sticky="header:u")
