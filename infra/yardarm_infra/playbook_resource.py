"""The playbook as a Pulumi resource: a dynamic provider (Python, run by the Pulumi
SDK's own `pulumi-python` provider, so no plugin to install) whose create and update run
ansible-playbook.

The resource's inputs carry a digest of everything the playbook applies; `diff` compares
only that, so `pulumi up` runs the playbook exactly when something it applies changed.

Pulumi runs a dynamic provider in a process of its own (`python -m pulumi.dynamic`, in
the project's root and environment), which unpickles the provider from the resource's
state. That process does not have the program's folder (`infra/`) on its path, so the
provider pickles as a recipe that puts the folder there before importing this module:
pickled by reference alone, it would fail there with "No module named 'yardarm_infra'".
"""

from __future__ import annotations

import importlib
import operator
import site
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pulumi
import pulumi.dynamic

from yardarm.baremetal.inventory import INVENTORY_FILE
from yardarm_infra.playbook import run_playbook

# infra/: the folder holding this package, as the program runs it.
PROGRAM_DIR: Final = Path(__file__).resolve().parents[1]
SECRET_INPUTS: Final = ("vaultPassword",)


@dataclass(frozen=True)
class _Call:
    """Pickles as `function(*args)`: unpickling makes the call (stdlib functions only,
    which every process can import)."""

    function: Any
    args: tuple[Any, ...]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


class PlaybookProvider(pulumi.dynamic.ResourceProvider):
    """Runs the playbook on create and update, when the digest changed."""

    def __init__(self, program_dir: str = str(PROGRAM_DIR)) -> None:
        super().__init__()
        self.program_dir = program_dir

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Unpickled as: add `program_dir` to the path, import this module, build the
        provider from it (see the module's docstring)."""
        on_path = _Call(site.addsitedir, (self.program_dir,))
        module = _Call(importlib.import_module, (__name__,))
        imported = _Call(operator.itemgetter(1), ((on_path, module),))
        make = operator.methodcaller(type(self).__name__, self.program_dir)
        return make, (imported,)

    def diff(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        changed = olds.get("digest") != news.get("digest")
        return pulumi.dynamic.DiffResult(
            changes=changed, replaces=[], stables=[], delete_before_replace=False
        )

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        outs = self._apply(props)
        return pulumi.dynamic.CreateResult(id_=f"playbook-{props['digest'][:16]}", outs=outs)

    def update(
        self, _id: str, _olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(outs=self._apply(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Leaves the hosts as they are: `pulumi destroy` forgets the playbook's run, and
        does not tear down machines this stack did not create (their services, data and
        accounts stay; remove them on the hosts when that is what you want)."""

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        """Run the playbook; the outputs are the inputs but the secret, and the recap."""
        private_key = props.get("privateKeyFile")
        log = props.get("log")
        run = run_playbook(
            Path(props["playbook"]),
            Path(props["inventory"]) / INVENTORY_FILE,
            vault_password=props["vaultPassword"],
            extra_vars={"yardarm_wheelhouse": props["wheelhouse"]},
            private_key=Path(private_key) if private_key else None,
            log_file=Path(log) if log else None,
        )
        outs = {key: value for key, value in props.items() if key not in SECRET_INPUTS}
        return outs | {"recap": run.recap}


@dataclass(frozen=True)
class PlaybookArgs:
    """What one run applies, and how to reach the hosts."""

    playbook: Path  # ansible/site.yml; its folder's ansible.cfg is used
    inventory_dir: Path  # holds inventory.yml, group_vars/, host_vars/
    digest: str  # of everything the run applies (`yardarm_infra.baremetal.playbook_digest`)
    wheelhouse: Path  # -e yardarm_wheelhouse
    vault_password: str = field(repr=False)
    private_key: Path | None = None
    log_file: Path | None = None  # the last run's whole output


class Playbook(pulumi.dynamic.Resource, module="yardarm", name="Playbook"):
    """ansible-playbook, run whenever `digest` changes."""

    digest: pulumi.Output[str]
    recap: pulumi.Output[dict[str, dict[str, int]]]

    def __init__(
        self, name: str, args: PlaybookArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props: dict[str, Any] = {
            "playbook": str(args.playbook),
            "inventory": str(args.inventory_dir),
            "digest": args.digest,
            "wheelhouse": str(args.wheelhouse),
            "vaultPassword": pulumi.Output.secret(args.vault_password),
            "privateKeyFile": str(args.private_key) if args.private_key else None,
            "log": str(args.log_file) if args.log_file else None,
            "recap": None,  # an output
        }
        super().__init__(PlaybookProvider(), name, props, opts)
