"""The datastore's HTTP vocabulary: the types that validate every parameter and body and
that the OpenAPI document is built from, so the document says exactly what the code takes.

Rules that JSON Schema can say are said here as schema (lengths, patterns, ranges); the
kit's JSON decoder adds its own limits first (nesting, NUL, lone surrogates, integers of
more than 20 digits), which the value schema repeats where it can.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    TypeAdapter,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from typing_extensions import TypeAliasType
from yardarm_kit.openapi import ProblemDocument

MAX_KEY_CHARS = 512
MAX_VALUE_BYTES = 256 * 1024
MAX_IDEMPOTENCY_KEY = 255
MAX_VERSION = 2**63 - 1
# The kit refuses integer literals of more than 20 digits; a number in a value is held to
# the same range whatever its notation (1e21 too), so the schema can state the rule.
MAX_NUMBER = 10**20 - 1
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_NODE_ID = 1_000_000

# Keys, prefixes and cursors are text without control characters (Unicode Cc).
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
NO_NUL = r"^[^\x00]*$"
# Visible ASCII: what an HTTP header carries unchanged through every proxy.
VISIBLE_ASCII = r"^[\x21-\x7e]+$"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_HOST = r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
RAFT_ADDRESS = rf"^{_HOST}:{_PORT}$"
HTTP_BASE = rf"^https?://{_HOST}(:{_PORT})?$"
_DECIMAL = re.compile(r"-?[0-9]{1,20}")


def _decimal(raw: object) -> object:
    """A path or query integer is plain decimal digits: pydantic's lax mode alone would
    also take `+1`, ` 1`, `1_0` and `1.0`."""
    if isinstance(raw, str) and not _DECIMAL.fullmatch(raw):
        raise ValueError("must be a decimal integer")
    return raw


def _integral(raw: object) -> object:
    """A body integer as JSON Schema counts integers: 5.0 is 5; strings and booleans
    stay refused (the types that use this are strict)."""
    if type(raw) is float and raw.is_integer():
        return int(raw)
    return raw


def _in_range(value: Any) -> Any:
    """Every number in a value within +-MAX_NUMBER (walked without recursion; the kit
    has already bounded the depth)."""
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            stack.extend(node.values())
        elif kind is list:
            stack.extend(node)
        elif (kind is int or kind is float) and not -MAX_NUMBER <= node <= MAX_NUMBER:
            raise ValueError(f"numbers in a value must be within +-{MAX_NUMBER}")
    return value


_Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
_Int = Annotated[int, Field(ge=-MAX_NUMBER, le=MAX_NUMBER)]
_Float = Annotated[float, Field(ge=-MAX_NUMBER, le=MAX_NUMBER)]
_Object = Annotated[
    dict[str, "JsonValue"], Field(json_schema_extra={"propertyNames": {"pattern": NO_NUL}})
]
JsonValue = TypeAliasType(
    "JsonValue", "bool | _Int | _Float | _Text | list[JsonValue] | _Object | None"
)
_JSON_VALUE = TypeAdapter(JsonValue)


class _DocumentedAsJsonValue:
    """Describe a value with the recursive `JsonValue` schema while validating it with
    one quick walk (`_in_range`): pydantic's union over a recursive tree costs several
    times the JSON decoding itself."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(_JSON_VALUE.core_schema)


Value = Annotated[Any, AfterValidator(_in_range), _DocumentedAsJsonValue]

# -- parameters ---------------------------------------------------------------------------

KeyText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS, pattern=NO_CONTROL)
]
PrefixText = Annotated[str, StringConstraints(max_length=MAX_KEY_CHARS, pattern=NO_CONTROL)]
# (Field before the validator: the other way round, its bounds leave the JSON Schema.)
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT), BeforeValidator(_decimal)]
VersionParam = Annotated[int, Field(ge=0, le=MAX_VERSION), BeforeValidator(_decimal)]
Version = Annotated[int, Field(strict=True, ge=0, le=MAX_VERSION), BeforeValidator(_integral)]
Consistency = Literal["linearizable", "stale"]
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_IDEMPOTENCY_KEY, pattern=VISIBLE_ASCII)
]
NodeIdParam = Annotated[int, Field(ge=1, le=MAX_NODE_ID), BeforeValidator(_decimal)]
NodeId = Annotated[int, Field(strict=True, ge=1, le=MAX_NODE_ID), BeforeValidator(_integral)]
RaftAddress = Annotated[str, StringConstraints(pattern=RAFT_ADDRESS)]
HttpBase = Annotated[str, StringConstraints(pattern=HTTP_BASE)]

# -- KV bodies ------------------------------------------------------------------------------


class PutBody(BaseModel):
    """`{"value": <any JSON>, "if_version": <int >= 0, optional>}`."""

    model_config = ConfigDict(extra="forbid")

    value: Value = Field(description="any JSON; at most 256 KiB as compact JSON")
    if_version: Version | None = Field(
        default=None,
        description="write only if the key is at this version; 0: only if it is absent",
    )


class KvEntry(BaseModel):
    """A key, its value and its version (the revision of its last write)."""

    key: str
    value: Any = Field(description="the JSON value as written")
    version: int


class KvList(BaseModel):
    """One page of a listing; `next` is the `after` for the next page, null at the end."""

    items: list[KvEntry]
    next: str | None


class KvWritten(BaseModel):
    """A write's outcome: the key and the version it has now (for a delete, the
    revision of the delete)."""

    key: str
    version: int


class VersionConflict(ProblemDocument):
    """409: the key is not at the version the write expected."""

    model_config = ConfigDict(title="VersionConflict")

    key: str
    expected_version: int
    current_version: int


class KeyProblem(ProblemDocument):
    """404: no such key."""

    model_config = ConfigDict(title="KeyProblem")

    key: str


# -- Raft admin -------------------------------------------------------------------------------


class AddMember(BaseModel):
    """`{"id": 4, "raft": "host:port", "http": "http://host:port"}`."""

    model_config = ConfigDict(extra="forbid")

    id: NodeId
    raft: RaftAddress = Field(description="host:port of its Raft stream")
    http: HttpBase = Field(description="the base URL of its HTTP API, without a path")


class Transfer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: NodeId


class MemberAddress(BaseModel):
    raft: str
    http: str


class DropCounters(BaseModel):
    queue_full: int
    unknown_peer: int
    disconnected: int
    too_large: int
    misrouted: int


class TransportCounters(BaseModel):
    sent: int
    received: int
    dropped: DropCounters
    connects: int
    connect_failures: int
    writes: int
    bytes_sent: int
    bytes_received: int
    malformed: int
    refused: int
    unauthenticated: int


class RaftStatus(BaseModel):
    """This replica's view of its group."""

    id: int = Field(description="this replica's id")
    role: Literal["follower", "pre_candidate", "candidate", "leader"]
    term: int
    leader: int = Field(description="the replica it follows; 0 when none is known")
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    voters: list[int]
    members: dict[str, MemberAddress]
    progress: dict[str, tuple[int, int, str]] = Field(
        description="leader only: per follower, [match index, next index, state]"
    )
    leader_changes: int
    transport: TransportCounters


class MemberChanged(RaftStatus):
    """A committed membership change and the status after it."""

    op: Literal["add", "remove"]
    member: int = Field(description="the replica added or removed")
    index: int = Field(description="the log index the change committed at")


class Transferring(BaseModel):
    transferring_to: int
