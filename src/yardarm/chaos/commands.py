"""`yardarm chaos ...`: inject faults into the running local stack, and see them.

The CLI imports this module for every command, `yardarm --help` included: the client
(httpx) and the control plane are imported by the commands that use them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from yardarm.chaos.bounds import MAX_DELAY_MS

if TYPE_CHECKING:
    from rich.table import Table

    from yardarm.chaos.config import Action

app = typer.Typer(
    help="Inject faults into the running stack: kill, pause, cut or slow its parts.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="State directory (default: .yardarm in the project, or $YARDARM_HOME)."
    ),
]
ProcessTarget = Annotated[
    str, typer.Argument(help="An instance (e.g. datastore-1, orders-0), or all.")
]
LinkTarget = Annotated[
    str,
    typer.Argument(
        help="An instance with links (datastore-0; with chaos.dependency_links also "
        "orders-0, postgres, ...), or all."
    ),
]
PeerOption = Annotated[
    str | None,
    typer.Option("--peer", help="Only the links between TARGET and this instance."),
]


def _home(home: Path | None) -> Path:
    if home is not None:
        return home
    from yardarm.local import control

    return control.default_home()


def _send(home: Path | None, action: Action, target: str, **fields: Any) -> dict[str, Any]:
    from yardarm.chaos.client import ChaosClientError, send_fault

    try:
        applied: dict[str, Any] = send_fault(_home(home), action, target, **fields)["applied"]
    except ChaosClientError as exc:
        err.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            err.print(f"[dim]{exc.hint}[/]")
        raise typer.Exit(code=1) from exc
    return applied


def _processes(applied: dict[str, Any]) -> str:
    reached = applied.get("instances", [])
    if not reached:
        return "no running instance"
    return ", ".join(f"{row['instance']} (pid {row['pid']})" for row in reached)


def _links(applied: dict[str, Any]) -> str:
    names: list[str] = applied.get("links", [])
    return f"{len(names)} link{'' if len(names) == 1 else 's'}" + (
        f": {', '.join(names)}" if names else ""
    )


@app.command()
def kill(target: ProcessTarget, home: HomeOption = None) -> None:
    """SIGKILL an instance; the supervisor restarts it as after any crash."""
    applied = _send(home, "kill", target)
    console.print(f"killed {_processes(applied)}; the supervisor restarts it")


@app.command()
def pause(target: ProcessTarget, home: HomeOption = None) -> None:
    """SIGSTOP an instance: it holds its ports and answers nothing until resumed."""
    applied = _send(home, "pause", target)
    console.print(
        f"paused {_processes(applied)}; `yardarm chaos resume {target}` lets it run again"
    )


@app.command()
def resume(target: ProcessTarget, home: HomeOption = None) -> None:
    """SIGCONT a paused instance."""
    applied = _send(home, "resume", target)
    console.print(f"resumed {_processes(applied)}")


@app.command()
def partition(target: LinkTarget, peer: PeerOption = None, home: HomeOption = None) -> None:
    """Cut every link into and out of TARGET (or only those with --peer)."""
    applied = _send(home, "partition", target, peer=peer)
    console.print(f"cut {_links(applied)}; `yardarm chaos heal {target}` restores them")


@app.command()
def heal(target: LinkTarget, peer: PeerOption = None, home: HomeOption = None) -> None:
    """Restore TARGET's links: no partition, no delay."""
    applied = _send(home, "heal", target, peer=peer)
    console.print(f"healed {_links(applied)}")


@app.command()
def delay(
    target: LinkTarget,
    ms: Annotated[
        int, typer.Option("--ms", min=0, max=MAX_DELAY_MS, help="Delay per chunk; 0 clears it.")
    ],
    jitter_ms: Annotated[
        int, typer.Option("--jitter-ms", min=0, max=MAX_DELAY_MS, help="Random +- around --ms.")
    ] = 0,
    peer: PeerOption = None,
    home: HomeOption = None,
) -> None:
    """Hold every chunk on TARGET's links for --ms (+- --jitter-ms), in each direction."""
    applied = _send(home, "delay", target, peer=peer, ms=ms, jitter_ms=jitter_ms)
    if ms == 0:
        console.print(f"delay cleared on {_links(applied)}")
    else:
        console.print(f"delay {ms}±{jitter_ms} ms on {_links(applied)}")


def _link_table(links: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(
        "link", "state", "delay", "open", "conns", "bytes →", "bytes ←", "delayed", "cut",
        "refused", title="links",
    )  # fmt: skip
    for link in links:
        state = "[red]partitioned[/]" if link["partitioned"] else "[green]ok[/]"
        if link["delay_ms"]:
            jitter = f"±{link['jitter_ms']}" if link["jitter_ms"] else ""
            shown = f"[yellow]{link['delay_ms']}{jitter} ms[/]"
        else:
            shown = "-"
        table.add_row(
            link["name"],
            state,
            shown,
            str(link["active"]),
            str(link["connections"]),
            str(link["bytes_forward"]),
            str(link["bytes_backward"]),
            str(link["chunks_delayed"]),
            str(link["connections_cut"]),
            str(link["refused"]),
        )
    return table


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="The controller's document.")] = False,
    home: HomeOption = None,
) -> None:
    """Show the links, the paused instances and how many faults were applied."""
    from rich.table import Table

    from yardarm.chaos.client import ChaosClientError, fetch_state

    try:
        state = fetch_state(_home(home))
    except ChaosClientError as exc:
        err.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            err.print(f"[dim]{exc.hint}[/]")
        raise typer.Exit(code=1) from exc
    if as_json:
        typer.echo(json.dumps(state, indent=2))
        return
    if state["links"]:
        console.print(_link_table(state["links"]))
    else:
        console.print(
            "no links (one datastore replica and chaos.dependency_links off in yardarm.yaml)"
        )
    paused = state["paused"]
    if paused:
        names = ", ".join(f"{row['instance']} (pid {row['pid']})" for row in paused)
        console.print(f"[yellow]paused:[/] {names}")
    else:
        console.print("paused: none")
    faults = Table("action", "target", "count", title=f"faults applied: {state['total']}")
    for row in state["faults"]:
        faults.add_row(row["action"], row["target"], str(row["count"]))
    console.print(faults)
