"""`yardarm dlq ...`: see what the consumers gave up on, and replay it once fixed.

The CLI imports this module for every command, `yardarm --help` included: the NATS
client (`yardarm.dlq.store`) and the control plane are imported by the commands.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.table import Table

    from yardarm.dlq.store import DeadLetter, DlqError, Replay

app = typer.Typer(
    help="Read the dead-letter queue and replay its messages onto their original subjects.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)
T = TypeVar("T")
REASON_CHARS = 200

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="State directory (default: .yardarm in the project, or $YARDARM_HOME)."
    ),
]
NatsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--nats-url", help="NATS to read (default: the NATS of the stack running from --home)."
    ),
]
SubjectOption = Annotated[
    str | None,
    typer.Option(
        "--subject",
        help="Only dead letters whose original subject matches, e.g. cmd.payments.> or "
        "cmd.*.charge.",
    ),
]


def _home(home: Path | None) -> Path:
    if home is not None:
        return home
    from yardarm.local import control

    return control.default_home()


def stack_nats_url(home: Path) -> str:
    """The NATS of the stack running from `home` (the supervisor records its port)."""
    from yardarm.dlq.store import DlqError
    from yardarm.local import control

    if not control.is_running(home):
        raise DlqError(
            f"no stack is running from {home}", "start it with `yardarm up`, or pass --nats-url"
        )
    for status in control.read_status(home):
        if status.service == "nats" and status.port:
            return f"nats://127.0.0.1:{status.port}"
    raise DlqError(
        f"the stack running from {home} records no NATS port",
        "see `yardarm status`, or pass --nats-url",
    )


def _fail(exc: DlqError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(exc.message)}")
    if exc.hint:
        err.print(f"[dim]{escape(exc.hint)}[/]")
    return typer.Exit(code=1)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    from yardarm.dlq.store import DlqError

    try:
        return asyncio.run(coro)
    except DlqError as exc:
        raise _fail(exc) from exc


def _url(nats_url: str | None, home: Path | None) -> str:
    from yardarm.dlq.store import DlqError

    try:
        return nats_url or stack_nats_url(_home(home))
    except DlqError as exc:
        raise _fail(exc) from exc


def _matching(pattern: str | None) -> str:
    return f" matching {pattern}" if pattern else ""


def _envelope(letter: DeadLetter) -> str:
    envelope = letter.envelope
    if envelope is None:
        return "[red]not an envelope[/]"
    return f"{escape(envelope.type)}\n[dim]{escape(envelope.id)}[/]"


def _shortened(reason: str) -> str:
    """A reason fit for a table row; `--json` has it whole."""
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def _letter_table(letters: list[DeadLetter]) -> Table:
    from rich.table import Table

    table = Table("seq", "subject", "consumer", "deliveries", "reason", "dead-lettered")
    table.add_column("envelope", overflow="fold")  # an id cut short cannot be looked up
    for letter in letters:
        row = letter.to_json()
        at = row["dead_lettered_at"] or row["stored_at"] or "-"
        table.add_row(
            str(letter.seq),
            escape(letter.original_subject),
            escape(row["consumer"] or "-"),
            "-" if letter.deliveries is None else str(letter.deliveries),
            escape(_shortened(row["reason"] or "-")),
            escape(at),
            _envelope(letter),
        )
    return table


@app.command("list")
def list_command(
    subject: SubjectOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Show at most this many, oldest first.")
    ] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON list, with each letter's headers and body.")
    ] = False,
    nats_url: NatsUrlOption = None,
    home: HomeOption = None,
) -> None:
    """Show the dead letters: original subject, consumer, deliveries, reason, envelope.

    Exits 1 when none match, like grep.
    """
    from yardarm_kit.dead_letters import DLQ_STREAM

    from yardarm.dlq.store import list_letters, open_jetstream

    url = _url(nats_url, home)

    async def read() -> list[DeadLetter]:
        async with open_jetstream(url) as js:
            return await list_letters(js, subject, limit + 1)

    letters = _run(read())
    more = len(letters) > limit
    letters = letters[:limit]
    if as_json:
        typer.echo(json.dumps([letter.to_json() for letter in letters], indent=2))
    elif letters:
        console.print(_letter_table(letters))
        if more:
            console.print(f"[dim]more dead letters follow; raise --limit (now {limit})[/]")
        else:
            count = len(letters)
            console.print(f"[dim]{count} dead letter{'' if count == 1 else 's'}[/]")
    if not letters:
        err.print(f"no dead letters in {DLQ_STREAM}{_matching(subject)} at {url}")
        raise typer.Exit(code=1)


def _select_plans(
    letters: list[DeadLetter], subject: str | None, named: bool, body: bytes | None
) -> list[Replay]:
    from yardarm_kit.dead_letters import DLQ_STREAM

    from yardarm.dlq.store import DlqError, plan_replay, subject_matches

    if named and subject is not None:
        strays = [letter.seq for letter in letters if not subject_matches(subject, letter)]
        if strays:
            raise DlqError(
                f"DLQ #{', #'.join(str(s) for s in strays)} did not fail on a subject "
                f"matching {subject}; nothing was replayed",
                "check the sequences with `yardarm dlq list`, or drop --subject",
            )
    if not letters:
        raise DlqError(
            f"no dead letters in {DLQ_STREAM}{_matching(subject)}; nothing to replay",
            "`yardarm dlq list` shows what there is",
        )
    return [plan_replay(letter, body) for letter in letters]


def _describe(plan: Replay) -> str:
    envelope = plan.letter.envelope
    what = f"{envelope.type} {envelope.id}" if envelope else "a body that is not an envelope"
    return f"DLQ #{plan.letter.seq} ({escape(what)}) to {escape(plan.subject)}"


@app.command("replay")
def replay_command(
    seqs: Annotated[
        list[int] | None,
        typer.Argument(help="DLQ sequences to replay (the seq column of `yardarm dlq list`)."),
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Every dead letter (narrow it with --subject).")
    ] = False,
    subject: SubjectOption = None,
    body_file: Annotated[
        Path | None,
        typer.Option(
            "--body-file",
            help="Replace the body with this corrected JSON envelope (one SEQ only).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; send and delete nothing.")
    ] = False,
    nats_url: NatsUrlOption = None,
    home: HomeOption = None,
) -> None:
    """Republish dead letters on their original subjects, then delete them from the DLQ.

    Each keeps its original headers, with a new Nats-Msg-Id (`<id>:replay:<seq>`) and
    `yardarm-replay-of: <seq>`; the DLQ copy is deleted only after the stream acknowledged
    the republished one.
    """
    from yardarm_kit.dead_letters import DLQ_STREAM

    from yardarm.dlq.store import (
        DlqError,
        get_letters,
        list_letters,
        open_jetstream,
        read_body_file,
        replay,
    )

    named = list(seqs or [])
    problem: str | None = None
    if named and replay_all:
        problem = "give SEQ... or --all, not both"
    elif not named and not replay_all:
        problem = "name the dead letters to replay: SEQ... or --all"
    elif body_file is not None and len(named) != 1:
        problem = "--body-file replaces the body of one dead letter: name exactly one SEQ"
    if problem is not None:
        raise _fail(DlqError(problem, "see `yardarm dlq replay --help`"))
    try:
        body = None if body_file is None else read_body_file(body_file)
    except DlqError as exc:
        raise _fail(exc) from exc
    url = _url(nats_url, home)

    async def run() -> int:
        async with open_jetstream(url) as js:
            letters = await get_letters(js, named) if named else await list_letters(js, subject)
            plans = _select_plans(letters, subject, bool(named), body)
            for plan in plans:
                if dry_run:
                    console.print(f"would replay {_describe(plan)} as {escape(plan.msg_id)}")
                    for key, value in plan.headers.items():
                        console.print(f"[dim]  {escape(key)}: {escape(value)}[/]")
                    continue
                done = await replay(js, plan)
                again = " [yellow](already there: deduplicated)[/]" if done.duplicate else ""
                console.print(
                    f"replayed {_describe(plan)} ({done.stream} #{done.stream_seq}) as "
                    f"{escape(plan.msg_id)}; removed from {DLQ_STREAM}{again}"
                )
            return len(plans)

    count = _run(run())
    if dry_run:
        console.print(f"[dim]dry run: {count} dead letter(s) left as they were[/]")
