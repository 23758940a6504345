"""`yardarm chart`: the Helm chart's values from the deployment model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from yardarm.cli_errors import err, fail

console = Console()


def chart(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="yardarm.yaml (default: the defaults)."),
    ] = None,
    release: Annotated[
        str, typer.Option("--release", help="The Helm release the values name things for.")
    ] = "yardarm",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="values file to write (default: the chart's own)."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only compare: exit 1 when the file is stale.")
    ] = False,
) -> None:
    """Render the Helm chart's values (charts/yardarm/values.yaml) from the deployment
    model, and its copy of the Prometheus rules; `-c yardarm.yaml -o my-values.yaml`
    renders a stack's own values."""
    from yardarm.images.specs import ImagesError, source_root
    from yardarm.kubernetes import values as renderer
    from yardarm.model import Topology, TopologyError, load_topology

    try:
        root = source_root()
        topology = Topology() if config is None else load_topology(config)
        files = renderer.render_files(root, topology, release)
    except ImagesError as exc:
        raise fail(exc.message, exc.hint) from exc
    except TopologyError as exc:
        raise fail(str(exc), "fix the file, or check it with `yardarm validate`") from exc
    except ValueError as exc:
        raise fail(str(exc)) from exc
    # With --output only the values file, for a stack's own release; else the chart's files.
    chart_dir = root / renderer.CHART_DIR
    paths = (
        {output: files[renderer.VALUES_FILE]}
        if output is not None
        else {chart_dir / relative: text for relative, text in files.items()}
    )
    if check:
        stale = [
            path for path, text in paths.items() if not path.is_file() or path.read_text() != text
        ]
        for path in stale:
            err.print(f"[red]stale:[/] {escape(str(path))}")
        if stale:
            raise fail("the chart's generated files differ from the model", "run `yardarm chart`")
        console.print(f"[green]{len(paths)} generated chart file(s) match the model[/]")
        return
    for path, text in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        console.print(f"wrote {escape(str(path))}")
