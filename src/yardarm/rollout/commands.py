"""`yardarm rollout ...`: start, follow, promote, abort and undo rollouts, through the
rollout controller's HTTP API (the controller runs them; the CLI may exit at any time).

The CLI imports this module for every command, `yardarm --help` included: httpx, the
control plane and the rollout model (pydantic) are imported by the commands that use
them. What a rollout looks like on screen is `yardarm.rollout.view`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import quote

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from yardarm.rollout.state import Rollout

app = typer.Typer(
    help="Progressive delivery: canary and blue-green rollouts, judged on live metrics.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

TIMEOUT_S = 10.0
# A controller that is not the local stack's (Kubernetes' through `kubectl port-forward`):
# its URL, and a file holding the release's admin token.
URL_ENV = "YARDARM_ROLLOUTS_URL"
TOKEN_FILE_ENV = "YARDARM_ADMIN_TOKEN_FILE"
REFRESH_S = 1.0  # `status --watch`

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="State directory (default: .yardarm in the project, or $YARDARM_HOME)."
    ),
]
ServiceArgument = Annotated[str, typer.Argument(help="orders, fulfillment, gateway or datastore.")]
JsonOption = Annotated[bool, typer.Option("--json", help="The controller's JSON document.")]
STEPS_HINT = "steps are whole percentages rising to 100, `pause` between them: 10,25,pause,50,100"


class ApiError(Exception):
    """The controller could not be reached, or refused; the message and hint are printed."""

    def __init__(self, message: str, hint: str | None = None, *, unreachable: bool = False):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.unreachable = unreachable  # nothing answered (a watch tries again)


def _home(home: Path | None) -> Path:
    if home is not None:
        return home
    from yardarm.local import control

    return control.default_home()


def _fail(message: str, hint: str | None = None) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        err.print(f"[dim]{escape(hint)}[/]")
    raise typer.Exit(code=1)


def _no_controller(home: Path) -> ApiError:
    return ApiError(
        f"no rollout controller runs from {home}; start the stack with `yardarm up`",
        unreachable=True,
    )


def _refused(exc: BaseException) -> bool:
    """Whether a connection error was a refused connection (nothing listens there)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "refused" in str(exc).lower()


def _hint(status: int, service: str | None) -> str | None:
    name = service or "SERVICE"
    refused = "the stack's admin token was refused: restart the stack (`yardarm down`, `up`)"
    return {
        401: refused,
        403: refused,
        404: f"`yardarm rollout list` shows every service's rollout; "
        f"`yardarm rollout start {name} --version V` starts one",
        409: f"`yardarm rollout status {name}` shows where it stands",
        422: "`yardarm rollout start --help` says what a rollout accepts",
    }.get(status, "`yardarm status` shows the stack; the controller's log says more")


def _problem_text(status: int, document: Any) -> str:
    """An RFC 9457 problem as one line: its detail (or title), then its field errors."""
    if not isinstance(document, dict):
        return f"the rollout controller answered HTTP {status}"
    detail = str(document.get("detail") or document.get("title") or f"HTTP {status}")
    errors = document.get("errors")
    if isinstance(errors, list):
        extra = [
            f"{e.get('field')}: {e.get('message')}" if isinstance(e, dict) else str(e)
            for e in errors
        ]
        extra = [text for text in extra if text not in detail]
        if extra:
            detail += ": " + "; ".join(extra)
    return detail


def _remote() -> tuple[str, str] | None:
    """The controller `YARDARM_ROLLOUTS_URL` names and the token its file holds (None:
    the local stack's controller)."""
    url = os.environ.get(URL_ENV, "").strip().rstrip("/")
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise ApiError(f"{URL_ENV}={url!r} is not an http:// or https:// URL")
    token_file = os.environ.get(TOKEN_FILE_ENV, "").strip()
    if not token_file:
        raise ApiError(
            f"{URL_ENV} is set but {TOKEN_FILE_ENV} is not",
            f"set {TOKEN_FILE_ENV} to a file holding the release's admin token",
        )
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise ApiError(f"cannot read the admin token ({TOKEN_FILE_ENV}): {exc}") from exc
    if not token:
        raise ApiError(f"the admin token file {token_file} ({TOKEN_FILE_ENV}) is empty")
    return url, token


def call(
    home: Path, method: str, path: str, body: dict[str, Any] | None = None,
    *, service: str | None = None,
) -> Any:  # fmt: skip
    """One request to the controller of the stack running from `home` (or to the one
    `YARDARM_ROLLOUTS_URL` names, with the token in `YARDARM_ADMIN_TOKEN_FILE`); its JSON."""
    import httpx

    from yardarm.credentials import admin_token
    from yardarm.local import control

    remote = _remote()
    if remote is not None:
        base, token = remote
        verify: Any = True
    else:
        found = control.rollout_controller_url(home)
        if found is None:
            raise _no_controller(home)
        base = found
        try:
            token = admin_token(home)
        except OSError as exc:
            raise ApiError(
                f"cannot read the stack's admin credential: {exc}", "restart the stack to issue it"
            ) from exc
        verify = control.stack_ssl(home) or True
    url = f"{base}{path}"
    try:
        response = httpx.request(
            method,
            url,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT_S,
            trust_env=False,
            verify=verify,
        )
    except httpx.ConnectError as exc:
        if _refused(exc) and remote is not None:
            raise ApiError(
                f"nothing answers at {base} ({URL_ENV})",
                "is `kubectl port-forward svc/<release>-controller PORT` still running?",
                unreachable=True,
            ) from exc
        if _refused(exc):
            raise _no_controller(home) from exc
        raise ApiError(
            f"cannot connect to the rollout controller at {url}: {exc}",
            "check the stack with `yardarm status`",
            unreachable=True,
        ) from exc
    except httpx.HTTPError as exc:
        raise ApiError(
            f"the rollout controller at {url} does not answer ({exc.__class__.__name__}: {exc})",
            "check the stack with `yardarm status`",
            unreachable=True,
        ) from exc
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code >= 400:
        raise ApiError(_problem_text(response.status_code, document),
                       _hint(response.status_code, service))  # fmt: skip
    if document is None:
        raise ApiError(
            f"the rollout controller answered {response.status_code} without a JSON document",
            "the controller's log says more",
        )
    return document


def _rollout(document: Any) -> Rollout:
    from pydantic import ValidationError

    from yardarm.rollout.state import Rollout

    try:
        return Rollout.model_validate(document)
    except ValidationError as exc:
        raise ApiError(
            f"the rollout controller answered a rollout this yardarm cannot read: {exc}",
            "the CLI and the controller may be different versions: restart the stack",
        ) from exc


def _rollouts(document: Any) -> list[Rollout]:
    items = document.get("rollouts") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ApiError("the rollout controller answered without a list of rollouts")
    return [_rollout(item) for item in items]


def _service_path(service: str, action: str = "") -> str:
    return f"/rollouts/{quote(service, safe='')}{action}"


def _run(home: Path | None, method: str, path: str, body: dict[str, Any] | None = None,
         *, service: str | None = None) -> Any:  # fmt: skip
    """`call`, with a failure printed as `error: ...` and exit status 1."""
    state_home = _home(home)
    try:
        return call(state_home, method, path, body, service=service)
    except ApiError as exc:
        _fail(exc.message, exc.hint)


# -- start --------------------------------------------------------------------------


def start_request(
    service: str,
    version: str,
    strategy: str | None,
    steps: str | None,
    step_duration: str | None,
    analysis_interval: str | None,
    scale_down_delay: str | None = None,
    sticky: str | None = None,
) -> dict[str, Any]:
    """The `POST /rollouts` body, checked here as the controller will check it (all but
    what needs the stack: the service's versions), so bad input sends nothing."""
    from typing import get_args

    from pydantic import ValidationError

    from yardarm.load.options import parse_duration
    from yardarm.rollout.spec import RolloutSpec, RolloutSpecError, Strategy, parse_steps

    body: dict[str, Any] = {"service": service, "version": version}
    if sticky is not None:
        body["sticky"] = sticky
    if strategy is not None:
        known = get_args(Strategy)
        if strategy not in known:
            _fail(f"unknown strategy {strategy!r}: use {' or '.join(known)}")
        body["strategy"] = strategy
    if steps is not None:
        try:
            body["steps"] = list(parse_steps(steps))
        except RolloutSpecError as exc:
            _fail(str(exc), STEPS_HINT)
    durations = {"step_duration_s": ("--step-duration", step_duration),
                 "analysis_interval_s": ("--analysis-interval", analysis_interval),
                 "scale_down_delay_s": ("--scale-down-delay", scale_down_delay)}  # fmt: skip
    for field, (option, text) in durations.items():
        if text is None:
            continue
        try:
            body[field] = parse_duration(text)
        except ValueError as exc:
            _fail(f"{option}: {exc}")
    try:
        RolloutSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if field in durations:
            option, text = durations[field]
            bounds = RolloutSpec.model_json_schema()["properties"][field]
            _fail(
                f"{option} {text}: give a duration from {bounds['minimum']:g}s "
                f"to {bounds['maximum']:g}s"
            )
        _fail(str(first["msg"]).removeprefix("Value error, "))
    return body


@app.command()
def start(
    service: ServiceArgument,
    version: Annotated[
        str, typer.Option("--version", help="The version to roll out (declared in yardarm.yaml).")
    ],
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="canary (the default) or blue-green.")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            help="Canary weights rising to 100, `pause` waits for promote "
            "(default 10,25,50,100), e.g. 10,25,pause,50,100.",
        ),
    ] = None,
    step_duration: Annotated[
        str | None, typer.Option("--step-duration", help="Each step's length (default 30s).")
    ] = None,
    analysis_interval: Annotated[
        str | None,
        typer.Option("--analysis-interval", help="Time between analyses (default 10s)."),
    ] = None,
    scale_down_delay: Annotated[
        str | None,
        typer.Option(
            "--scale-down-delay",
            help="Blue-green: how long blue stays up after the switch (default 30s).",
        ),
    ] = None,
    sticky: Annotated[
        str | None,
        typer.Option(
            "--sticky",
            help="Canary: keep each client on one track by header:NAME or cookie:NAME while "
            "the rollout runs; a client on the canary stays on it as its weight grows.",
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Start rolling SERVICE out to --version; the controller runs it to its end."""
    from yardarm.rollout.view import started_text

    body = start_request(
        service, version, strategy, steps, step_duration, analysis_interval, scale_down_delay,
        sticky,
    )  # fmt: skip
    rollout = _rollout(_run(home, "POST", "/rollouts", body, service=service))
    console.print(started_text(rollout))
    console.print(f"[dim]follow it: yardarm rollout status {escape(service)} --watch[/]")


# -- status, list, history ----------------------------------------------------------


def _fetch(home: Path, service: str | None) -> Rollout | list[Rollout]:
    if service is None:
        return _rollouts(call(home, "GET", "/rollouts"))
    return _rollout(call(home, "GET", _service_path(service), service=service))


def _watch(home: Path, service: str | None) -> Rollout | list[Rollout]:
    """Refresh the view every REFRESH_S until the rollout (every rollout, without a
    service) has ended; the rollouts as last seen. A controller that stops answering
    for a moment (a restart) is waited for."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from yardarm.rollout.view import rollouts_view, status_view

    def view(seen: Rollout | list[Rollout]) -> Any:
        return rollouts_view(seen) if isinstance(seen, list) else status_view(seen)

    def running(seen: Rollout | list[Rollout]) -> bool:
        return any(r.running for r in seen) if isinstance(seen, list) else seen.running

    seen = _fetch(home, service)
    with Live(view(seen), console=console, refresh_per_second=4) as live:
        while running(seen):
            time.sleep(REFRESH_S)
            try:
                seen = _fetch(home, service)
            except ApiError as exc:
                if not exc.unreachable:
                    raise
                live.update(Group(view(seen), Text(f"{exc.message}; trying again", "red")))
                continue
            live.update(view(seen))
    return seen


@app.command()
def status(
    service: Annotated[
        str | None, typer.Argument(help="One service (default: every service's rollout).")
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w",
            help="Refresh every second until the rollout ends (exit 1 if it failed or was "
            "aborted) or Ctrl-C.",
        ),
    ] = False,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:  # fmt: skip
    """Where a rollout stands: phase, step, weights, the step's verdicts, the last events."""
    from yardarm.rollout.view import rollouts_view, status_view

    state_home = _home(home)
    if watch and as_json:
        _fail("--watch and --json do not go together", "poll `status --json` instead")
    if as_json:
        path = "/rollouts" if service is None else _service_path(service)
        typer.echo(json.dumps(_run(state_home, "GET", path, service=service), indent=2))
        return
    try:
        if not watch:
            seen = _fetch(state_home, service)
            console.print(rollouts_view(seen) if isinstance(seen, list) else status_view(seen))
            return
        try:
            seen = _watch(state_home, service)
        except KeyboardInterrupt:
            console.print("[dim]stopped watching; the controller goes on with the rollout[/]")
            return
    except ApiError as exc:
        _fail(exc.message, exc.hint)
    if not isinstance(seen, list) and seen.phase in ("failed", "aborted"):
        raise typer.Exit(code=1)


@app.command("list")
def list_rollouts(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Every service's current or last rollout."""
    from yardarm.rollout.view import list_table

    document = _run(home, "GET", "/rollouts")
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    try:
        rollouts = _rollouts(document)
    except ApiError as exc:
        _fail(exc.message, exc.hint)
    console.print(list_table(rollouts))


@app.command()
def history(service: ServiceArgument, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """A service's finished rollouts, newest first, with why each ended."""
    from yardarm.rollout.view import history_table

    document = _run(home, "GET", _service_path(service, "/history"), service=service)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    try:
        rollouts = _rollouts(document)
    except ApiError as exc:
        _fail(exc.message, exc.hint)
    console.print(history_table(service, rollouts))


# -- promote, abort, undo -----------------------------------------------------------


def _act(home: Path | None, service: str, action: str, body: dict[str, Any] | None) -> Rollout:
    document = _run(home, "POST", _service_path(service, f"/{action}"), body, service=service)
    try:
        return _rollout(document)
    except ApiError as exc:
        _fail(exc.message, exc.hint)


@app.command()
def promote(
    service: ServiceArgument,
    full: Annotated[
        bool, typer.Option("--full", help="Skip the remaining steps and analyses: go to 100%.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Go on from a pause (or past the current step); --full promotes at once."""
    from yardarm.rollout.view import outcome_text

    rollout = _act(home, service, "promote", {"full": full})
    console.print(f"promoted{' fully' if full else ''}: {outcome_text(rollout)}")


@app.command()
def abort(
    service: ServiceArgument,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why; shown in `status` and `history`.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Stop the rollout now: all traffic back to stable, no more steps or analyses."""
    from yardarm.rollout.view import outcome_text

    rollout = _act(home, service, "abort", {} if reason is None else {"reason": reason})
    console.print(f"aborted: {outcome_text(rollout)}")


@app.command()
def undo(service: ServiceArgument, home: HomeOption = None) -> None:
    """Take SERVICE back to its previous version (also after a completed rollout)."""
    from yardarm.rollout.view import outcome_text

    rollout = _act(home, service, "undo", None)
    console.print(f"undo: {outcome_text(rollout)}")
    console.print(f"[dim]follow it: yardarm rollout status {escape(service)} --watch[/]")
