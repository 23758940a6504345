"""The names an instance of a service is known by, shared by the services and the model.

Kept free of heavy imports: the deployment model (and so every CLI command) reads it.
"""

from __future__ import annotations

from typing import Literal, get_args

Track = Literal["stable", "canary", "baseline", "blue", "green"]
"""Where an instance sits in a rollout: `stable` serves by default; `canary` and
`baseline` run side by side with it during a canary analysis; `blue` and `green` are the
two colours of a blue-green deployment."""

TRACKS: tuple[str, ...] = get_args(Track)
