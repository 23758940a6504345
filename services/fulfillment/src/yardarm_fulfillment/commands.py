"""What a participant is: command handlers that run inside the caller's transaction.

A handler gets the open transaction and the command envelope, applies its ledger effect
and returns the reply to send. It never commits, publishes or acks: the consumer does,
so the inbox row, the ledger row and the outbox row commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from yardarm_kit.messaging import Envelope
from yardarm_kit.postgres import Connection

ModelT = TypeVar("ModelT", bound=BaseModel)


class CommandError(Exception):
    """A command this service cannot apply; the message is redelivered, then given up."""


class UnknownCommand(CommandError):
    """No participant handles this command type."""


class MalformedCommand(CommandError):
    """The command's data does not match its schema."""


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


CommandHandler = Callable[[Connection, Envelope], Awaitable[Reply]]
CommandTable = Mapping[str, CommandHandler]


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
