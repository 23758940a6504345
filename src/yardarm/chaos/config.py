"""What a chaos controller runs and what it accepts: its config file and fault requests.

The topology renders `ChaosConfig` into `<home>/chaos.json`; the controller reads it at
start. Kept free of aiohttp and asyncio so the topology and the CLI can import it cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from yardarm.chaos.bounds import MAX_DELAY_MS

Action = Literal["kill", "pause", "resume", "partition", "heal", "delay"]
ACTIONS: tuple[Action, ...] = get_args(Action)
PROCESS_ACTIONS: frozenset[Action] = frozenset({"kill", "pause", "resume"})
LINK_ACTIONS: frozenset[Action] = frozenset({"partition", "heal", "delay"})
ALL = "all"
CONFIG_FILE = "chaos.json"


class LinkConfig(BaseModel):
    """One directed link: `src` reaches `dst` through a proxy listening on `listen_port`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    src: str = Field(min_length=1)
    dst: str = Field(min_length=1)
    listen_port: int = Field(ge=1, le=65535)
    target_port: int = Field(ge=1, le=65535)
    target_host: str = "127.0.0.1"


class ChaosConfig(BaseModel):
    """One stack's chaos controller: where its API listens, whose processes, which links."""

    model_config = ConfigDict(extra="forbid")

    instance: str = Field(default="chaos", min_length=1)
    control_port: int = Field(ge=1, le=65535)
    home: Path
    links: list[LinkConfig] = Field(default_factory=list)
    version: str = "0.1.0"
    environment: str = "local"
    # The stack's admin credential: every /faults request must carry it as a bearer
    # token. None runs the controller open, which it says loudly at start-up.
    admin_token_file: Path | None = None
    # HTTPS for the API, with a certificate the stack's CA signed (topology `tls`).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


class FaultRequest(BaseModel):
    """The body of `POST /faults`; which fields apply depends on the action."""

    model_config = ConfigDict(extra="forbid")

    action: Action
    target: str = Field(min_length=1)
    peer: str | None = Field(default=None, min_length=1)
    ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS)
    jitter_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS)


def config_path(home: Path) -> Path:
    """Where the topology renders the controller's config."""
    return home / CONFIG_FILE
