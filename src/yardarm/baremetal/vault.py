"""The stack's secrets for Ansible, encrypted with ansible-vault.

`group_vars/all/vault.yml` holds `yardarm_secrets`: every principal's token, the Raft
peer secret and Postgres' password, issued once and kept (a second run leaves an
existing file alone, so tokens survive every re-render of the inventory). The roles
write them into the files `StackCredentials` names on each host; the inventory itself
holds only paths. The file is encrypted with the operator's vault password; it is never
written in plain text, and Ansible reads it with `--vault-password-file`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import yaml

VAULT_FILE: Final = "group_vars/all/vault.yml"
VAULT_HEADER: Final = b"$ANSIBLE_VAULT;"
VARIABLE: Final = "yardarm_secrets"


class VaultError(ValueError):
    """The vault cannot be written or read; the message says what to do."""


def _vault_lib(password: str) -> Any:
    try:
        from ansible.parsing.vault import VaultLib, VaultSecret  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the infra group ships ansible-core
        raise VaultError(
            "ansible-core is not installed: `uv sync` installs it (the infra dependency group)"
        ) from exc
    if not password.strip():
        raise VaultError("the vault password is empty: put the password in its file")
    return VaultLib([("default", VaultSecret(password.encode()))])


def read_password(path: Path) -> str:
    """A vault password from its file, read as ansible-vault reads it (the whole file,
    stripped; an executable file is run and its output is the password), so a vault this
    writes is one `--vault-password-file` opens."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise VaultError(f"cannot read the vault password file {path}: {exc.strerror}") from exc
    if not os.access(path, os.X_OK) and not text.strip():
        raise VaultError(f"the vault password file {path} is empty")
    try:
        from ansible.errors import AnsibleError  # type: ignore[import-untyped]
        from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]
        from ansible.parsing.vault import get_file_vault_secret
    except ImportError as exc:  # pragma: no cover - the infra group ships ansible-core
        raise VaultError(
            "ansible-core is not installed: `uv sync` installs it (the infra dependency group)"
        ) from exc
    try:
        secret = get_file_vault_secret(filename=str(path), loader=DataLoader())
        secret.load()
        password = str(secret.bytes.decode())
    except (AnsibleError, UnicodeDecodeError) as exc:
        raise VaultError(f"cannot read the vault password file {path}: {exc}") from exc
    if not password.strip():
        raise VaultError(f"the vault password file {path} is empty")
    return password


def new_secrets() -> dict[str, Any]:
    """A fresh set of the stack's secrets."""
    from yardarm_kit.access import new_token

    from yardarm.credentials import PRINCIPALS

    return {
        VARIABLE: {
            "tokens": {name: new_token() for name in PRINCIPALS},
            "peer_secret": new_token(),
            "postgres_password": new_token(),
        }
    }


def decrypt(path: Path, password: str) -> dict[str, Any]:
    """The vault file's variables."""
    from ansible.errors import AnsibleError

    try:
        plain = _vault_lib(password).decrypt(path.read_bytes())
    except AnsibleError as exc:
        raise VaultError(
            f"{path} does not open with this vault password: give the password it was "
            "written with, or remove the file to issue new secrets (every token changes)"
        ) from exc
    document = yaml.safe_load(plain)
    if not isinstance(document, dict) or VARIABLE not in document:
        raise VaultError(f"{path} holds no {VARIABLE}: remove it to issue new secrets")
    missing = _missing(document[VARIABLE])
    if missing:
        raise VaultError(
            f"{path}: {VARIABLE} lacks {', '.join(missing)}: remove the file to issue new "
            "secrets (every token changes), or add them with `ansible-vault edit`"
        )
    return document


def _missing(secrets: Any) -> list[str]:
    """What the roles need and `secrets` does not hold (a principal added since, say)."""
    from yardarm.credentials import PRINCIPALS

    if not isinstance(secrets, dict):
        return ["everything"]
    found = secrets.get("tokens")
    tokens: dict[str, Any] = found if isinstance(found, dict) else {}
    wanted = [f"tokens.{name}" for name in PRINCIPALS if not tokens.get(name)]
    return wanted + [key for key in ("peer_secret", "postgres_password") if not secrets.get(key)]


def ensure_vault(inventory_dir: Path, password: str) -> tuple[Path, bool]:
    """The inventory's vault file, written with new secrets when it is missing; whether
    it was written. An existing file is only checked to open with `password`."""
    path = inventory_dir / VAULT_FILE
    lib = _vault_lib(password)
    if path.is_file():
        if not path.read_bytes().startswith(VAULT_HEADER):
            raise VaultError(
                f"{path} is not encrypted: encrypt it (`ansible-vault encrypt {path}`) or "
                "remove it to issue new secrets"
            )
        decrypt(path, password)
        return path, False
    plain = yaml.safe_dump(new_secrets(), sort_keys=True)
    encrypted: bytes = lib.encrypt(plain)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its mode under O_TRUNC
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(encrypted)
    os.replace(tmp, path)
    return path, True
