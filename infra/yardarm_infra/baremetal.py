"""The stack on plain Linux hosts: the inventory rendered into the stack's working
folder, its vault, and the playbook resource that applies `ansible/site.yml` to them.

The playbook runs again exactly when something it applies changed: its digest covers
the inventory folder as Ansible reads it (the vault included), every file of the
playbook and its roles, and the wheels the hosts install.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pulumi

from yardarm.baremetal.inventory import HOST_VARS_DIR
from yardarm.baremetal.vault import VaultError, ensure_vault
from yardarm_infra.config import ConfigError
from yardarm_infra.playbook_resource import Playbook, PlaybookArgs

PLAYBOOK: Final = "site.yml"
LOG_FILE: Final = "playbook.log"  # in the stack's working folder: the last run's output
# Under ansible/ but not applied by the playbook: the CLI's outputs and the host list's
# template.
NOT_APPLIED: Final = frozenset({"inventories", "wheelhouse", "hosts.example.yml"})


def _sum(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every file below `folder`, in a stable order, leaving out hidden files and
    byte-code (an editor's swap file is not a change)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(
            part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts
        )
    )


def ansible_files(ansible_dir: Path) -> list[Path]:
    """The files the playbook applies: site.yml, ansible.cfg, the roles."""
    return [
        path
        for path in _files(ansible_dir)
        if path.relative_to(ansible_dir).parts[0] not in NOT_APPLIED
    ]


def playbook_digest(inventory_dir: Path, ansible_dir: Path, wheelhouse: Path) -> str:
    """sha256 over each file's place and sum: the inventory folder, the playbook's
    files, and the wheelhouse's wheels."""
    parts: list[tuple[str, Path, Iterable[Path]]] = [
        ("inventory", inventory_dir, _files(inventory_dir)),
        ("ansible", ansible_dir, ansible_files(ansible_dir)),
        ("wheel", wheelhouse, sorted(wheelhouse.glob("*.whl"))),
    ]
    digest = hashlib.sha256()
    for label, base, paths in parts:
        for path in paths:
            line = f"{label} {path.relative_to(base).as_posix()} {_sum(path)}\n"
            digest.update(line.encode())
    return digest.hexdigest()


def write_inventory(directory: Path, files: Mapping[str, str]) -> None:
    """The rendered files in `directory` (unchanged ones left alone), and no host_vars of
    a host that left the list."""
    for relative, text in files.items():
        path = directory / relative
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    wanted = {directory / relative for relative in files}
    for stale in (directory / HOST_VARS_DIR).glob("*.yml"):
        if stale not in wanted:
            stale.unlink()


class _LoggedSteps:
    """The wheel gathering's progress in Pulumi's log."""

    def step(self, message: str) -> None:
        pulumi.log.info(message)

    def image(self, result: object) -> None:
        pass


def gather_wheelhouse(root: Path, destination: Path) -> Path:
    """The wheels the hosts install, gathered into `destination` (built from the tree and
    downloaded the first time, so slow then)."""
    from yardarm.baremetal.wheelhouse import gather
    from yardarm.images.specs import ImagesError

    pulumi.log.info(f"gathering the wheels the hosts install into {destination}")
    try:
        gather(root, destination, _LoggedSteps())
    except ImagesError as exc:
        raise ConfigError(
            f"yardarm:wheelhouse is unset and gathering the wheels failed: {exc.message}"
            f"{f' ({exc.hint})' if exc.hint else ''}: `uv run yardarm ansible wheelhouse -o "
            "DIR` and pulumi config set yardarm:wheelhouse DIR"
        ) from exc
    return destination


@dataclass(frozen=True)
class BaremetalStackArgs:
    """The rendered inventory and where everything the playbook needs is."""

    files: Mapping[str, str]  # the inventory: path relative to `inventory_dir` -> text
    inventory_dir: Path
    ansible_dir: Path  # holds site.yml, ansible.cfg and the roles
    wheelhouse: Path
    vault_password: str = field(repr=False)
    private_key: Path | None = None


class BaremetalStack(pulumi.ComponentResource):
    """The inventory written and its vault ensured (before anything is declared, so a
    vault the password does not open stops the preview), then the playbook resource."""

    digest: str
    recap: pulumi.Output[dict[str, dict[str, int]]]

    def __init__(
        self,
        resource_name: str,
        args: BaremetalStackArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        write_inventory(args.inventory_dir, args.files)
        try:
            ensure_vault(args.inventory_dir, args.vault_password)
        except VaultError as exc:
            raise ConfigError(
                f"yardarm:vaultPassword: {exc}: pulumi config set --secret "
                "yardarm:vaultPassword <the password it was written with>"
            ) from exc
        self.digest = playbook_digest(args.inventory_dir, args.ansible_dir, args.wheelhouse)
        super().__init__("yardarm:baremetal:Stack", resource_name, None, opts)
        playbook = Playbook(
            resource_name,
            PlaybookArgs(
                playbook=args.ansible_dir / PLAYBOOK,
                inventory_dir=args.inventory_dir,
                digest=self.digest,
                wheelhouse=args.wheelhouse,
                vault_password=args.vault_password,
                private_key=args.private_key,
                log_file=args.inventory_dir.parent / LOG_FILE,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.recap = playbook.recap
        self.register_outputs({"digest": self.digest, "recap": self.recap})
