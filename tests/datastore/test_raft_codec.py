"""Raft messages survive the wire exactly, and damaged bytes are refused with CodecError."""

from __future__ import annotations

import contextlib
import os
import random

import pytest
from yardarm_datastore.codec import CodecError, decode_message, encode_message
from yardarm_datastore.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1.0"))
U32 = 2**32 - 1
U64 = 2**64 - 1

SNAPSHOT = Snapshot(
    meta=SnapshotMeta(index=900, term=7, conf=ConfState(frozenset({1, 2, 3, 70000}))),
    data=b"\x00state\xffmachine" * 10,
)
ENTRIES = (
    Entry(term=7, index=41, kind=EntryKind.NOOP),
    Entry(term=7, index=42, kind=EntryKind.NORMAL, data=b'{"op":"put","k":"a"}'),
    Entry(
        term=7, index=43, kind=EntryKind.CONF, data=ConfChange("add", 4, "10.0.0.4:7000").encode()
    ),
    Entry(term=8, index=44, kind=EntryKind.NORMAL, data=bytes(range(256))),
)

# One message per type, with every field its type uses set to something non-default.
MESSAGES = {
    MsgType.PRE_VOTE: Message(MsgType.PRE_VOTE, 1, 2, 8, log_term=7, index=44, force=True),
    MsgType.PRE_VOTE_RESP: Message(MsgType.PRE_VOTE_RESP, 2, 1, 8, reject=True),
    MsgType.VOTE: Message(MsgType.VOTE, 3, 1, 9, log_term=8, index=44),
    MsgType.VOTE_RESP: Message(MsgType.VOTE_RESP, 1, 3, 9),
    MsgType.APPEND: Message(
        MsgType.APPEND, 1, 2, 8, log_term=7, index=40, entries=ENTRIES, commit=39
    ),
    MsgType.APPEND_RESP: Message(
        MsgType.APPEND_RESP, 2, 1, 8, index=40, reject=True, reject_hint=12
    ),
    MsgType.HEARTBEAT: Message(MsgType.HEARTBEAT, 1, 2, 8, commit=44, context=17),
    MsgType.HEARTBEAT_RESP: Message(MsgType.HEARTBEAT_RESP, 2, 1, 8, context=17),
    MsgType.SNAPSHOT: Message(MsgType.SNAPSHOT, 1, 4, 8, snapshot=SNAPSHOT),
    MsgType.TIMEOUT_NOW: Message(MsgType.TIMEOUT_NOW, 1, 2, 8),
    MsgType.PROPOSE: Message(
        MsgType.PROPOSE, 2, 1, 8, entries=(Entry(0, 0, data=b'{"op":"put"}'), Entry(0, 0))
    ),
    MsgType.READ_INDEX: Message(MsgType.READ_INDEX, 2, 1, 8, context=31),
    MsgType.READ_INDEX_RESP: Message(MsgType.READ_INDEX_RESP, 1, 2, 8, index=44, context=31),
}


def test_every_message_type_has_a_sample() -> None:
    assert set(MESSAGES) == set(MsgType)


@pytest.mark.parametrize("kind", list(MsgType))
def test_each_message_type_round_trips(kind: MsgType) -> None:
    msg = MESSAGES[kind]
    assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize("kind", list(EntryKind))
def test_entries_of_each_kind_round_trip_with_empty_and_binary_data(kind: EntryKind) -> None:
    entries = (Entry(3, 10, kind), Entry(3, 11, kind, b"\x00\xff" * 300))
    msg = Message(MsgType.APPEND, 1, 2, 3, log_term=3, index=9, entries=entries, commit=9)
    decoded = decode_message(encode_message(msg))
    assert decoded == msg
    for entry in decoded.entries:
        assert type(entry) is Entry and type(entry.kind) is EntryKind and type(entry.data) is bytes
        assert hash(entry) == hash(Entry(entry.term, entry.index, entry.kind, entry.data))
        with pytest.raises(AttributeError):
            entry.term = 0  # type: ignore[misc]


def test_snapshot_with_no_voters_and_no_data_round_trips() -> None:
    empty = Snapshot(SnapshotMeta(index=0, term=0, conf=ConfState(frozenset())), b"")
    msg = Message(MsgType.SNAPSHOT, 1, 2, 1, snapshot=empty)
    assert decode_message(encode_message(msg)) == msg


def test_extreme_field_values_round_trip() -> None:
    big = Snapshot(SnapshotMeta(U64, U64, ConfState(frozenset({U32}))), b"x")
    msg = Message(
        MsgType.APPEND,
        U32,
        U32,
        U64,
        log_term=U64,
        index=U64,
        entries=(Entry(U64, U64, EntryKind.CONF, b"y"),),
        commit=U64,
        reject=True,
        reject_hint=U64,
        context=U64,
        force=True,
        snapshot=big,
    )
    assert decode_message(encode_message(msg)) == msg


def test_decodes_from_a_memoryview() -> None:
    data = b"\x00\x00" + encode_message(MESSAGES[MsgType.APPEND])
    assert decode_message(memoryview(data)[2:]) == MESSAGES[MsgType.APPEND]


def test_the_wire_format_is_stable() -> None:
    """Replicas of different releases must understand each other during a rolling upgrade."""
    msg = Message(
        MsgType.APPEND,
        1,
        2,
        3,
        log_term=2,
        index=5,
        commit=4,
        entries=(Entry(3, 6, EntryKind.CONF, b"ab"),),
        reject=True,
    )
    assert encode_message(msg).hex() == (
        "05" + "00000001" + "00000002" + "0000000000000003" + "0000000000000002"
        "0000000000000005" + "0000000000000004" + "0000000000000000" + "0000000000000000"
        "01" + "00000001" + "0000000000000003" + "0000000000000006" + "02" + "00000002" + "6162"
    )


@pytest.mark.parametrize("kind", list(MsgType))
def test_every_truncation_is_refused(kind: MsgType) -> None:
    data = encode_message(MESSAGES[kind])
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode_message(data[:cut])


@pytest.mark.parametrize("kind", [MsgType.APPEND, MsgType.SNAPSHOT, MsgType.VOTE])
def test_trailing_bytes_are_refused(kind: MsgType) -> None:
    with pytest.raises(CodecError, match="unexpected bytes"):
        decode_message(encode_message(MESSAGES[kind]) + b"\x00")


def test_unknown_codes_and_flags_are_refused() -> None:
    good = bytearray(encode_message(MESSAGES[MsgType.APPEND]))
    flags_at, first_kind_at = 1 + 4 + 4 + 6 * 8, 1 + 4 + 4 + 6 * 8 + 1 + 4 + 16
    for offset, value, what in [
        (0, 0, "type"),
        (0, 200, "type"),
        (flags_at, 0x80, "flags"),
        (first_kind_at, 9, "kind"),
    ]:
        bad = bytearray(good)
        bad[offset] = value
        with pytest.raises(CodecError, match=what):
            decode_message(bytes(bad))


def test_an_absurd_entry_count_is_refused_without_looping() -> None:
    data = bytearray(encode_message(MESSAGES[MsgType.HEARTBEAT]))
    data[-4:] = b"\xff\xff\xff\xff"
    with pytest.raises(CodecError, match="cannot fit"):
        decode_message(bytes(data))


def test_random_damage_raises_only_codec_errors() -> None:
    rng = random.Random(1234)
    samples = list(MESSAGES.values())
    for _ in range(int(3000 * SCALE)):
        data = bytearray(encode_message(rng.choice(samples)))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(CodecError):
            decode_message(bytes(data))
    for _ in range(int(3000 * SCALE)):
        garbage = rng.randbytes(rng.randint(0, 200))
        with contextlib.suppress(CodecError):
            decode_message(garbage)


def test_random_messages_round_trip() -> None:
    rng = random.Random(99)
    for _ in range(int(500 * SCALE)):
        snapshot = None
        if rng.random() < 0.3:
            voters = frozenset(rng.randint(1, U32) for _ in range(rng.randint(0, 7)))
            meta = SnapshotMeta(rng.randint(0, U64), rng.randint(0, U64), ConfState(voters))
            snapshot = Snapshot(meta, rng.randbytes(rng.randint(0, 50)))
        entries = tuple(
            Entry(
                rng.randint(0, U64),
                rng.randint(0, U64),
                rng.choice(list(EntryKind)),
                rng.randbytes(rng.randint(0, 40)),
            )
            for _ in range(rng.randint(0, 5))
        )
        msg = Message(
            rng.choice(list(MsgType)),
            rng.randint(0, U32),
            rng.randint(0, U32),
            rng.randint(0, U64),
            log_term=rng.randint(0, U64),
            index=rng.randint(0, U64),
            entries=entries,
            commit=rng.randint(0, U64),
            reject=rng.random() < 0.5,
            reject_hint=rng.randint(0, U64),
            context=rng.randint(0, U64),
            force=rng.random() < 0.5,
            snapshot=snapshot,
        )
        assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize(
    "msg",
    [
        Message(MsgType.VOTE, 2**32, 1, 1),
        Message(MsgType.VOTE, 1, 1, -1),
        Message(MsgType.APPEND, 1, 2, 1, entries=(Entry(2**64, 1),)),
        Message(
            MsgType.SNAPSHOT,
            1,
            2,
            1,
            snapshot=Snapshot(SnapshotMeta(1, 1, ConfState(frozenset({-5}))), b""),
        ),
    ],
)
def test_values_that_do_not_fit_are_refused_when_encoding(msg: Message) -> None:
    with pytest.raises(CodecError):
        encode_message(msg)
