"""What a participant is: command handlers that run inside the caller's transaction.

A handler gets the open transaction, the command envelope and the message's schema
version, applies its ledger effect and returns the reply to send. It never commits,
publishes or acks: the consumer does, so the inbox row, the ledger row and the outbox
row commit together or not at all.

Every command type has one reader per schema version it accepts. A reader of the
previous version upgrades what it read to the current shape, so handlers see only one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from yardarm_kit.messaging import Envelope
from yardarm_kit.postgres import Connection

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")


class CommandError(Exception):
    """A command this service cannot apply; the message is redelivered, then dead-lettered."""


class UnknownCommand(CommandError):
    """No participant handles this command type."""


class MalformedCommand(CommandError):
    """The command's data does not match its schema."""


class UnsupportedSchema(CommandError):
    """The message's schema version is one this version of the service cannot read."""


@dataclass(frozen=True)
class Reply:
    """The reply event for one command.

    `type` is the event name (`payments.charged`, published on `evt.payments.charged`);
    `effect` names what this command changed in the ledger (for metrics), or is None when
    it found an earlier outcome for the same saga and answered with that.
    """

    type: str
    data: dict[str, Any]
    effect: str | None = None

    @property
    def subject(self) -> str:
        return f"evt.{self.type}"


CommandHandler = Callable[[Connection, Envelope, int], Awaitable[Reply]]
CommandTable = Mapping[str, CommandHandler]
# How to read one command type's data, by schema version.
Readers = Mapping[int, Callable[[Envelope], T]]


def parse_command(model: type[ModelT], envelope: Envelope) -> ModelT:
    """The envelope's data as `model`, or MalformedCommand saying which fields are wrong."""
    try:
        return model.model_validate(envelope.data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'data'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise MalformedCommand(f"{envelope.type} {envelope.id}: {problems}") from None


def read_command(readers: Readers[T], envelope: Envelope, schema: int) -> T:
    """The command read with its schema version's reader; UnsupportedSchema when none."""
    reader = readers.get(schema)
    if reader is None:
        accepted = ", ".join(str(version) for version in sorted(readers))
        raise UnsupportedSchema(
            f"{envelope.type} {envelope.id}: unsupported schema {schema} (accepts {accepted})"
        )
    return reader(envelope)
