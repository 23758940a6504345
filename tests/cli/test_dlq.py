"""`yardarm dlq list` and `yardarm dlq replay` against a real NATS server.

Dead letters are published here in the contract's format (subject `dlq.<subject>`, the
original body and headers, the `yardarm-dlq-*` headers), as a consumer writes them. Each
test uses subjects of its own, since the NATS server is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from typer.testing import CliRunner, Result
from yardarm_kit.dead_letters import publish_dead_letter
from yardarm_kit.messaging import Envelope, ensure_streams

from tests.chaos.conftest import free_base_port
from yardarm.cli import app
from yardarm.dlq.store import DeadLetter, dlq_filter, plan_replay, subject_matches
from yardarm.local import control
from yardarm.local.render import instances
from yardarm.model import Topology

T = TypeVar("T")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["dlq", *args], env={"COLUMNS": "250"})


@dataclass(frozen=True)
class Sent:
    """A dead letter as published: its DLQ sequence and what it carried."""

    seq: int
    subject: str
    body: bytes
    headers: dict[str, str]


async def _publish_dead_letter(
    url: str,
    subject: str,
    body: bytes,
    *,
    consumer: str = "payments",
    deliveries: int = 5,
    reason: str = "boom",
    stream_seq: int,
    msg_id: str | None = None,
) -> Sent:
    original = {"yardarm-schema": "2", "traceparent": TRACEPARENT}
    headers = {
        **original,
        "Nats-Msg-Id": f"dlq:COMMANDS:{stream_seq}",
        "yardarm-dlq-reason": reason,
        "yardarm-dlq-stream": "COMMANDS",
        "yardarm-dlq-subject": subject,
        "yardarm-dlq-consumer": consumer,
        "yardarm-dlq-stream-seq": str(stream_seq),
        "yardarm-dlq-deliveries": str(deliveries),
        "yardarm-dlq-at": "2026-01-02T03:04:05Z",
    }
    if msg_id is not None:
        headers["yardarm-dlq-msg-id"] = msg_id
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        ack = await js.publish(f"dlq.{subject}", body, headers=headers)
    finally:
        await nc.close()
    return Sent(int(ack.seq), subject, body, original)


async def _get(url: str, stream: str, *, seq: int | None = None, last: str | None = None) -> Any:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            return await js.get_msg(stream, seq=seq, subject=last)
        except NotFoundError:
            return None
    finally:
        await nc.close()


def dlq_message(url: str, seq: int) -> RawStreamMsg | None:
    found: RawStreamMsg | None = run(_get(url, "DLQ", seq=seq))
    return found


def last_on(url: str, subject: str) -> RawStreamMsg | None:
    found: RawStreamMsg | None = run(_get(url, "COMMANDS", last=subject))
    return found


class Letters:
    """Publishes dead letters under subjects no other test uses: `cmd.<token>.<name>`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.token = f"dlqt{uuid.uuid4().hex[:10]}"
        self.pattern = f"cmd.{self.token}.>"
        # Dead letters are deduplicated by their origin (`dlq:<stream>:<seq>`): one each.
        self._stream_seqs = itertools.count(1_000_000 + uuid.uuid4().int % 1_000_000_000)

    def subject(self, name: str) -> str:
        return f"cmd.{self.token}.{name}"

    def envelope(self, name: str, saga_id: str = "saga-1") -> Envelope:
        return Envelope(
            type=f"{self.token}.{name}",
            id=f"{saga_id}:{self.token}.{name}",
            saga_id=saga_id,
            data={"order_id": saga_id, "amount_cents": 1200},
        )

    def stream_seq(self) -> int:
        return next(self._stream_seqs)

    def publish(self, name: str, body: bytes | None = None, **fields: Any) -> Sent:
        payload = body if body is not None else self.envelope(name).model_dump_json().encode()
        fields.setdefault("stream_seq", self.stream_seq())
        return run(_publish_dead_letter(self.url, self.subject(name), payload, **fields))


@pytest.fixture
def letters(nats_url: str) -> Letters:
    return Letters(nats_url)


def listed(letters: Letters, *extra: str) -> list[dict[str, Any]]:
    result = cli("list", "--json", "--subject", letters.pattern, "--nats-url", letters.url, *extra)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_list_shows_each_dead_letter_with_its_cause(letters: Letters) -> None:
    charge = letters.publish("charge", reason="unsupported schema 3 (accepts 1, 2)", deliveries=5)
    ship = letters.publish("schedule", consumer="shipping", deliveries=3, reason="no handler")
    result = cli("list", "--subject", letters.pattern, "--nats-url", letters.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.lstrip("│ ").startswith(f"{charge.seq} "))
    for shown in (letters.subject("charge"), "payments", " 5 ", "unsupported schema 3"):
        assert shown in row, (shown, row)
    assert f"{letters.token}.charge" in row  # the envelope's type
    assert any(f"saga-1:{letters.token}.charge" in line for line in lines)  # and its id
    assert "2026-01-02T03:04:05Z" in row
    other = next(line for line in lines if line.lstrip("│ ").startswith(f"{ship.seq} "))
    assert "shipping" in other and " 3 " in other and "no handler" in other
    assert "2 dead letters" in result.stdout


def test_list_json_carries_every_field_and_the_body(letters: Letters) -> None:
    origin = letters.stream_seq()
    sent = letters.publish("charge", reason="x" * 1000, deliveries=4, stream_seq=origin, msg_id="m")
    broken = letters.publish("refund", body=b"{not json")
    rows = listed(letters)
    assert [row["seq"] for row in rows] == [sent.seq, broken.seq]
    first = rows[0]
    assert first["subject"] == letters.subject("charge")
    assert first["dlq_subject"] == f"dlq.{letters.subject('charge')}"
    assert (first["stream"], first["stream_seq"]) == ("COMMANDS", origin)
    assert first["consumer"] == "payments"
    assert first["deliveries"] == 4 and first["reason"] == "x" * 1000
    assert first["dead_lettered_at"] == "2026-01-02T03:04:05Z" and first["stored_at"]
    assert first["msg_id"] == "m"
    envelope = letters.envelope("charge")
    assert first["envelope"] == {"type": envelope.type, "id": envelope.id, "saga_id": "saga-1"}
    assert Envelope.model_validate_json(first["body"]) == envelope
    assert first["headers"]["traceparent"] == TRACEPARENT
    assert rows[1]["envelope"] is None and rows[1]["body"] == "{not json"


def test_list_stops_at_the_limit_and_says_more_follow(letters: Letters) -> None:
    sent = [letters.publish(name) for name in ("a", "b", "c")]
    assert [row["seq"] for row in listed(letters, "--limit", "2")] == [s.seq for s in sent[:2]]
    shown = cli("list", "--subject", letters.pattern, "--limit", "2", "--nats-url", letters.url)
    assert shown.exit_code == 0, shown.output
    assert "raise --limit" in shown.stdout


def test_list_with_nothing_matching_exits_1(letters: Letters) -> None:
    letters.publish("charge")
    result = cli("list", "--subject", f"cmd.{letters.token}.nothing", "--nats-url", letters.url)
    assert result.exit_code == 1
    assert "no dead letters in DLQ matching" in result.stderr
    as_json = cli("list", "--json", "--subject", "cmd.nobody.>", "--nats-url", letters.url)
    assert as_json.exit_code == 1 and json.loads(as_json.stdout) == []


def test_replay_republishes_with_the_original_headers_then_deletes(letters: Letters) -> None:
    sent = letters.publish("charge", msg_id="saga-1:charge")
    kept = letters.publish("refund")
    result = cli("replay", str(sent.seq), "--nats-url", letters.url)
    assert result.exit_code == 0, result.output
    assert f"replayed DLQ #{sent.seq}" in result.stdout and "removed from DLQ" in result.stdout

    again = last_on(letters.url, sent.subject)
    assert again is not None and again.data == sent.body
    headers = dict(again.headers or {})
    assert headers["Nats-Msg-Id"] == f"saga-1:charge:replay:{sent.seq}"
    assert headers["yardarm-replay-of"] == str(sent.seq)
    for key, value in sent.headers.items():
        assert headers[key] == value, key
    assert not [key for key in headers if key.startswith("yardarm-dlq-")]

    assert dlq_message(letters.url, sent.seq) is None
    assert [row["seq"] for row in listed(letters)] == [kept.seq]


def test_replay_without_an_original_msg_id_derives_one_from_the_dead_letter(
    letters: Letters,
) -> None:
    origin = letters.stream_seq()
    sent = letters.publish("charge", stream_seq=origin)
    assert cli("replay", str(sent.seq), "--nats-url", letters.url).exit_code == 0
    again = last_on(letters.url, sent.subject)
    assert again is not None
    assert dict(again.headers or {})["Nats-Msg-Id"] == f"dlq:COMMANDS:{origin}:replay:{sent.seq}"


def test_replay_with_a_body_file_sends_the_corrected_envelope(
    letters: Letters, tmp_path: Path
) -> None:
    sent = letters.publish("charge", body=b'{"type": "broken"}')
    fixed = letters.envelope("charge", saga_id="saga-9")
    path = tmp_path / "fixed.json"
    path.write_text(fixed.model_dump_json(indent=2))
    result = cli("replay", str(sent.seq), "--body-file", str(path), "--nats-url", letters.url)
    assert result.exit_code == 0, result.output
    again = last_on(letters.url, sent.subject)
    assert again is not None and again.data is not None
    assert Envelope.model_validate_json(again.data) == fixed
    assert dict(again.headers or {})["yardarm-replay-of"] == str(sent.seq)
    assert dlq_message(letters.url, sent.seq) is None


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"{not json", "is not a message envelope"),
        (b'{"type": "payments.charge", "saga_id": "s"}', "id: Field required"),
        (None, "cannot read"),
    ],
)
def test_a_bad_body_file_leaves_the_dead_letter_untouched(
    letters: Letters, tmp_path: Path, content: bytes | None, complaint: str
) -> None:
    sent = letters.publish("charge")
    path = tmp_path / "fixed.json"
    if content is not None:
        path.write_bytes(content)
    result = cli("replay", str(sent.seq), "--body-file", str(path), "--nats-url", letters.url)
    assert result.exit_code == 1
    assert complaint in result.stderr
    assert last_on(letters.url, sent.subject) is None
    stored = dlq_message(letters.url, sent.seq)
    assert stored is not None and stored.data == sent.body


def test_an_unknown_seq_is_named_and_nothing_is_replayed(letters: Letters) -> None:
    sent = letters.publish("charge")
    unknown = sent.seq + 1_000_000
    result = cli("replay", str(sent.seq), str(unknown), "--nats-url", letters.url)
    assert result.exit_code == 1
    assert f"no dead letter with sequence {unknown}" in result.stderr
    assert "yardarm dlq list" in result.stderr
    assert last_on(letters.url, sent.subject) is None
    assert dlq_message(letters.url, sent.seq) is not None


def test_replay_all_takes_only_the_subjects_asked_for(letters: Letters) -> None:
    charges = [letters.publish("charge"), letters.publish("charge")]
    refund = letters.publish("refund")
    result = cli(
        "replay", "--all", "--subject", letters.subject("charge"), "--nats-url", letters.url
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("replayed DLQ #") == 2
    assert [row["seq"] for row in listed(letters)] == [refund.seq]
    assert all(dlq_message(letters.url, sent.seq) is None for sent in charges)
    nothing = cli(
        "replay", "--all", "--subject", letters.subject("charge"), "--nats-url", letters.url
    )
    assert nothing.exit_code == 1 and "nothing to replay" in nothing.stderr


def test_a_seq_outside_the_subject_guard_is_refused(letters: Letters) -> None:
    sent = letters.publish("refund")
    result = cli(
        "replay", str(sent.seq), "--subject", letters.subject("charge"), "--nats-url", letters.url
    )
    assert result.exit_code == 1 and "did not fail on a subject matching" in result.stderr
    assert dlq_message(letters.url, sent.seq) is not None


def test_dry_run_shows_the_message_and_changes_nothing(letters: Letters) -> None:
    sent = letters.publish("charge", msg_id="saga-1:charge")
    result = cli("replay", str(sent.seq), "--dry-run", "--nats-url", letters.url)
    assert result.exit_code == 0, result.output
    assert f"would replay DLQ #{sent.seq}" in result.stdout
    assert f"saga-1:charge:replay:{sent.seq}" in result.stdout
    assert f"traceparent: {TRACEPARENT}" in result.stdout
    assert last_on(letters.url, sent.subject) is None
    assert dlq_message(letters.url, sent.seq) is not None


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((), "SEQ... or --all"),
        (("1", "--all"), "not both"),
        (("1", "2", "--body-file", "x.json"), "exactly one SEQ"),
        (("--all", "--body-file", "x.json"), "exactly one SEQ"),
    ],
)
def test_replay_arguments_are_checked_before_anything_is_sent(
    args: tuple[str, ...], complaint: str
) -> None:
    result = cli("replay", *args, "--nats-url", "nats://127.0.0.1:1")
    assert result.exit_code == 1
    assert complaint in result.stderr


def test_an_unreachable_nats_says_what_to_check(tmp_path: Path) -> None:
    for args in (("list",), ("replay", "1")):
        result = cli(*args, "--nats-url", "nats://127.0.0.1:1")
        assert result.exit_code == 1
        assert "cannot connect to NATS at nats://127.0.0.1:1" in result.stderr
        assert "--nats-url" in result.stderr
    nowhere = cli("list", "--home", str(tmp_path / "no-stack"))
    assert nowhere.exit_code == 1
    assert "no stack is running from" in nowhere.stderr and "yardarm up" in nowhere.stderr


@pytest.fixture
def stack_home(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A supervisor running only the stack's NATS, as `yardarm up` renders it."""
    home = tmp_path / "home"
    topology = Topology(base_port=free_base_port())
    (spec,) = [spec for spec in instances(topology, home) if spec.name == "nats"]
    try:
        control.start_plan(home, [spec], timeout=60)
        yield home, f"nats://127.0.0.1:{topology.nats_port}"
    finally:
        control.stop_stack(home)


def test_without_a_url_the_stack_running_from_home_is_read(
    stack_home: tuple[Path, str],
) -> None:
    home, url = stack_home
    empty = cli("list", "--home", str(home))
    assert empty.exit_code == 1
    assert f"NATS at {url} has no DLQ stream" in empty.stderr
    stack_letters = Letters(url)
    sent = stack_letters.publish("charge")
    result = cli("list", "--json", "--home", str(home))
    assert result.exit_code == 0, result.output
    assert [row["seq"] for row in json.loads(result.stdout)] == [sent.seq]
    assert cli("replay", str(sent.seq), "--home", str(home)).exit_code == 0
    assert last_on(url, sent.subject) is not None


def _letter(subject: str, headers: dict[str, str]) -> DeadLetter:
    return DeadLetter(seq=3, subject=subject, headers=headers, body=b"{}", stored_at=None)


def test_patterns_name_original_subjects_with_nats_wildcards() -> None:
    assert dlq_filter(None) == "dlq.>"
    assert dlq_filter("cmd.payments.>") == "dlq.cmd.payments.>"
    assert dlq_filter("dlq.cmd.*") == "dlq.cmd.*"
    letter = _letter("dlq.cmd.payments.charge", {})
    assert subject_matches("cmd.payments.>", letter)
    assert subject_matches("cmd.*.charge", letter)
    assert subject_matches("cmd.payments.charge", letter)
    assert not subject_matches("cmd.payments", letter)
    assert not subject_matches("cmd.*", letter)
    assert not subject_matches("cmd.shipping.>", letter)
    for bad in ("", "cmd..x", "cmd.>.x", "cmd pay"):
        with pytest.raises(Exception, match="not a NATS subject pattern"):
            dlq_filter(bad)


def test_a_replay_drops_the_dead_letter_headers_and_any_earlier_replay_mark() -> None:
    letter = _letter(
        "dlq.cmd.payments.charge",
        {
            "Nats-Msg-Id": "dlq:COMMANDS:5",
            "yardarm-dlq-reason": "boom",
            "Yardarm-Dlq-Subject": "cmd.payments.charge",
            "yardarm-replay-of": "1",
            "yardarm-schema": "2",
        },
    )
    plan = plan_replay(letter)
    assert plan.subject == "cmd.payments.charge"
    assert plan.headers == {
        "yardarm-schema": "2",
        "Nats-Msg-Id": "dlq:COMMANDS:5:replay:3",
        "yardarm-replay-of": "3",
    }


async def _kit_dead_letter(url: str, subject: str, envelope: Envelope, stream_seq: int) -> int:
    """Dead-letter the way the kit's consumers do, then find its DLQ sequence."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await publish_dead_letter(
            js,
            subject=subject,
            body=envelope.model_dump_json().encode(),
            headers={"Nats-Msg-Id": envelope.id, "yardarm-schema": "2"},
            reason="no handler for command type",
            stream="COMMANDS",
            consumer="payments",
            stream_seq=stream_seq,
            deliveries=3,
        )
        raw = await js.get_msg("DLQ", subject=f"dlq.{subject}")
        assert raw.seq is not None
        return raw.seq
    finally:
        await nc.close()


def test_a_dead_letter_written_by_the_kit_lists_and_replays(letters: Letters) -> None:
    envelope = letters.envelope("charge")
    subject = letters.subject("charge")
    seq = run(_kit_dead_letter(letters.url, subject, envelope, letters.stream_seq()))
    (row,) = listed(letters)
    assert (row["seq"], row["subject"], row["consumer"]) == (seq, subject, "payments")
    assert (row["deliveries"], row["reason"]) == (3, "no handler for command type")
    assert row["msg_id"] == envelope.id and row["envelope"]["id"] == envelope.id
    assert cli("replay", str(seq), "--nats-url", letters.url).exit_code == 0
    again = last_on(letters.url, subject)
    assert again is not None and again.data is not None
    assert Envelope.model_validate_json(again.data) == envelope
    headers = dict(again.headers or {})
    assert headers["Nats-Msg-Id"] == f"{envelope.id}:replay:{seq}"
    assert headers["yardarm-schema"] == "2"
