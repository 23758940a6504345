"""Running `ansible-playbook`: the play's recap per host, or a failure that carries the
last lines of its output.

Plain Python, no Pulumi: the playbook resource's provider calls it, and so can a test.
The vault password reaches Ansible through a file only the current user can read,
removed when the run ends, never through the command line (which every user of the
machine can read in the process list).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

EXECUTABLE: Final = "ansible-playbook"
CONFIG_FILE: Final = "ansible.cfg"  # next to the playbook: roles path, output format
TAIL_LINES: Final = 40
_RECAP: Final = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


class PlaybookError(RuntimeError):
    """ansible-playbook could not run or failed; the message carries what it said."""


@dataclass(frozen=True)
class PlaybookRun:
    """A run that succeeded: the PLAY RECAP's counts per host, and all it printed."""

    recap: dict[str, dict[str, int]]
    output: str


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP's counts per host (`ok`, `changed`, `unreachable`, `failed`, ...)."""
    recap: dict[str, dict[str, int]] = {}
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")]
    if not starts:
        return recap
    for line in lines[starts[-1] + 1 :]:
        found = _RECAP.match(line.strip())
        if found is None:
            if recap:
                break
            continue
        counts = (pair.split("=") for pair in found["counts"].split())
        recap[found["host"]] = {key: int(value) for key, value in counts}
    return recap


def find_executable() -> str:
    """ansible-playbook from this Python's environment first (the project's, where the
    infra dependency group installs it), else from PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(EXECUTABLE, path=path)
    if found is None:
        raise PlaybookError(
            f"{EXECUTABLE} is not installed: `uv sync` installs it (the infra dependency group)"
        )
    return found


def playbook_command(
    executable: str,
    playbook: Path,
    inventory: Path,
    *,
    vault_password_file: Path | None = None,
    extra_vars: Mapping[str, str] | None = None,
    private_key: Path | None = None,
) -> list[str]:
    """The command line: paths and settings only, no secret."""
    command = [executable, "-i", str(inventory)]
    if vault_password_file is not None:
        command += ["--vault-password-file", str(vault_password_file)]
    if private_key is not None:
        command += ["--private-key", str(private_key)]
    if extra_vars:
        # JSON, not key=value: a path with a space stays one value.
        command += ["-e", json.dumps(dict(extra_vars), sort_keys=True)]
    return [*command, str(playbook)]


@contextmanager
def _password_file(password: str | None) -> Iterator[Path | None]:
    """A 0600 file holding the password (not executable: Ansible would run an executable
    one as a script), removed afterwards."""
    if password is None:
        yield None
        return
    fd, name = tempfile.mkstemp(prefix="yardarm-vault-", suffix=".txt")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _environment(playbook: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The stack's vault password is the one given; an operator's own would be tried too.
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
    env |= {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1"}
    config = playbook.parent / CONFIG_FILE
    if config.is_file():
        env["ANSIBLE_CONFIG"] = str(config)
    return env


def run_playbook(
    playbook: Path,
    inventory: Path,
    *,
    vault_password: str | None = None,
    extra_vars: Mapping[str, str] | None = None,
    private_key: Path | None = None,
    log_file: Path | None = None,
    tail: int = TAIL_LINES,
) -> PlaybookRun:
    """Run `playbook` on `inventory` (with the playbook folder's ansible.cfg when it has
    one); its whole output goes to `log_file` too. PlaybookError when it fails, with the
    last `tail` lines of its output."""
    executable = find_executable()
    with _password_file(vault_password) as password_file:
        command = playbook_command(
            executable,
            playbook,
            inventory,
            vault_password_file=password_file,
            extra_vars=extra_vars,
            private_key=private_key,
        )
        result = subprocess.run(
            command,
            cwd=playbook.parent,
            env=_environment(playbook),
            stdin=subprocess.DEVNULL,  # a prompt (a become password) fails instead of hanging
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
    output = result.stdout
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(output)
    if result.returncode != 0:
        last = "\n".join(output.rstrip().splitlines()[-tail:])
        where = f" (all of it: {log_file})" if log_file is not None else ""
        raise PlaybookError(
            f"{EXECUTABLE} {playbook.name} failed (exit {result.returncode}); the last lines "
            f"of its output{where}:\n{last}"
        )
    return PlaybookRun(recap=parse_recap(output), output=output)
