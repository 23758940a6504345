"""The stack's secrets in an ansible-vault file: issued once into a fresh inventory,
encrypted and private, kept byte for byte afterwards, refused with what to do when the
password or the file is wrong, and readable by `ansible-vault` itself (what the
playbooks run with), not only by this module.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from yardarm.baremetal.vault import (
    VAULT_FILE,
    VaultError,
    decrypt,
    ensure_vault,
    new_secrets,
    read_password,
)
from yardarm.credentials import PRINCIPALS

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
HEADER = b"$ANSIBLE_VAULT;1.1;AES256"
ANSIBLE_TIMEOUT_S = 120


def _values(document: dict[str, Any]) -> list[str]:
    """Every secret in a vault document: the principals' tokens, the peer secret and
    Postgres' password."""
    secrets = document["yardarm_secrets"]
    return [*secrets["tokens"].values(), secrets["peer_secret"], secrets["postgres_password"]]


def _ansible_vault(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """`ansible-vault ARGS` from the project's environment, as an operator runs it."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH"
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(home / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(home / ".ansible" / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
    return subprocess.run(
        [uv, "run", "--frozen", "ansible-vault", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=ANSIBLE_TIMEOUT_S,
        check=False,
    )


def _password_file(folder: Path, text: str = PASSWORD + "\n") -> Path:
    path = folder / "vault-password"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def issued(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh inventory directory with its vault issued: (the directory, the file)."""
    inventory = tmp_path / "inventory"
    path, written = ensure_vault(inventory, PASSWORD)
    assert written
    return inventory, path


# --- issuing ------------------------------------------------------------------------------


def test_a_fresh_inventory_gets_an_encrypted_private_vault(issued: tuple[Path, Path]) -> None:
    inventory, path = issued
    assert path == inventory / "group_vars" / "all" / "vault.yml"
    assert path.read_bytes().startswith(HEADER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Nothing else lands beside it (no temporary file Ansible would read as variables).
    assert sorted(p.name for p in path.parent.iterdir()) == ["vault.yml"]


def test_the_vault_holds_every_secret_the_roles_write_all_distinct(
    issued: tuple[Path, Path],
) -> None:
    _inventory, path = issued
    document = decrypt(path, PASSWORD)
    assert set(document) == {"yardarm_secrets"}
    secrets = document["yardarm_secrets"]
    assert set(secrets) == {"tokens", "peer_secret", "postgres_password"}
    assert set(secrets["tokens"]) == set(PRINCIPALS)
    values = _values(document)
    assert all(isinstance(value, str) and len(value) >= 32 for value in values), values
    assert len(set(values)) == len(values) == len(PRINCIPALS) + 2


def test_no_secret_is_in_the_file_in_plain_text(issued: tuple[Path, Path]) -> None:
    _inventory, path = issued
    raw = path.read_bytes()
    for value in _values(decrypt(path, PASSWORD)):
        assert value.encode() not in raw
    assert b"yardarm_secrets" not in raw


def test_every_inventory_gets_secrets_of_its_own(tmp_path: Path) -> None:
    first, _ = ensure_vault(tmp_path / "a", PASSWORD)
    second, _ = ensure_vault(tmp_path / "b", PASSWORD)
    assert not set(_values(decrypt(first, PASSWORD))) & set(_values(decrypt(second, PASSWORD)))
    assert set(_values(new_secrets())).isdisjoint(_values(decrypt(first, PASSWORD)))


def test_a_second_run_keeps_the_vault_byte_for_byte(issued: tuple[Path, Path]) -> None:
    inventory, path = issued
    before = path.read_bytes()
    again, written = ensure_vault(inventory, PASSWORD)
    assert (again, written) == (path, False)
    assert path.read_bytes() == before


# --- refusals -----------------------------------------------------------------------------


def test_a_wrong_password_is_refused_and_the_vault_kept(issued: tuple[Path, Path]) -> None:
    inventory, path = issued
    before = path.read_bytes()
    with pytest.raises(VaultError, match="does not open with this vault password") as caught:
        ensure_vault(inventory, "not the password")
    assert "remove the file to issue new secrets" in str(caught.value)
    with pytest.raises(VaultError, match="does not open with this vault password"):
        decrypt(path, "not the password")
    assert path.read_bytes() == before


def test_a_plaintext_vault_file_is_refused_with_how_to_encrypt_it(tmp_path: Path) -> None:
    path = tmp_path / VAULT_FILE
    path.parent.mkdir(parents=True)
    plain = yaml.safe_dump(new_secrets())
    path.write_text(plain)
    with pytest.raises(VaultError, match="is not encrypted") as caught:
        ensure_vault(tmp_path, PASSWORD)
    assert f"`ansible-vault encrypt {path}`" in str(caught.value)
    assert path.read_text() == plain


def test_a_vault_without_the_secrets_is_refused(tmp_path: Path) -> None:
    password = _password_file(tmp_path)
    path = tmp_path / VAULT_FILE
    path.parent.mkdir(parents=True)
    path.write_text("something_else: 1\n")
    done = _ansible_vault(
        "encrypt", "--vault-password-file", str(password), str(path), home=tmp_path
    )
    assert done.returncode == 0, done.stderr
    with pytest.raises(VaultError, match="holds no yardarm_secrets: remove it"):
        ensure_vault(tmp_path, PASSWORD)


def test_an_empty_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="the vault password is empty"):
        ensure_vault(tmp_path, "")
    assert not (tmp_path / VAULT_FILE).exists()


@pytest.mark.parametrize("text", ["", "\n", "   \n\n"])
def test_an_empty_password_file_is_refused(tmp_path: Path, text: str) -> None:
    path = _password_file(tmp_path, text)
    with pytest.raises(VaultError, match=f"the vault password file {path} is empty"):
        read_password(path)


def test_a_missing_password_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"
    with pytest.raises(
        VaultError, match=f"cannot read the vault password file {path}: No such file"
    ):
        read_password(path)


def test_the_password_file_is_read_as_ansible_reads_it(tmp_path: Path) -> None:
    assert read_password(_password_file(tmp_path, f"  {PASSWORD}  \n")) == PASSWORD
    assert read_password(_password_file(tmp_path, PASSWORD)) == PASSWORD


# --- Ansible's own reading ----------------------------------------------------------------


def test_ansible_vault_reads_the_same_secrets(tmp_path: Path) -> None:
    # Written with the password as the command reads it from a file with surrounding
    # blanks; ansible-vault strips them the same way.
    password = _password_file(tmp_path, f" {PASSWORD} \n")
    inventory = tmp_path / "inventory"
    path, _ = ensure_vault(inventory, read_password(password))
    done = _ansible_vault("view", "--vault-password-file", str(password), str(path), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout) == decrypt(path, PASSWORD)
    other = tmp_path / "other"
    other.mkdir()
    wrong = _password_file(other, "another password\n")
    refused = _ansible_vault("view", "--vault-password-file", str(wrong), str(path), home=tmp_path)
    assert refused.returncode != 0


def test_a_file_ansible_vault_encrypts_is_kept(tmp_path: Path) -> None:
    """Following the plaintext refusal's advice (`ansible-vault encrypt`) gives a vault
    the command keeps, with the secrets it held."""
    password = _password_file(tmp_path)
    path = tmp_path / VAULT_FILE
    path.parent.mkdir(parents=True)
    secrets = new_secrets()
    path.write_text(yaml.safe_dump(secrets))
    done = _ansible_vault(
        "encrypt", "--vault-password-file", str(password), str(path), home=tmp_path
    )
    assert done.returncode == 0, done.stderr
    encrypted = path.read_bytes()
    assert encrypted.startswith(HEADER)
    assert ensure_vault(tmp_path, PASSWORD) == (path, False)
    assert path.read_bytes() == encrypted
    assert decrypt(path, PASSWORD) == secrets
