"""The controller's bounds, in a module without pydantic: the CLI states them in its
options (for `--help` too) without loading the controller's models."""

MAX_DELAY_MS = 60_000
