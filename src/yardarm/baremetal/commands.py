"""`yardarm ansible inventory`: a bare-metal stack's Ansible inventory from the
deployment model and a host list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from yardarm.cli_errors import err, fail

app = typer.Typer(
    help="Run the stack on plain Linux hosts with Ansible.",
    no_args_is_help=True,
)
console = Console()
INVENTORIES_DIR = "ansible/inventories"
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="yardarm.yaml (default: the defaults).")
]


@app.callback()
def _group() -> None:
    """Run the stack on plain Linux hosts with Ansible."""


def _shared(values: list[str]) -> dict[str, str]:
    parts: dict[str, str] = {}
    for value in values:
        part, sep, host = value.partition("=")
        if not sep or not part or not host:
            raise fail(f"--place {value}: expected PART=HOST (nats=node2)")
        parts[part] = host
    return parts


def _generated(path: Path) -> bool:
    """Whether a file is one this command wrote (its header says so)."""
    from yardarm.baremetal.inventory import COMMAND

    try:
        first = path.read_text().split("\n", 1)[0]
    except OSError:
        return False
    return first.startswith("# Generated") and f"`{COMMAND}`" in first


@app.command("inventory")
def inventory(
    hosts_file: Annotated[
        Path, typer.Option("--hosts", help="The host list (see ansible/hosts.example.yml).")
    ],
    config: ConfigOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Inventory directory (default: ansible/inventories/<environment>).",
        ),
    ] = None,
    place_on: Annotated[
        list[str] | None,
        typer.Option(
            "--place",
            metavar="PART=HOST",
            help="PART=HOST: run a shared part (nats, postgres, haproxy, prometheus) on "
            "that host (default: the first host whose roles allow it).",
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only compare: exit 1 when a file is stale.")
    ] = False,
    vault_password_file: Annotated[
        Path | None,
        typer.Option(
            "--vault-password-file",
            envvar="ANSIBLE_VAULT_PASSWORD_FILE",
            help="Issue the stack's secrets into group_vars/all/vault.yml, encrypted with "
            "this ansible-vault password, when that file is missing (it is kept otherwise).",
        ),
    ] = None,
) -> None:
    """Render the Ansible inventory (inventory.yml, group_vars, host_vars) of the stack
    that `-c yardarm.yaml` describes on the hosts `--hosts` lists."""
    from yardarm.baremetal.hosts import HostsError, load_hosts
    from yardarm.baremetal.inventory import (
        HOST_VARS_DIR,
        planned_deployment,
        read_state,
        render_inventory,
    )
    from yardarm.baremetal.target import PlacementError, place
    from yardarm.images.specs import ImagesError, source_root
    from yardarm.model import Topology, TopologyError, load_topology

    shared = _shared(place_on or [])
    try:
        hosts = load_hosts(hosts_file)
        topology = Topology() if config is None else load_topology(config)
        directory = output or source_root() / INVENTORIES_DIR / topology.environment
        # What the rollout controller keeps: a rollout's tracks, their ports.
        desired, ports = read_state(directory)
        notes = place(planned_deployment(topology, desired), hosts, shared).notes
        files = render_inventory(topology, hosts, shared, desired, ports)
    except HostsError as exc:
        raise fail(
            str(exc), "fix the host list (ansible/hosts.example.yml shows its keys)"
        ) from exc
    except TopologyError as exc:
        raise fail(str(exc), "fix the file, or check it with `yardarm validate`") from exc
    except PlacementError as exc:
        raise fail(str(exc)) from exc
    except ImagesError as exc:
        raise fail(exc.message, "run it inside the yardarm repository, or give -o DIR") from exc
    except ValueError as exc:
        raise fail(str(exc)) from exc
    for note in notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    paths = {directory / relative: text for relative, text in files.items()}
    # host_vars of hosts no longer listed are stale too (only files this command wrote).
    leftover = [
        path
        for path in sorted((directory / HOST_VARS_DIR).glob("*.yml"))
        if path not in paths and _generated(path)
    ]
    if check:
        stale = [p for p, text in paths.items() if not p.is_file() or p.read_text() != text]
        for path in [*stale, *leftover]:
            err.print(f"[red]stale:[/] {escape(str(path))}")
        if stale or leftover:
            raise fail(
                "the inventory differs from the model and the host list",
                "run `yardarm ansible inventory` with the same options",
            )
        console.print(f"[green]{len(paths)} inventory file(s) match the model[/]")
        return
    for path, text in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        console.print(f"wrote {escape(str(path))}")
    for path in leftover:
        path.unlink()
        console.print(f"removed {escape(str(path))}")
    _vault(directory, vault_password_file)


def _vault(directory: Path, password_file: Path | None) -> None:
    """Issue the secrets when they are missing and a vault password is given."""
    from yardarm.baremetal.vault import VAULT_FILE, VaultError, ensure_vault, read_password

    if password_file is None:
        if not (directory / VAULT_FILE).is_file():
            err.print(
                f"[yellow]note:[/] no {VAULT_FILE} yet: run again with --vault-password-file"
                " FILE to issue the stack's secrets"
            )
        return
    try:
        path, written = ensure_vault(directory, read_password(password_file))
    except VaultError as exc:
        raise fail(str(exc)) from exc
    verb = "wrote" if written else "kept"
    console.print(f"{verb} {escape(str(path))} (encrypted)")


class _Steps:
    """The wheel gathering's progress on the console."""

    def step(self, message: str) -> None:
        console.print(f"[dim]{escape(message)}[/]")

    def image(self, result: object) -> None:
        pass


@app.command("wheelhouse")
def wheelhouse(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The folder to write (default: ansible/wheelhouse)."),
    ] = Path("ansible/wheelhouse"),
) -> None:
    """Write the wheels the hosts install yardarm from (`-e yardarm_wheelhouse=DIR`):
    the project's built from the tree, the locked third-party ones downloaded once."""
    from yardarm.baremetal.wheelhouse import gather
    from yardarm.images.specs import ImagesError, source_root

    try:
        root = source_root()
        with console.status("gathering the wheels..."):
            wheels = gather(root, output if output.is_absolute() else Path.cwd() / output, _Steps())
    except ImagesError as exc:
        raise fail(exc.message, exc.hint) from exc
    size = sum(wheel.stat().st_size for wheel in wheels) / 1e6
    console.print(f"[green]{len(wheels)} wheels ({size:.0f} MB) in {escape(str(output))}[/]")


CONTROLLER_DIR = ".controller"  # in the inventory directory: the controller's own files


@app.command("controller")
def controller(
    hosts_file: Annotated[
        Path, typer.Option("--hosts", help="The host list the inventory was rendered from.")
    ],
    vault_password_file: Annotated[
        Path,
        typer.Option(
            "--vault-password-file",
            envvar="ANSIBLE_VAULT_PASSWORD_FILE",
            help="The inventory's ansible-vault password (the admin token is in the vault).",
        ),
    ],
    config: ConfigOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--inventory",
            "-i",
            help="Inventory directory (default: ansible/inventories/<environment>).",
        ),
    ] = None,
    place_on: Annotated[
        list[str] | None,
        typer.Option(
            "--place", metavar="PART=HOST", help="As given to `yardarm ansible inventory`."
        ),
    ] = None,
) -> None:
    """Run the stack's rollout controller here, until Ctrl-C: `yardarm rollout` then
    reaches it with YARDARM_ROLLOUTS_URL and YARDARM_ADMIN_TOKEN_FILE (printed at start).
    It changes the hosts with ansible/tracks.yml, so run it where `ansible-playbook`
    reaches them (the same ANSIBLE_* settings, SSH key and all)."""
    import os

    from pydantic import ValidationError

    from yardarm.baremetal.controller import LISTEN, serve
    from yardarm.baremetal.hosts import HostsError, load_hosts
    from yardarm.baremetal.inventory import read_state, render_inventory
    from yardarm.baremetal.rollout_effects import BareMetalStack
    from yardarm.baremetal.target import PlacementError
    from yardarm.baremetal.vault import VAULT_FILE, VaultError, decrypt, read_password
    from yardarm.images.specs import ImagesError, source_root
    from yardarm.model import Topology, TopologyError, load_topology
    from yardarm.rollout.settings import ControllerSettings

    shared = _shared(place_on or [])
    try:
        hosts = load_hosts(hosts_file)
        topology = Topology() if config is None else load_topology(config)
        root = source_root()
        directory = output or root / INVENTORIES_DIR / topology.environment
        desired, ports = read_state(directory)
        files = render_inventory(topology, hosts, shared, desired, ports)
        if not (directory / VAULT_FILE).is_file():
            raise VaultError(
                f"no {directory / VAULT_FILE}: issue the stack's secrets with `yardarm ansible "
                "inventory --vault-password-file F` and converge with site.yml first"
            )
        password = read_password(vault_password_file)
        secrets = decrypt(directory / VAULT_FILE, password)
        tuning = ControllerSettings()
    except HostsError as exc:
        raise fail(str(exc), "fix the host list") from exc
    except TopologyError as exc:
        raise fail(str(exc), "fix the file, or check it with `yardarm validate`") from exc
    except ImagesError as exc:
        raise fail(exc.message, "run it inside the yardarm repository") from exc
    except ValidationError as exc:
        raise fail(f"YARDARM_ROLLOUTS_*: {exc.errors()[0]['msg']}") from exc
    except (PlacementError, VaultError, ValueError) as exc:
        raise fail(str(exc)) from exc
    stale = [
        relative
        for relative, text in files.items()
        if not (directory / relative).is_file() or (directory / relative).read_text() != text
    ]
    if stale:
        raise fail(
            f"the inventory in {directory} differs from the model ({', '.join(stale)})",
            "run `yardarm ansible inventory` with the same options and converge with site.yml",
        )
    state_dir = directory / CONTROLLER_DIR
    state_dir.mkdir(mode=0o700, exist_ok=True)
    token_file = state_dir / "admin-token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets["yardarm_secrets"]["tokens"]["admin"] + "\n")
    stack = BareMetalStack(
        topology=topology,
        hosts=hosts,
        inventory=directory.resolve(),
        ansible=root / "ansible",
        shared=shared,
        settings={"ANSIBLE_VAULT_PASSWORD_FILE": str(vault_password_file.resolve())},
    )
    console.print(
        f"rollout controller on http://{LISTEN}:{topology.rollouts_port}; in another shell:\n"
        f"  export YARDARM_ROLLOUTS_URL=http://{LISTEN}:{topology.rollouts_port}"
        f" YARDARM_ADMIN_TOKEN_FILE={escape(str(token_file.resolve()))}"
    )
    code = serve(stack, secrets["yardarm_secrets"]["tokens"]["admin"], tuning, state_dir)
    if code:
        raise typer.Exit(code)
