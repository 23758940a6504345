"""End to end: what fulfillment cannot apply ends in the DLQ, and `yardarm dlq replay`
brings it back once the cause is fixed.

A stack from `yardarm up` whose fulfillment redelivers a failing command MAX_DELIVER
times on a short backoff (settings passed through the supervisor's environment), with
the flag `fault.consumer-error-rate` at 1.0 from its yardarm.yaml. Three commands are
published straight to COMMANDS: an unknown type, a charge without a card, and a good
charge that the flag fails on every delivery. Then the flag is set to 0 in the running
stack's flag file, and the charge is replayed as it was, the malformed one with a
corrected body: each is applied exactly once and answered on EVENTS.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
import yaml
from nats.js.errors import NotFoundError
from yardarm_kit.messaging import Envelope, publish

from tests.conftest import require_servers
from tests.harness.local import pick_base_port
from yardarm.local import infra
from yardarm.local.render import flags_file
from yardarm.model import Topology, default_flags

pytestmark = pytest.mark.e2e

MAX_DELIVER = 3
BACKOFF_S = (0.2, 0.5)
SERVICE_ENV = {
    "YARDARM_FULFILLMENT_MAX_DELIVER": str(MAX_DELIVER),
    "YARDARM_FULFILLMENT_BACKOFF_S": json.dumps(BACKOFF_S),
}
ERROR_RATE_FLAG = "fault.consumer-error-rate"
CARD_OK = "4242424242424242"
# A failing command is dead-lettered after MAX_DELIVER deliveries, BACKOFF_S apart, each
# fetched within a second or so: a few seconds, bounded here with a wide margin.
DLQ_BOUND_S = 20 * MAX_DELIVER * (1.0 + max(BACKOFF_S))
# The flag provider re-reads its file within seconds.
FLAG_BOUND_S = 60.0
APPLIED_BOUND_S = 30.0


def _flags(error_rate: str) -> dict[str, Any]:
    flags = default_flags()
    flags[ERROR_RATE_FLAG] = {
        "state": "ENABLED",
        "variants": {"all": 1.0, "off": 0.0, "high": 0.5},  # high: fulfillment's 0.3.0-errors
        "defaultVariant": error_rate,
    }
    return flags


@dataclass
class DlqStack:
    home: Path
    topology: Topology

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.topology.nats_port}"

    @property
    def fulfillment(self) -> str:
        return f"http://127.0.0.1:{self.topology.fulfillment_port(0)}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **SERVICE_ENV, "YARDARM_HOME": str(self.home), "COLUMNS": "200"}
        result = subprocess.run(
            [sys.executable, "-m", "yardarm", *args],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"yardarm {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def dead_letters(self) -> list[dict[str, Any]]:
        """`yardarm dlq list --json` of the payment commands (empty when there are none)."""
        result = self.cli("dlq", "list", "--json", "--subject", "cmd.payments.>", check=False)
        assert result.returncode in (0, 1), result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def set_error_rate(self, variant: str) -> None:
        """Rewrite the running stack's flag file, as an operator would."""
        path = flags_file(self.home)
        previous = path.stat().st_mtime
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"flags": _flags(variant)}, indent=2))
        os.replace(tmp, path)
        # The provider's watcher compares modification times: make this one differ.
        stamp = max(time.time(), previous + 1.0)
        os.utime(path, (stamp, stamp))

    def charges(self, saga_id: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.fulfillment}/payments/{saga_id}", timeout=10)
        if response.status_code == 404:
            return []
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["entries"]
        return [entry for entry in entries if entry["kind"] == "charge"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DlqStack]:
    require_servers()
    root = tmp_path_factory.mktemp("dlq-e2e")
    topology = Topology(base_port=pick_base_port(29000))
    config = root / "yardarm.yaml"
    config.write_text(yaml.safe_dump({"base_port": topology.base_port, "flags": _flags("all")}))
    running = DlqStack(root / "home", topology)
    try:
        running.cli("up", "--detach", "--config", str(config), "--no-prometheus")
        yield running
    finally:
        running.cli("down", check=False)


def charge(saga_id: str, **data: Any) -> Envelope:
    body = {"order_id": saga_id, "amount": {"cents": 1250, "currency": "USD"}, "card": CARD_OK}
    return Envelope(
        type="payments.charge", id=f"{saga_id}:payments.charge", saga_id=saga_id, data=body | data
    )


async def _publish(url: str, subject: str, envelope: Envelope) -> None:
    nc = await nats.connect(url)
    try:
        await publish(nc.jetstream(), subject, envelope, schema=2)
    finally:
        await nc.close()


async def _replies(url: str, saga_id: str) -> list[tuple[str, Envelope]]:
    """Every payment event on EVENTS for this saga, in stream order."""
    nc = await nats.connect(url)
    found: list[tuple[str, Envelope]] = []
    try:
        js = nc.jetstream()
        seq = 1
        for _ in range(100_000):
            try:
                raw = await js.get_msg("EVENTS", seq=seq, subject="evt.payments.>", next=True)
            except NotFoundError:
                break
            envelope = Envelope.model_validate_json(raw.data or b"")
            if envelope.saga_id == saga_id:
                found.append((str(raw.subject), envelope))
            seq = int(raw.seq or seq) + 1
    finally:
        await nc.close()
    return found


def send(stack: DlqStack, subject: str, envelope: Envelope) -> None:
    asyncio.run(_publish(stack.nats_url, subject, envelope))


def replies(stack: DlqStack, saga_id: str) -> list[tuple[str, Envelope]]:
    return asyncio.run(_replies(stack.nats_url, saga_id))


async def _quiet(stack: DlqStack) -> bool:
    """Fulfillment has nothing left that could apply a command again or publish another
    reply: its consumer holds no message undelivered or unacked, its outbox no reply."""
    nc = await nats.connect(stack.nats_url)
    try:
        info = await nc.jetstream().consumer_info("COMMANDS", "payments")
    finally:
        await nc.close()
    if info.num_pending or info.num_ack_pending:
        return False
    dsn = infra.postgres_dsn(stack.topology.postgres_port, "fulfillment")
    conn = await asyncpg.connect(dsn)
    try:
        unpublished = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    finally:
        await conn.close()
    return not unpublished


def quiet(stack: DlqStack) -> bool:
    return asyncio.run(_quiet(stack))


def wait_for(what: str, bound_s: float, check: Any) -> Any:
    """Poll `check()` every half second until it returns something truthy."""
    deadline = time.monotonic() + bound_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out after {bound_s:.0f}s waiting for {what}"
        time.sleep(0.5)


@dataclass(frozen=True)
class Poisoned:
    """The three commands published while the flag fails every delivery."""

    unknown: Envelope
    malformed: Envelope
    failing: Envelope
    letters: dict[str, dict[str, Any]]  # saga id -> its `dlq list --json` row


@pytest.fixture(scope="module")
def poisoned(stack: DlqStack) -> Poisoned:
    unknown_saga, malformed_saga, failing_saga = (str(uuid.uuid4()) for _ in range(3))
    unknown = charge(unknown_saga).model_copy(
        update={"type": "payments.teleport", "id": f"{unknown_saga}:payments.teleport"}
    )
    malformed = charge(malformed_saga)
    malformed.data.pop("card")
    failing = charge(failing_saga)
    send(stack, "cmd.payments.teleport", unknown)
    send(stack, "cmd.payments.charge", malformed)
    send(stack, "cmd.payments.charge", failing)
    wanted = {unknown_saga, malformed_saga, failing_saga}

    def all_dead() -> dict[str, dict[str, Any]] | None:
        rows = {
            row["envelope"]["saga_id"]: row
            for row in stack.dead_letters()
            if row["envelope"] and row["envelope"]["saga_id"] in wanted
        }
        return rows if set(rows) == wanted else None

    letters = wait_for("the three commands in the DLQ", DLQ_BOUND_S, all_dead)
    return Poisoned(unknown, malformed, failing, letters)


def test_an_unknown_type_and_a_malformed_command_are_dead_lettered_after_max_deliver(
    poisoned: Poisoned,
) -> None:
    unknown = poisoned.letters[poisoned.unknown.saga_id]
    assert unknown["subject"] == "cmd.payments.teleport"
    assert "no handler for command type 'payments.teleport'" in unknown["reason"]
    malformed = poisoned.letters[poisoned.malformed.saga_id]
    assert malformed["subject"] == "cmd.payments.charge"
    assert "card: Field required" in malformed["reason"]
    for row in (unknown, malformed):
        assert row["deliveries"] == MAX_DELIVER, row
        assert (row["consumer"], row["stream"]) == ("payments", "COMMANDS")
        assert row["headers"]["yardarm-schema"] == "2"


def test_a_charge_the_flag_fails_every_time_is_dead_lettered_without_a_trace_in_the_ledger(
    stack: DlqStack, poisoned: Poisoned
) -> None:
    row = poisoned.letters[poisoned.failing.saga_id]
    assert row["deliveries"] == MAX_DELIVER
    assert ERROR_RATE_FLAG in row["reason"]
    assert row["msg_id"] == poisoned.failing.id
    # Every delivery rolled back after its writes: no charge, no reply.
    assert stack.charges(poisoned.failing.saga_id) == []
    assert replies(stack, poisoned.failing.saga_id) == []


@pytest.fixture(scope="module")
def flag_cleared(stack: DlqStack, poisoned: Poisoned) -> None:
    """Set the flag to 0 in the running stack; a probe charge going through shows it took."""
    stack.set_error_rate("off")
    deadline = time.monotonic() + FLAG_BOUND_S
    while True:
        probe = charge(str(uuid.uuid4()))
        send(stack, "cmd.payments.charge", probe)

        def settled(probe: Envelope = probe) -> str | None:
            if stack.charges(probe.saga_id):
                return "charged"
            if any(r["envelope"]["id"] == probe.id for r in stack.dead_letters() if r["envelope"]):
                return "dead"
            return None

        if wait_for("the probe charge to settle", DLQ_BOUND_S, settled) == "charged":
            return
        assert time.monotonic() < deadline, f"{ERROR_RATE_FLAG} still fails deliveries"


def _replayed_once(stack: DlqStack, envelope: Envelope) -> None:
    """One charge in the ledger and one reply on EVENTS, also once fulfillment is quiet."""

    def answered() -> list[tuple[str, Envelope]]:
        return replies(stack, envelope.saga_id)

    wait_for(f"the reply to {envelope.id}", APPLIED_BOUND_S, answered)
    # Nothing left to deliver, acknowledge or publish: a second application, if there
    # were one, has shown by now.
    wait_for("fulfillment to go quiet", APPLIED_BOUND_S, lambda: quiet(stack))
    (entry,) = stack.charges(envelope.saga_id)
    assert (entry["status"], entry["amount_cents"], entry["currency"]) == ("charged", 1250, "USD")
    ((subject, reply),) = answered()
    assert subject == "evt.payments.charged"
    assert reply.id == f"{envelope.id}:reply" and reply.data["charge_id"] == entry["id"]


def test_the_charge_replayed_after_the_flag_is_cleared_is_applied_once(
    stack: DlqStack, poisoned: Poisoned, flag_cleared: None
) -> None:
    seq = poisoned.letters[poisoned.failing.saga_id]["seq"]
    replayed = stack.cli("dlq", "replay", str(seq))
    assert f"replayed DLQ #{seq}" in replayed.stdout
    _replayed_once(stack, poisoned.failing)
    assert seq not in [row["seq"] for row in stack.dead_letters()]


def test_the_malformed_command_replayed_with_a_corrected_body_is_applied_once(
    stack: DlqStack, poisoned: Poisoned, flag_cleared: None, tmp_path: Path
) -> None:
    seq = poisoned.letters[poisoned.malformed.saga_id]["seq"]
    missing = tmp_path / "missing.json"
    refused = stack.cli("dlq", "replay", str(seq), "--body-file", str(missing), check=False)
    assert refused.returncode == 1 and "cannot read" in refused.stderr
    assert seq in [row["seq"] for row in stack.dead_letters()]
    corrected = charge(poisoned.malformed.saga_id)
    body = tmp_path / "corrected.json"
    body.write_text(corrected.model_dump_json(indent=2))
    stack.cli("dlq", "replay", str(seq), "--body-file", str(body))
    _replayed_once(stack, corrected)
    left = [row["seq"] for row in stack.dead_letters()]
    assert seq not in left
    # What no fix was given for stays where it is.
    assert poisoned.letters[poisoned.unknown.saga_id]["seq"] in left
