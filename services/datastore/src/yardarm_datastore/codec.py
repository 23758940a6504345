"""The wire encoding of Raft messages between replicas.

Binary and fixed-layout, because a leader sends many APPENDs a second to every follower
and JSON would spend more time than the log write. All integers are big-endian:

    header   type u8, src u32, dst u32, term u64, log_term u64, index u64, commit u64,
             reject_hint u64, context u64, flags u8, entry count u32
    entry    term u64, index u64, kind u8, data length u32, data     (entry count times)
    snapshot index u64, term u64, voter count u32, voter u32 (each), data length u32, data
             (present only when the HAS_SNAPSHOT flag is set)

Type and kind codes are fixed here, never derived from enum order, so the encoding
survives reordering the enums. Decoding is strict: a short buffer, trailing bytes or an
unknown code raise `CodecError`, so a damaged frame is refused rather than half-applied.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

from yardarm_datastore.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

_HEADER = struct.Struct(">BIIQQQQQQBI")
_ENTRY = struct.Struct(">QQBI")
_SNAPSHOT = struct.Struct(">QQI")
_U32 = struct.Struct(">I")

_REJECT = 0x01
_FORCE = 0x02
_HAS_SNAPSHOT = 0x04
_KNOWN_FLAGS = _REJECT | _FORCE | _HAS_SNAPSHOT

_TYPE_CODES: dict[MsgType, int] = {
    MsgType.PRE_VOTE: 1,
    MsgType.PRE_VOTE_RESP: 2,
    MsgType.VOTE: 3,
    MsgType.VOTE_RESP: 4,
    MsgType.APPEND: 5,
    MsgType.APPEND_RESP: 6,
    MsgType.HEARTBEAT: 7,
    MsgType.HEARTBEAT_RESP: 8,
    MsgType.SNAPSHOT: 9,
    MsgType.TIMEOUT_NOW: 10,
    MsgType.PROPOSE: 11,
    MsgType.READ_INDEX: 12,
    MsgType.READ_INDEX_RESP: 13,
}
_TYPES: dict[int, MsgType] = {code: kind for kind, code in _TYPE_CODES.items()}

_KIND_CODES: dict[EntryKind, int] = {
    EntryKind.NORMAL: 0,
    EntryKind.NOOP: 1,
    EntryKind.CONF: 2,
}
_KINDS: dict[int, EntryKind] = {code: kind for kind, code in _KIND_CODES.items()}


class CodecError(ValueError):
    """The bytes are not a valid encoded message, or the message cannot be encoded."""


def _entry_builder() -> Callable[[int, int, EntryKind, bytes], Entry]:
    """A faster `Entry(term, index, kind, data)` for decoding.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__`, which is
    most of what decoding an entry costs; filling the slots directly halves it. Used only
    while `Entry` is the plain four-slot dataclass this was written against.
    """
    names = tuple(f.name for f in dataclasses.fields(Entry))
    if names != ("term", "index", "kind", "data") or hasattr(Entry, "__post_init__"):
        return Entry
    new = object.__new__
    set_term, set_index, set_kind, set_data = (getattr(Entry, name).__set__ for name in names)

    def build(term: int, index: int, kind: EntryKind, data: bytes) -> Entry:
        entry: Entry = new(Entry)
        set_term(entry, term)
        set_index(entry, index)
        set_kind(entry, kind)
        set_data(entry, data)
        return entry

    return build


_new_entry = _entry_builder()


def encode_message(msg: Message) -> bytes:
    """The wire form of `msg`; raises CodecError if a field does not fit its width."""
    flags = (_REJECT if msg.reject else 0) | (_FORCE if msg.force else 0)
    if msg.snapshot is not None:
        flags |= _HAS_SNAPSHOT
    entries = msg.entries
    try:
        parts = [
            _HEADER.pack(
                _TYPE_CODES[msg.type],
                msg.src,
                msg.dst,
                msg.term,
                msg.log_term,
                msg.index,
                msg.commit,
                msg.reject_hint,
                msg.context,
                flags,
                len(entries),
            )
        ]
        pack_entry = _ENTRY.pack
        kind_codes = _KIND_CODES
        for entry in entries:
            data = entry.data
            parts.append(pack_entry(entry.term, entry.index, kind_codes[entry.kind], len(data)))
            parts.append(data)
        if msg.snapshot is not None:
            _encode_snapshot(msg.snapshot, parts)
    except (struct.error, KeyError, TypeError, OverflowError) as exc:
        raise CodecError(f"cannot encode {msg.type} message: {exc}") from exc
    return b"".join(parts)


def _encode_snapshot(snapshot: Snapshot, parts: list[bytes]) -> None:
    meta = snapshot.meta
    voters = sorted(meta.conf.voters)
    parts.append(_SNAPSHOT.pack(meta.index, meta.term, len(voters)))
    parts.append(struct.pack(f">{len(voters)}I", *voters))
    parts.append(_U32.pack(len(snapshot.data)))
    parts.append(snapshot.data)


def decode_message(data: bytes | memoryview) -> Message:
    """The message `data` encodes; raises CodecError for anything else."""
    buf = bytes(data)  # one copy for a view; entry data are then plain bytes slices
    size = len(buf)
    if size < _HEADER.size:
        raise CodecError(f"message of {size} bytes is shorter than its {_HEADER.size}-byte header")
    (
        type_code,
        src,
        dst,
        term,
        log_term,
        index,
        commit,
        reject_hint,
        context,
        flags,
        count,
    ) = _HEADER.unpack_from(buf)
    msg_type = _TYPES.get(type_code)
    if msg_type is None:
        raise CodecError(f"unknown message type code {type_code}")
    if flags & ~_KNOWN_FLAGS:
        raise CodecError(f"unknown flags 0x{flags:02x}")
    # Every entry takes at least its header: refuse an absurd count before looping on it.
    if count * _ENTRY.size > size - _HEADER.size:
        raise CodecError(f"{count} entries cannot fit in {size} bytes")
    offset = _HEADER.size
    entries: list[Entry] = []
    append = entries.append
    unpack_entry = _ENTRY.unpack_from
    entry_size = _ENTRY.size
    kinds = _KINDS
    new_entry = _new_entry
    for _ in range(count):
        if offset + entry_size > size:
            raise CodecError(f"entry header cut short at byte {offset}")
        e_term, e_index, kind_code, length = unpack_entry(buf, offset)
        start = offset + entry_size
        offset = start + length
        if offset > size:
            raise CodecError(f"entry data of {length} bytes cut short at byte {start}")
        kind = kinds.get(kind_code)
        if kind is None:
            raise CodecError(f"unknown entry kind code {kind_code}")
        append(new_entry(e_term, e_index, kind, buf[start:offset]))
    snapshot = None
    if flags & _HAS_SNAPSHOT:
        snapshot, offset = _decode_snapshot(buf, offset)
    if offset != size:
        raise CodecError(f"{size - offset} unexpected bytes after the message")
    return Message(
        type=msg_type,
        src=src,
        dst=dst,
        term=term,
        log_term=log_term,
        index=index,
        entries=tuple(entries),
        commit=commit,
        reject=bool(flags & _REJECT),
        reject_hint=reject_hint,
        context=context,
        force=bool(flags & _FORCE),
        snapshot=snapshot,
    )


def _decode_snapshot(buf: bytes, offset: int) -> tuple[Snapshot, int]:
    size = len(buf)
    if offset + _SNAPSHOT.size > size:
        raise CodecError(f"snapshot header cut short at byte {offset}")
    index, term, voter_count = _SNAPSHOT.unpack_from(buf, offset)
    offset += _SNAPSHOT.size
    end = offset + 4 * voter_count
    if end + _U32.size > size:
        raise CodecError(f"snapshot voters cut short at byte {offset}")
    voters = frozenset(struct.unpack_from(f">{voter_count}I", buf, offset))
    (length,) = _U32.unpack_from(buf, end)
    start = end + _U32.size
    offset = start + length
    if offset > size:
        raise CodecError(f"snapshot data of {length} bytes cut short at byte {start}")
    meta = SnapshotMeta(index=index, term=term, conf=ConfState(voters))
    return Snapshot(meta=meta, data=buf[start:offset]), offset
