"""`yardarm images build` and `yardarm images dockerfiles`: the services' and the
control plane's container images, and the Dockerfiles they are built from.

The CLI imports this module for every command, `yardarm --help` included: the build
machinery (and rich's live display) is imported by the command that uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.status import Status

    from yardarm.images.build import ImageResult

app = typer.Typer(
    help="Container images: every service, the control plane, and test images.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


class RichProgress:
    """A spinner for the slow steps and a line per image as it is done."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self._status: Status | None = None

    def step(self, message: str) -> None:
        if not self.out.is_terminal:  # a log (CI): a line per step, no spinner
            self.out.print(f"[dim]{escape(message)}...[/]", highlight=False)
            return
        if self._status is None:
            self._status = self.out.status(escape(message))
            self._status.start()
        else:
            self._status.update(escape(message))

    def image(self, result: ImageResult) -> None:
        if result.status == "cached":
            what = f"[dim]{'cached':<16}[/]"
        else:
            what = f"[green]{f'built in {result.seconds:.0f} s':<16}[/]"
        size = _megabytes(result.size_bytes)
        self.out.print(
            f"{result.name:<12} {what} {escape(result.image):<28} {size:>7}", highlight=False
        )

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


@app.command("build")
def build(
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="No registry: build from yardarm/base:bookworm, made with debootstrap"
            " when missing (needs root and debootstrap).",
        ),
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Build only this image (repeatable): gateway, orders, fulfillment,"
            " datastore, control, postgres, nats.",
        ),
    ] = None,
    test_images: Annotated[
        bool,
        typer.Option(
            "--test-images", help="Also the Postgres and NATS images the tests run against."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's report as JSON (progress on stderr).")
    ] = False,
) -> None:
    """Build the images whose inputs changed; tag each `yardarm/<name>:<version>`."""
    from yardarm.images.build import BuildRequest, build_images
    from yardarm.images.specs import ImagesError

    progress = RichProgress(err if as_json else console)
    request = BuildRequest(offline=offline, only=tuple(only or ()), test_images=test_images)
    try:
        report = build_images(request, progress)
    except ImagesError as exc:
        progress.close()
        err.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err.print(f"[dim]{escape(exc.hint)}[/]")
        raise typer.Exit(code=1) from exc
    progress.close()
    if as_json:
        typer.echo(report.to_json())
        return
    built = sum(1 for image in report.images if image.status == "built")
    console.print(
        f"[bold]{len(report.images)} images[/], {built} built, in {report.seconds:.0f} s",
        highlight=False,
    )


@app.command("dockerfiles")
def dockerfiles(
    check: Annotated[
        bool,
        typer.Option("--check", help="Only compare: exit 1 when a committed file is stale."),
    ] = False,
) -> None:
    """Write the services' and the control plane's Dockerfiles (generated from one
    template and the images' table in yardarm.images.specs)."""
    from yardarm.images import dockerfiles as generated
    from yardarm.images.specs import ImagesError, source_root

    try:
        root = source_root()
    except ImagesError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}")
        err.print("[dim]run it from the yardarm repository (it writes the Dockerfiles there)[/]")
        raise typer.Exit(code=1) from exc
    if check:
        differ = generated.stale(root)
        if differ:
            for path in differ:
                err.print(f"[red]stale:[/] {escape(str(path.relative_to(root)))}")
            err.print("[bold red]error:[/] the Dockerfiles differ from what the code renders")
            err.print(f"[dim]run `{generated.COMMAND}`[/]")
            raise typer.Exit(code=1)
        console.print("[green]the Dockerfiles match the code[/]")
        return
    for path in generated.write(root):
        console.print(f"wrote {escape(str(path.relative_to(root)))}")
