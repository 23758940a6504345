"""How a command reports a failure: the message in red, then what to do next, exit 1."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


def fail(message: str, hint: str | None = None) -> typer.Exit:
    """Print the error (and its hint) on stderr; the exit to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        err.print(f"[dim]{escape(hint)}[/]")
    return typer.Exit(code=1)
