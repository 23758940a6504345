"""`yardarm compose` (the stack as a compose project) and `yardarm init` (the one-shot
steps the control image runs in it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from yardarm.cli_errors import err, fail

console = Console()

init_app = typer.Typer(
    help="One-shot steps of a container stack (the control image runs them).",
    no_args_is_help=True,
)

DatastoreOption = Annotated[
    list[str], typer.Option("--datastore", help="A datastore replica's URL (repeatable).")
]
HomeOption = Annotated[
    Path, typer.Option("--home", help="The stack's home: its credentials live here.")
]


def compose(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="yardarm.yaml (default: the project's, if any)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write (default: the source tree's root)."),
    ] = None,
    observability: Annotated[
        bool,
        typer.Option(
            "--observability/--no-observability",
            help="Run the collector, Jaeger, Loki, Prometheus and Grafana too.",
        ),
    ] = True,
    check: Annotated[
        bool,
        typer.Option("--check", help="Only compare: exit 1 when a written file is stale."),
    ] = False,
) -> None:
    """Render the stack as compose.yaml (and compose/: flags, Prometheus' scrape config)
    from the deployment model; run it with `docker-compose up -d`."""
    import os

    from yardarm.containers import compose as renderer
    from yardarm.images.specs import ImagesError, source_root
    from yardarm.model import TopologyError, load_topology

    try:
        root = source_root()
    except ImagesError as exc:
        raise fail(exc.message, exc.hint) from exc
    try:
        topology = load_topology(config)
    except TopologyError as exc:
        raise fail(str(exc), "fix the file, or check it with `yardarm validate`") from exc
    out = (output or root).resolve()
    try:
        project = renderer.render(
            topology,
            renderer.project_images(root),
            observability=observability,
            observability_dir=os.path.relpath(root / "observability", out),
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if check:
        differ = renderer.stale(project, out)
        if differ:
            for path in differ:
                err.print(f"[red]stale:[/] {escape(str(path))}")
            raise fail("the compose project differs from the model", "run `yardarm compose`")
        console.print(f"[green]{escape(str(out / renderer.COMPOSE_FILE))} matches the model[/]")
        return
    for path in renderer.write(project, out):
        console.print(f"wrote {escape(str(path))}")
    console.print(
        "[dim]build the images (`yardarm images build`), then `docker-compose up -d` in "
        f"{escape(str(out))}[/]"
    )


@init_app.command("credentials")
def init_credentials(home: HomeOption) -> None:
    """Issue the stack's credentials and Postgres' password (existing ones are kept)."""
    from yardarm.containers.init import issue_credentials

    for path in issue_credentials(home):
        console.print(f"ready: {escape(str(path))}")


@init_app.command("data")
def init_data(
    home: HomeOption,
    postgres: Annotated[
        str, typer.Option("--postgres", help="DSN of the `postgres` database, as a superuser.")
    ],
    database: Annotated[
        list[str], typer.Option("--database", help="A database to create (repeatable).")
    ],
    datastore: DatastoreOption,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for Postgres and the datastore.")
    ] = 120.0,
) -> None:
    """Create the services' databases and seed the demo catalog (idempotent)."""
    from yardarm.containers.init import InitError, prepare_data
    from yardarm.credentials import StackCredentials

    try:
        token = StackCredentials(home).token("admin")
    except (OSError, ValueError) as exc:
        raise fail(
            f"no admin token in {home}: {exc}", "run `yardarm init credentials` first"
        ) from exc
    try:
        created = prepare_data(
            postgres_dsn=postgres,
            databases=database,
            datastore_urls=datastore,
            admin_token=token,
            timeout_s=timeout,
        )
    except InitError as exc:
        raise fail(str(exc), "see the Postgres and datastore containers' logs") from exc
    console.print(f"databases ready: {', '.join(database)}; catalog: {created} new SKUs")


@init_app.command("catalog")
def init_catalog(
    home: HomeOption,
    datastore: DatastoreOption,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the datastore's leader.")
    ] = 120.0,
) -> None:
    """Seed the demo catalog only (idempotent), where something else creates the
    databases (the bare-metal postgres role)."""
    from yardarm.containers.init import InitError, seed_until
    from yardarm.credentials import StackCredentials

    try:
        token = StackCredentials(home).token("admin")
    except (OSError, ValueError) as exc:
        raise fail(f"no admin token in {home}: {exc}", "issue the credentials first") from exc
    try:
        created = seed_until(datastore, token, time.monotonic() + timeout)
    except InitError as exc:
        raise fail(str(exc), "see the datastore replicas' logs") from exc
    console.print(f"catalog: {created} new SKUs")
