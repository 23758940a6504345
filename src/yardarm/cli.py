"""`yardarm`: run, inspect and stop the stack from any shell in the project directory.

Every command pays for this module's imports before it does anything, so its top level
imports only typer, the rich console and the command groups (light in turn); each
command imports what it uses (the control plane, httpx, the load engine). The CLI tests
hold the heaviest libraries to that (tests/cli/test_import_cost.py).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from yardarm_kit.identity import TRACKS

from yardarm.baremetal import commands as baremetal_commands
from yardarm.chaos import commands as chaos_commands
from yardarm.containers import commands as container_commands
from yardarm.dlq import commands as dlq_commands
from yardarm.images import commands as images_commands
from yardarm.kubernetes import commands as kubernetes_commands
from yardarm.rollout import commands as rollout_commands

if TYPE_CHECKING:
    from rich.table import Table

    from yardarm.model import Topology

app = typer.Typer(
    help="Deploy and observe the yardarm service stack.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(baremetal_commands.app, name="ansible")
app.add_typer(chaos_commands.app, name="chaos")
app.add_typer(dlq_commands.app, name="dlq")
app.add_typer(images_commands.app, name="images")
app.add_typer(container_commands.init_app, name="init")
app.command("compose")(container_commands.compose)
app.command("chart")(kubernetes_commands.chart)
app.add_typer(rollout_commands.app, name="rollout")
console = Console()
err = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="State directory (default: .yardarm in the project, or $YARDARM_HOME)."
    ),
]


def _home(home: Path | None) -> Path:
    if home is not None:
        return home
    from yardarm.local import control

    return control.default_home()


def _fail(message: str, hint: str | None = None) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    if hint:
        err.print(f"[dim]{hint}[/]")
    return typer.Exit(code=1)


def _load(config: Path | None, base_port: int | None) -> Topology:
    from yardarm.model import TopologyError, load_topology

    try:
        return load_topology(config, base_port)
    except TopologyError as exc:
        raise _fail(str(exc), "fix the file, or check it with `yardarm validate`") from exc


@app.command()
def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once ready; leave the stack running.")
    ] = False,
    base_port: Annotated[
        int | None,
        typer.Option("--base-port", help="Gateway port; every other port derives from it."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Topology overrides (default: ./yardarm.yaml)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0,
    no_prometheus: Annotated[
        bool,
        typer.Option(
            "--no-prometheus",
            help="Do not run the stack's Prometheus (it runs when `prometheus` is on PATH).",
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Start NATS, Postgres and the four services, wait until ready, seed the demo catalog.

    With a `prometheus` binary on PATH (Debian: `apt-get install prometheus`) the stack
    also runs its own Prometheus, scraping every instance each second with the project's
    recording and alert rules loaded.
    """
    import httpx
    from rich.live import Live
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from yardarm.catalog import seed_catalog
    from yardarm.credentials import admin_token
    from yardarm.local import control
    from yardarm.local.render import urls

    state_home = _home(home)
    topology = _load(config, base_port)
    if no_prometheus:
        off = topology.prometheus.model_copy(update={"enabled": False})
        topology = topology.model_copy(update={"prometheus": off})
    if control.is_running(state_home):
        raise _fail(
            f"a stack is already running from {state_home}",
            "see it with `yardarm status`, stop it with `yardarm down`",
        )
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=None)

        def on_progress(statuses: list[control.InstanceStatus]) -> None:
            ready = [s for s in statuses if s.state == "ready"]
            waiting = [s.name for s in statuses if s.state != "ready"]
            label = f"starting {waiting[0]}" if waiting else "ready"
            progress.update(task, total=len(statuses), completed=len(ready), description=label)

        try:
            control.start_stack(state_home, topology, on_progress=on_progress, timeout=timeout)
        except control.StackStartError as exc:
            raise _fail(str(exc), f"logs: `yardarm logs` (files in {state_home / 'logs'})") from exc
        progress.update(task, description="seeding the demo catalog")
        service_urls = urls(topology)
        try:
            created = seed_catalog(
                service_urls["datastore"],
                admin_token(state_home),
                verify=control.stack_ssl(state_home) or True,
            )

        except (httpx.HTTPError, RuntimeError) as exc:
            control.stop_stack(state_home)
            raise _fail(
                f"could not seed the catalog: {exc}", "see `yardarm logs datastore`"
            ) from exc
    console.print(f"[bold green]yardarm is up[/] (state in {state_home}, {created} SKUs seeded)")
    _print_urls(service_urls)
    if topology.prometheus.enabled and "prometheus" not in service_urls:
        console.print(
            "[dim]no `prometheus` on PATH, so no Prometheus runs: `yardarm top` scrapes the "
            "instances itself (install Debian's `prometheus` for rules and alerts)[/]"
        )
    if detach:
        console.print("stop it with [bold]uv run yardarm down[/]")
        return
    console.print("[dim]Ctrl-C stops the stack.[/]")
    try:
        with Live(_status_table(state_home), console=console, refresh_per_second=1) as live:
            while control.is_running(state_home):
                time.sleep(1.0)
                live.update(_status_table(state_home))
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not abandon a half-stopped stack.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        console.print("stopping...")
        control.stop_stack(state_home)
        console.print("[bold]stopped[/] (data kept; `yardarm down --purge` deletes it)")


def _print_urls(service_urls: dict[str, str]) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for name, url in service_urls.items():
        table.add_row(f"[cyan]{name}[/]", url)
    console.print(table)


@app.command()
def down(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete all state and data.")] = False,
    home: HomeOption = None,
) -> None:
    """Stop every process of the stack (data is kept unless --purge)."""
    from yardarm.local import control

    state_home = _home(home)
    was_running = control.is_running(state_home)
    control.stop_stack(state_home, purge=purge)
    if purge:
        console.print(f"stopped; deleted {state_home}")
    elif was_running:
        console.print("stopped (data kept; `yardarm down --purge` deletes it)")
    else:
        console.print("nothing was running")


def _status_table(home: Path) -> Table:
    from rich.table import Table

    from yardarm.local import control

    table = Table("service", "instance", "pid", "port", "state", "restarts", "version", "track")
    colours = {"ready": "green", "starting": "yellow", "restarting": "yellow"}
    for s in control.read_status(home):
        colour = colours.get(s.state, "red")
        table.add_row(
            s.service,
            s.name,
            str(s.pid or "-"),
            str(s.port or "-"),
            f"[{colour}]{s.state}[/]",
            str(s.restarts),
            s.version,
            s.track,
        )
    return table


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per instance.")] = False,
    home: HomeOption = None,
) -> None:
    """Show every instance: pid, port, state, restarts, version, track."""
    from yardarm.local import control

    state_home = _home(home)
    statuses = control.read_status(state_home)
    if as_json:
        rows = [
            {
                "service": s.service,
                "instance": s.name,
                "pid": s.pid,
                "port": s.port,
                "state": s.state,
                "restarts": s.restarts,
                "version": s.version,
                "track": s.track,
            }
            for s in statuses
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not statuses:
        console.print("no stack here; start one with [bold]uv run yardarm up[/]")
        raise typer.Exit(code=1)
    console.print(_status_table(state_home))
    console.print(_tracks_table(state_home))
    prometheus = control.prometheus_url(state_home)
    if prometheus is not None:
        console.print(f"prometheus  {prometheus}  (`yardarm top` shows live rates from it)")


def _tracks_table(home: Path) -> Table:
    """Desired against running, per service, track and version."""
    from rich.table import Table

    from yardarm.local import control

    table = Table("service", "track", "version", "desired", "ready", "running", title="desired")
    for row in control.track_rows(home):
        colour = "green" if row.ready == row.desired == row.running else "yellow"
        table.add_row(
            row.service,
            row.track,
            row.version,
            str(row.desired),
            f"[{colour}]{row.ready}[/]",
            str(row.running),
        )
    return table


@app.command()
def scale(
    service: Annotated[str, typer.Argument(help="orders or fulfillment.")],
    replicas: Annotated[int, typer.Argument(help="Instances on the track (0 removes a track).")],
    track: Annotated[
        str | None,
        typer.Option(
            "--track",
            help="stable, canary, baseline, blue or green (default: the service's primary track).",
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--version", help="A version the service declares (default: the track's current one)."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the change.")] = 120.0,
    home: HomeOption = None,
) -> None:
    """Change how many instances of a version run on a track, while the stack runs.

    New instances start and pass readiness before the gateways route to them; instances
    that leave are taken out of every gateway's rotation, then drained and stopped.
    """
    from yardarm.local import control
    from yardarm.model import ScaleError

    state_home = _home(home)
    try:
        with console.status(f"scaling {service}..."):
            state = control.scale_stack(
                state_home, service, replicas, track=track, version=version, timeout=timeout
            )
    except ScaleError as exc:
        raise _fail(str(exc)) from exc
    except control.ScaleFailedError as exc:
        raise _fail(str(exc)) from exc
    console.print(_tracks_table(state_home))
    if state.reconcile_error:
        raise _fail(state.reconcile_error, "see `yardarm status` and `yardarm logs supervisor`")


@app.command()
def logs(
    service: Annotated[str | None, typer.Argument(help="Service or instance name.")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines per instance.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    trace_id: Annotated[
        str | None,
        typer.Option(
            "--trace",
            help="Every service's log lines of one trace (32 hex digits), in time order.",
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Print the JSON logs of one service (or all), newest last."""
    state_home = _home(home)
    log_dir = state_home / "logs"
    files = sorted(log_dir.glob("*.log")) if log_dir.is_dir() else []
    if trace_id is not None:
        from yardarm import log_view

        if not log_view.TRACE_ID.fullmatch(trace_id):
            raise _fail(f"{trace_id!r} is not a trace id", "a trace id is 32 lowercase hex digits")
        found = log_view.trace_lines(files, trace_id, service)
        if not found:
            raise _fail(
                f"no log line of trace {trace_id} in {log_dir}",
                "find trace ids with `yardarm trace ORDER_ID`, or in any JSON log line",
            )
        for entry in found:
            typer.echo(f"{entry.source} | {entry.text}")
        return
    if service:
        from yardarm.local import control

        # A service's instances on every track (`orders` has `orders-canary-0` too), an
        # instance, or one track of a service (`orders-canary`).
        members = {s.name for s in control.read_status(state_home) if s.service == service}
        files = [
            f
            for f in files
            if f.stem == service
            or f.stem in members
            or f.stem.rsplit("-", 1)[0] == service
            or (f.stem.startswith(f"{service}-") and f.stem.split("-")[1] in TRACKS)
        ]
    if not files:
        raise _fail(
            f"no logs for {service or 'any service'} in {log_dir}",
            "is the stack started (`yardarm status`)? service names: gateway, orders, "
            "fulfillment, datastore, nats, postgres",
        )
    for path in files:
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            typer.echo(f"{path.stem} | {line}")
    if not follow:
        return
    offsets = {p: p.stat().st_size for p in files}
    try:
        while True:
            time.sleep(0.5)
            for path in files:
                size = path.stat().st_size
                if size < offsets[path]:
                    offsets[path] = 0
                if size > offsets[path]:
                    with path.open(errors="replace") as handle:
                        handle.seek(offsets[path])
                        for line in handle.read().splitlines():
                            typer.echo(f"{path.stem} | {line}")
                    offsets[path] = size
    except KeyboardInterrupt:
        return


@app.command()
def top(
    window: Annotated[
        str, typer.Option("--window", help="Rates over this window: 5s, 30s, 1m.")
    ] = "5s",
    as_json: Annotated[
        bool, typer.Option("--json", help="One snapshot as JSON, then exit.")
    ] = False,
    scrape: Annotated[
        bool,
        typer.Option("--scrape", help="Scrape every instance even when Prometheus runs."),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Live rate, errors and latency per service, version and track.

    From the stack's Prometheus when it runs one, else by scraping every instance's
    /metrics a window apart. Requests are HTTP requests (probes and scrapes left out);
    messages are the consumers' deliveries.
    """
    from yardarm import red
    from yardarm.load.options import parse_duration
    from yardarm.local import control

    state_home = _home(home)
    try:
        window_s = parse_duration(window)
    except ValueError as exc:
        raise _fail(str(exc), "a window is like 5s, 30s or 1m") from exc
    if not control.is_running(state_home):
        raise _fail(f"no stack is running from {state_home}", "start one with `yardarm up`")
    prometheus = None if scrape else control.prometheus_url(state_home)
    urls = control.metrics_urls(state_home)
    verify = control.stack_ssl(state_home) or True

    def snapshot() -> red.RedView:
        if prometheus is not None:
            return red.from_prometheus(prometheus, window_s)
        return red.from_scrapes(urls, window_s, verify)

    if as_json:
        typer.echo(json.dumps(snapshot().as_dict(), indent=2))
        return
    from rich.live import Live

    from yardarm.top_view import render

    try:
        with Live(console=console, refresh_per_second=2) as live:
            if prometheus is not None:
                while True:
                    live.update(render(snapshot(), prometheus))
                    time.sleep(1.0)
            scraper = red.Scraper(urls, verify)
            samples = [scraper.sample()]
            while True:  # rates over the last `window` of samples, refreshed each second
                time.sleep(1.0)
                samples.append(scraper.sample())
                while len(samples) > 2 and samples[-1].at - samples[1].at >= window_s:
                    samples.pop(0)
                live.update(render(red.rows_between(samples[0], samples[-1]), None))
    except KeyboardInterrupt:
        return


@app.command()
def trace(
    ref: Annotated[str, typer.Argument(help="A trace id (32 hex digits) or an order id.")],
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for spans still being flushed.")
    ] = 3.0,
    jaeger: Annotated[
        str | None,
        typer.Option(
            "--jaeger",
            envvar="YARDARM_JAEGER_URL",
            help="Read the trace from this Jaeger query API (e.g. http://localhost:16686) "
            "instead of the local telemetry files.",
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Print one trace as a span tree, from the local telemetry files or a Jaeger."""
    from yardarm import tracing_view

    state_home = _home(home)
    deadline = time.monotonic() + wait
    trace_id = tracing_view.find_trace_id(state_home, ref) or _trace_id_from_order(state_home, ref)
    if trace_id is None:
        raise _fail(
            f"no trace found for {ref!r} in {state_home / 'telemetry'}",
            "pass a trace id or an order id from this stack",
        )
    if jaeger:
        from yardarm import jaeger_query

        try:
            roots = jaeger_query.wait_for_trace(jaeger, trace_id, wait)
        except jaeger_query.TraceNotFound as exc:
            raise _fail(str(exc), jaeger_query.NOT_FOUND_HINT) from exc
        except jaeger_query.JaegerError as exc:
            raise _fail(str(exc), "check --jaeger (or YARDARM_JAEGER_URL)") from exc
        console.print(tracing_view.render(trace_id, roots))
        console.print(f"[dim]services: {', '.join(sorted(tracing_view.services_in(roots)))}[/]")
        return
    roots = tracing_view.load_trace(state_home, trace_id)
    while not roots and time.monotonic() < deadline:
        time.sleep(0.25)
        roots = tracing_view.load_trace(state_home, trace_id)
    if not roots:
        raise _fail(f"trace {trace_id} has no spans yet in {state_home / 'telemetry'}")
    console.print(tracing_view.render(trace_id, roots))
    services = sorted(tracing_view.services_in(roots))
    console.print(f"[dim]services: {', '.join(services)}[/]")


def _trace_id_from_order(home: Path, order_id: str) -> str | None:
    """Ask the running stack which trace an order belongs to."""
    import httpx

    from yardarm.local import control

    gateway = control.gateway_url(home)
    if gateway is None:
        return None
    try:
        response = httpx.get(f"{gateway}/api/orders/{order_id}", timeout=5.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    trace_id = response.json().get("trace_id")
    return str(trace_id) if trace_id else None


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="The topology file to check.")] = Path(
        "yardarm.yaml"
    ),
) -> None:
    """Check a yardarm.yaml and print every error with where it is."""
    from yardarm.model import validate_file

    if not config.exists():
        raise _fail(f"{config} does not exist", "the defaults apply when there is no yardarm.yaml")
    errors = validate_file(config)
    if errors:
        for message in errors:
            err.print(f"[red]{config}:[/] {message}")
        raise typer.Exit(code=1)
    console.print(f"[green]{config} is valid[/]")


@app.command("api-docs")
def api_docs(
    check: Annotated[
        bool,
        typer.Option("--check", help="Only compare: exit 1 when the committed docs are stale."),
    ] = False,
) -> None:
    """Write every service's OpenAPI document to docs/api/ and render docs/api.md."""
    from yardarm import apidocs
    from yardarm.model import project_dir

    root = project_dir()
    if check:
        differ = apidocs.stale(root)
        if differ:
            for path in differ:
                err.print(f"[red]stale:[/] {path}")
            raise _fail("the API docs differ from the code", "run `uv run yardarm api-docs`")
        console.print("[green]the API docs match the code[/]")
        return
    for path in apidocs.write(root):
        console.print(f"wrote {path.relative_to(root)}")


@app.command("observability")
def observability(
    check: Annotated[
        bool,
        typer.Option("--check", help="Only compare: exit 1 when a committed file is stale."),
    ] = False,
) -> None:
    """Write the dashboards, Prometheus rules and tests, and the collector, Grafana,
    Jaeger and Loki settings to observability/ (generated from code)."""
    from yardarm.model import project_dir
    from yardarm.observability import files

    root = project_dir()
    if check:
        differ = files.stale(root)
        if differ:
            for path in differ:
                err.print(f"[red]stale:[/] {path.relative_to(root)}")
            raise _fail(
                "observability/ differs from the code", "run `uv run yardarm observability`"
            )
        console.print("[green]observability/ matches the code[/]")
        return
    for path in files.write(root):
        console.print(f"wrote {path.relative_to(root)}")


@app.command()
def load(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Base URL to load (default: the running local stack's gateway). Must be "
            "loopback (127.0.0.0/8, ::1, localhost) unless --allow-remote.",
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            help="Open loop: requests per second on a fixed schedule, whatever the answers; "
            "latency counts from each scheduled start.",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            help="Closed loop (the default, 8): workers that each send when the last answered.",
        ),
    ] = None,
    connections: Annotated[
        int | None,
        typer.Option("--connections", help="Open loop: connections and senders (default 64)."),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            "--max-in-flight",
            help="Open loop: requests waiting for a connection or answer (default 1000); "
            "slots beyond it are dropped and counted.",
        ),
    ] = None,
    duration: Annotated[
        str, typer.Option("--duration", help="Stop sending after: 30s, 500ms, 2m, 1m30s.")
    ] = "30s",
    max_requests: Annotated[
        int, typer.Option("--max-requests", help="Stop sending after this many requests.")
    ] = 1_000_000,
    mix: Annotated[
        str,
        typer.Option(
            "--mix",
            help="Weights: orders places an order, reads reads back one placed in this run, "
            "stock reads one SKU's stock.",
        ),
    ] = "orders=20,reads=70,stock=10",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the summary, as one JSON document.")
    ] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="Per-request timeout.")] = "5s",
    seed: Annotated[
        int | None, typer.Option("--seed", help="Repeat the same sequence of requests.")
    ] = None,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a non-loopback --url. Off by default so that a typo cannot point "
            "load at someone else's service: load stays on this machine.",
        ),
    ] = False,
    cacert: Annotated[
        Path | None,
        typer.Option(
            "--cacert",
            help="Trust this CA for an https --url (the local stack's own CA is found by itself).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Send a realistic mix of orders and reads at the gateway; report latency and errors.


    No retries: every failure is counted. Exits 0 whenever the load ran, failures included.
    """
    from yardarm.load import (
        LoadOptionError,
        LoadSetupError,
        NoTargetError,
        build_config,
        run_load_sync,
    )
    from yardarm.load.report import LiveLine, render_summary
    from yardarm.local import control

    try:
        config = build_config(
            url=url,
            default_url=lambda: control.gateway_url(_home(home)),
            rate=rate,
            concurrency=concurrency,
            connections=connections,
            max_in_flight=max_in_flight,
            duration=duration,
            max_requests=max_requests,
            mix=mix,
            timeout=timeout,
            seed=seed,
            allow_remote=allow_remote,
            ca_file=cacert,
            default_ca_file=lambda: control.stack_ca_file(_home(home)),
        )
    except NoTargetError as exc:
        raise _fail(
            f"{exc} ({_home(home)})", "start it with `uv run yardarm up`, or pass --url"
        ) from exc
    except LoadOptionError as exc:
        raise _fail(str(exc), "see `yardarm load --help`") from exc
    try:
        if as_json:
            summary = run_load_sync(config)
        else:
            with LiveLine(console) as line:
                summary = run_load_sync(config, on_progress=line.update)
    except LoadSetupError as exc:
        raise _fail(str(exc), exc.hint) from exc
    if as_json:
        typer.echo(summary.to_json())
    else:
        console.print(render_summary(summary))


def main() -> None:
    """Console-script entry point."""
    app()
