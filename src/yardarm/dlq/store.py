"""Read dead letters from the DLQ stream and replay them onto their original subjects.

Dead letters are read by stream sequence (`STREAM.MSG.GET`), never through a consumer,
so listing changes nothing on the server. A replay republishes the message with its
original headers under a new `Nats-Msg-Id`, waits for the stream's PubAck, and only then
deletes the dead letter: a crash in between leaves the letter in place, and replaying it
again within the stream's duplicate window is deduplicated by that id.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from yardarm_kit.dead_letters import (
    AT,
    CONSUMER,
    DELIVERIES,
    DLQ_HEADER_PREFIX,
    DLQ_STREAM,
    DLQ_SUBJECT_PREFIX,
    MSG_ID,
    ORIGINAL_MSG_ID,
    REASON,
    REPLAY_OF,
    STREAM,
    STREAM_SEQ,
    SUBJECT,
    dead_letter_msg_id,
)
from yardarm_kit.messaging import DUPLICATE_WINDOW_S, Envelope

CONNECT_TIMEOUT_S = 5.0
API_TIMEOUT_S = 10.0
_TOKEN = re.compile(r"[^\s.*>]+|\*|>")


class DlqError(Exception):
    """Something the user must act on: `message` says what happened, `hint` what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class DeadLetter:
    """One message in the DLQ stream, with its dead-letter headers read back."""

    seq: int
    subject: str
    headers: Mapping[str, str]
    body: bytes
    stored_at: datetime | None

    def header(self, name: str) -> str | None:
        """A header by name, ignoring case (a hand-written dead letter may differ in case)."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    @property
    def original_subject(self) -> str:
        return self.header(SUBJECT) or self.subject.removeprefix(DLQ_SUBJECT_PREFIX)

    @property
    def deliveries(self) -> int | None:
        return _int(self.header(DELIVERIES))

    @property
    def envelope(self) -> Envelope | None:
        """The body as an envelope, or None when it is not one (why it may have failed)."""
        try:
            return Envelope.model_validate_json(self.body)
        except ValidationError:
            return None

    def to_json(self) -> dict[str, Any]:
        envelope = self.envelope
        return {
            "seq": self.seq,
            "subject": self.original_subject,
            "dlq_subject": self.subject,
            "stream": self.header(STREAM),
            "stream_seq": _int(self.header(STREAM_SEQ)),
            "consumer": self.header(CONSUMER),
            "deliveries": self.deliveries,
            "reason": self.header(REASON),
            "dead_lettered_at": self.header(AT),
            "stored_at": None if self.stored_at is None else self.stored_at.isoformat(),
            "msg_id": self.header(ORIGINAL_MSG_ID),
            "envelope": None
            if envelope is None
            else {"type": envelope.type, "id": envelope.id, "saga_id": envelope.saga_id},
            "headers": dict(self.headers),
            "body": self.body.decode("utf-8", errors="replace"),
        }


@dataclass(frozen=True)
class Replay:
    """What a replay publishes (or, in a dry run, would publish)."""

    letter: DeadLetter
    subject: str
    headers: dict[str, str]
    body: bytes
    expected_stream: str | None

    @property
    def msg_id(self) -> str:
        return self.headers[MSG_ID]


@dataclass(frozen=True)
class Replayed:
    """A replay the stream acknowledged."""

    replay: Replay
    stream: str
    stream_seq: int
    duplicate: bool


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def dlq_filter(pattern: str | None) -> str:
    """The DLQ subject filter for a pattern on ORIGINAL subjects (`cmd.payments.>`).

    A pattern that already starts with `dlq.` is taken as it is.
    """
    if pattern is None:
        return f"{DLQ_SUBJECT_PREFIX}>"
    tokens = pattern.split(".")
    valid = all(_TOKEN.fullmatch(token) for token in tokens) and ">" not in tokens[:-1]
    if not pattern or not valid:
        raise DlqError(
            f"{pattern!r} is not a NATS subject pattern",
            "use dot-separated tokens with * for one token and a final > for the rest, "
            "e.g. cmd.payments.> or cmd.*.charge",
        )
    return pattern if pattern.startswith(DLQ_SUBJECT_PREFIX) else DLQ_SUBJECT_PREFIX + pattern


def subject_matches(pattern: str, letter: DeadLetter) -> bool:
    """NATS wildcard matching of `pattern` (as `dlq_filter` reads it) on the letter's subject."""
    wanted = dlq_filter(pattern).split(".")
    tokens = letter.subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(tokens) == len(wanted)


def read_body_file(path: Path) -> bytes:
    """A corrected body: one JSON envelope, checked before anything is sent."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DlqError(
            f"cannot read {path}: {exc.strerror}", "pass the path of a JSON envelope file"
        ) from exc
    try:
        envelope = Envelope.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(document)'}: {error['msg']}"
            for error in exc.errors(include_url=False)[:5]
        )
        raise DlqError(
            f"{path} is not a message envelope ({problems}); nothing was replayed",
            'the file must hold one JSON object {"type", "id", "saga_id", "data"}; '
            "`yardarm dlq list --json` shows the failed body to start from",
        ) from exc
    return envelope.model_dump_json().encode()


@contextlib.asynccontextmanager
async def open_jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    """One short-lived connection; a server that is not there fails at once, with a hint."""
    errors: list[Exception] = []

    async def collect(exc: Exception) -> None:  # reported below, not logged as it happens
        errors.append(exc)

    try:
        nc: NATS = await asyncio.wait_for(
            # One attempt: nats-py's default keeps retrying a refused server for ever.
            nats.connect(
                url,
                name="yardarm-dlq",
                connect_timeout=2,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=collect,
            ),
            timeout=CONNECT_TIMEOUT_S,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        cause = errors[-1] if errors else exc
        raise DlqError(
            f"cannot connect to NATS at {url} ({cause.__class__.__name__}: {cause})",
            "is the stack running (`yardarm status`)? or pass --nats-url",
        ) from exc
    try:
        js = nc.jetstream(timeout=API_TIMEOUT_S)
        try:
            await js.stream_info(DLQ_STREAM)
        except NotFoundError as exc:
            raise DlqError(
                f"NATS at {url} has no {DLQ_STREAM} stream, so nothing was ever dead-lettered "
                "there",
                "check --nats-url, or start the stack's services once (`yardarm up`)",
            ) from exc
        yield js
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def _letter(raw: Any) -> DeadLetter:
    headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
    return DeadLetter(
        seq=int(raw.seq),
        subject=str(raw.subject),
        headers=headers,
        body=bytes(raw.data or b""),
        stored_at=raw.time,
    )


async def list_letters(
    js: JetStreamContext, pattern: str | None = None, limit: int | None = None
) -> list[DeadLetter]:
    """Dead letters whose original subject matches `pattern`, oldest first, at most `limit`."""
    subject = dlq_filter(pattern)
    letters: list[DeadLetter] = []
    seq = 1
    while limit is None or len(letters) < limit:
        try:
            raw = await js.get_msg(DLQ_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        letter = _letter(raw)
        letters.append(letter)
        seq = letter.seq + 1
    return letters


async def get_letters(js: JetStreamContext, seqs: Sequence[int]) -> list[DeadLetter]:
    """The dead letters with these DLQ sequences; every unknown one is named in the error."""
    letters: list[DeadLetter] = []
    missing: list[int] = []
    for seq in dict.fromkeys(seqs):
        try:
            letters.append(_letter(await js.get_msg(DLQ_STREAM, seq=seq)))
        except NotFoundError:
            missing.append(seq)
    if missing:
        names = ", ".join(str(seq) for seq in missing)
        raise DlqError(
            f"no dead letter with sequence {names} in {DLQ_STREAM} (already replayed, or "
            "never there); nothing was replayed",
            "`yardarm dlq list` shows the sequences there are",
        )
    return letters


def plan_replay(letter: DeadLetter, body: bytes | None = None) -> Replay:
    """The original message again: its headers (minus the dead-letter ones) and a new id."""
    headers = {
        key: value
        for key, value in letter.headers.items()
        if not key.lower().startswith(DLQ_HEADER_PREFIX)
        and key.lower() not in (MSG_ID.lower(), REPLAY_OF.lower())
    }
    base = (
        letter.header(ORIGINAL_MSG_ID)
        or letter.header(MSG_ID)
        or dead_letter_msg_id(DLQ_STREAM, letter.seq)
    )
    headers[MSG_ID] = f"{base}:replay:{letter.seq}"
    headers[REPLAY_OF] = str(letter.seq)
    return Replay(
        letter=letter,
        subject=letter.original_subject,
        headers=headers,
        body=letter.body if body is None else body,
        expected_stream=letter.header(STREAM),
    )


async def replay(js: JetStreamContext, plan: Replay) -> Replayed:
    """Publish, wait for the PubAck, then delete the dead letter (never the other way round)."""
    headers = dict(plan.headers)
    try:
        ack = await js.publish(
            plan.subject, plan.body, headers=headers, stream=plan.expected_stream
        )
    except (nats.errors.Error, TimeoutError) as exc:
        raise DlqError(
            f"publishing DLQ #{plan.letter.seq} to {plan.subject} failed "
            f"({exc.__class__.__name__}: {exc}); it stays in {DLQ_STREAM}",
            "check that a stream takes the subject (`yardarm status`), then replay again",
        ) from exc
    replayed = Replayed(plan, str(ack.stream), int(ack.seq), bool(ack.duplicate))
    try:
        await js.delete_msg(DLQ_STREAM, plan.letter.seq)
    except NotFoundError:
        pass  # another replay of the same letter deleted it first
    except (nats.errors.Error, TimeoutError) as exc:
        raise DlqError(
            f"DLQ #{plan.letter.seq} was republished to {plan.subject} ({ack.stream} "
            f"#{ack.seq}) but could not be deleted ({exc.__class__.__name__}: {exc})",
            "replay it again: the copy is deduplicated by its Nats-Msg-Id for "
            f"{DUPLICATE_WINDOW_S:.0f}s, and consumers skip an envelope id they processed",
        ) from exc
    return replayed
