"""Bare-metal test hosts: three containers of the host image (sshd under supervisord,
Debian bookworm) that Ansible reaches over real SSH on 127.0.0.1, once per session.

The image comes from YARDARM_IMAGE_HOST (`yardarm/host:bookworm`, built by `yardarm images
build --offline --only host`; no registry has it). Without Docker or the image the tests
skip, saying what to run; with YARDARM_REQUIRE_DOCKER=1 (CI) they fail instead, as the
integration tests do. The hosts share a Docker network of their own, where each one
reaches the others by container name, as machines on a LAN would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from docker.errors import DockerException, ImageNotFound, NotFound  # type: ignore[import-untyped]
from requests.exceptions import RequestException

from tests.integration.conftest import _unavailable, require_docker
from yardarm.baremetal.hosts import HostList
from yardarm.baremetal.inventory import INVENTORY_FILE, render_inventory
from yardarm.baremetal.target import place
from yardarm.baremetal.vault import VAULT_FILE, ensure_vault
from yardarm.baremetal.wheelhouse import gather
from yardarm.images.build import ImageResult
from yardarm.images.specs import ImagesError
from yardarm.model import Topology, deployment

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
IMAGE_VARIABLE = "YARDARM_IMAGE_HOST"
DEFAULT_IMAGE = "yardarm/host:bookworm"
BUILD_COMMAND = "uv run yardarm images build --offline --only host"
HOST_COUNT = 3
SSH_PORT = 22
HTTP_PORT = 80  # HAProxy's, published too: the tests' requests enter there
LOGIN_USER = "deploy"  # the image's login user (sudo without a password)
SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
# sshd answers about a second after the container starts; a busy machine is slower.
SSH_READY_TIMEOUT_S = 60.0
DOCKER_TIMEOUT_S = 30
DOCKER_RM_TIMEOUT_S = 120
# A whole converge from scratch installs the yardarm venv (about 80 wheels) on each host.
ANSIBLE_TIMEOUT_S = 600.0
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class SshHost:
    """One host as Ansible reaches it (`address`:`port` as `user` with `key`) and as its
    peers on the hosts' network do (`peer_address`); `http_port` is its port 80 as
    published on 127.0.0.1."""

    name: str
    address: str
    port: int
    user: str
    key: Path
    peer_address: str
    container: str
    http_port: int

    @property
    def inventory_line(self) -> str:
        return (
            f"{self.name} ansible_host={self.address} ansible_port={self.port}"
            f" ansible_user={self.user} ansible_ssh_private_key_file={self.key}"
            f" ansible_ssh_common_args='{SSH_OPTIONS}'"
        )


def _key_pair(folder: Path) -> tuple[Path, str]:
    """A fresh ed25519 key (the private key file, 0600 as ssh wants it) and its public
    half in authorized_keys form."""
    private = Ed25519PrivateKey.generate()
    key = folder / "id_ed25519"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return key, f"{public.decode()} yardarm-tests"


def _require_host_image(client: docker.DockerClient) -> str:
    image = os.environ.get(IMAGE_VARIABLE) or DEFAULT_IMAGE
    try:
        client.images.get(image)
    except ImageNotFound:
        _unavailable(
            f"image {image} ({IMAGE_VARIABLE}) is not built: run `{BUILD_COMMAND}`"
            f" (no registry has it)"
        )
    return image


def _published_port(container: Any, port: int = SSH_PORT) -> int:
    deadline = time.monotonic() + DOCKER_TIMEOUT_S
    while True:
        container.reload()
        bindings = (container.ports or {}).get(f"{port}/tcp") or []
        if bindings:
            return int(bindings[0]["HostPort"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"{container.name} has no published SSH port")
        time.sleep(0.1)


def ssh_command(host: SshHost, *command: str) -> list[str]:
    """The ssh command line running `command` on `host` as its login user."""
    ssh = shutil.which("ssh")
    if ssh is None:
        _unavailable("no ssh client on PATH (Debian: apt-get install openssh-client)")
    return [
        ssh, "-i", str(host.key), "-p", str(host.port), *SSH_OPTIONS.split(),
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR",
        f"{host.user}@{host.address}", *command,
    ]  # fmt: skip


def _wait_for_ssh(host: SshHost, container: Any) -> None:
    """Until a key login on `host` runs a command, or fail after SSH_READY_TIMEOUT_S."""
    deadline = time.monotonic() + SSH_READY_TIMEOUT_S
    while True:
        done = subprocess.run(
            ssh_command(host, "true"), capture_output=True, text=True, timeout=15, check=False
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            logs = container.logs(tail=20).decode(errors="replace")
            raise TimeoutError(
                f"no SSH login on {host.name} (127.0.0.1:{host.port}) within"
                f" {SSH_READY_TIMEOUT_S:.0f} s: {done.stderr.strip()}\n{logs}"
            )
        time.sleep(0.3)


@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SshHost]]:
    """Three running hosts reachable over SSH with the session's own key; their
    containers and network are removed at the end."""
    client = require_docker()
    image = _require_host_image(client)
    folder = tmp_path_factory.mktemp("ssh")
    key, public = _key_pair(folder)
    suffix = uuid.uuid4().hex[:8]
    network = client.networks.create(f"yardarm-hosts-{suffix}", driver="bridge")
    containers: list[Any] = []
    try:
        for index in range(1, HOST_COUNT + 1):
            name = f"yardarm-host-{suffix}-{index}"
            containers.append(
                client.containers.run(
                    image,
                    detach=True,
                    name=name,
                    hostname=f"host{index}",
                    environment={"SSH_AUTHORIZED_KEYS": public},
                    network=network.name,
                    ports={
                        f"{SSH_PORT}/tcp": ("127.0.0.1", None),
                        f"{HTTP_PORT}/tcp": ("127.0.0.1", None),
                        **{
                            f"{port}/tcp": ("127.0.0.1", port)
                            for port in control_ports().get(f"host{index}", [])
                        },
                    },
                    labels={"org.yardarm.tests": "baremetal"},
                )
            )
        found = [
            SshHost(
                name=f"host{index}",
                address="127.0.0.1",
                port=_published_port(container),
                user=LOGIN_USER,
                key=key,
                peer_address=str(container.name),
                container=str(container.name),
                http_port=_published_port(container, HTTP_PORT),
            )
            for index, container in enumerate(containers, start=1)
        ]
        for host, container in zip(found, containers, strict=True):
            _wait_for_ssh(host, container)
        yield found
    finally:
        # Also one that was created but failed to start (a port taken, say).
        with contextlib.suppress(DockerException, RequestException):
            listed = client.containers.list(all=True, filters={"name": f"yardarm-host-{suffix}-"})
            containers += [c for c in listed if c.id not in {k.id for k in containers}]
        for container in containers:
            try:
                container.remove(force=True)
            except NotFound:
                pass
            except (DockerException, RequestException):
                # The API's 10 s read timeout on a busy machine: the CLI waits it out.
                subprocess.run(
                    ["docker", "rm", "-f", container.name],
                    capture_output=True, timeout=DOCKER_RM_TIMEOUT_S, check=False,
                )  # fmt: skip
        with contextlib.suppress(NotFound, DockerException):
            network.remove()
        client.close()


# The stack the tests converge: two gateways behind HAProxy, as the roles expect of a
# real environment (one gateway host can then restart without refusing a request), and
# the gateways' retries off, so a request sent to a stopping instance would fail (the
# rolling upgrade must drain instead).
STACK_CONFIG = """\
environment: baremetal
base_port: 28000
services:
  gateway:
    replicas: 2
    upstreams:
      orders:
        retry:
          enabled: false
      datastore:
        retry:
          enabled: false
"""
# The shared parts spread over the hosts (the default puts them all on the first).
PLACE = {"haproxy": "host3", "postgres": "host2", "prometheus": "host3"}
VAULT_PASSWORD = "correct horse battery staple"


def control_ports() -> dict[str, list[int]]:
    """The ports the rollout controller reaches on each test host, by host name: the
    datastore replicas', the gateways' admin ports and Prometheus'. Each is published
    on 127.0.0.1 at the same number (the model gives every listener of the stack a port
    of its own), so `control_address: 127.0.0.1` reaches all of them on loopback."""
    topology = Topology.model_validate(yaml.safe_load(STACK_CONFIG))
    names = HostList.model_validate(
        {"hosts": [{"name": f"host{i}", "address": f"host{i}"} for i in range(1, HOST_COUNT + 1)]}
    )
    planned = deployment(topology)
    placement = place(planned, names, PLACE)
    found: dict[str, list[int]] = {}
    for inst in planned.of("datastore"):
        found.setdefault(placement.instances[inst.name].name, []).append(
            topology.datastore_port(inst.ordinal)
        )
    for inst in planned.of("gateway"):
        found.setdefault(placement.instances[inst.name].name, []).append(
            topology.gateway_admin_port(inst.ordinal)
        )
    found.setdefault(placement.shared["prometheus"].name, []).append(topology.prometheus_port)
    return found


@dataclass(frozen=True)
class StackInventory:
    """The rendered inventory of the test stack (`path`, its inventory.yml) and what
    ansible-playbook needs besides: the vault password's file and SSH settings."""

    directory: Path
    vault_password_file: Path
    key: Path
    topology: Topology
    hosts: HostList

    @property
    def path(self) -> Path:
        return self.directory / INVENTORY_FILE

    def write(self, topology: Topology, folder: Path) -> None:
        for relative, text in render_inventory(topology, self.hosts, PLACE).items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def rendered(self, topology: Topology, name: str) -> StackInventory:
        """The same hosts and secrets for another model, in a folder of its own."""
        folder = self.directory.parent / name
        self.write(topology, folder)
        vault = folder / VAULT_FILE
        vault.write_bytes((self.directory / VAULT_FILE).read_bytes())
        return dataclasses.replace(self, directory=folder, topology=topology)

    def settings(self) -> dict[str, str]:
        """The ANSIBLE_* variables that reach the test hosts."""
        return {
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key),
            "ANSIBLE_SSH_COMMON_ARGS": SSH_OPTIONS,
            "ANSIBLE_VAULT_PASSWORD_FILE": str(self.vault_password_file),
        }


def host_list(hosts: list[SshHost]) -> HostList:
    """The test hosts as a host list: the stack dials each by its container name on
    the hosts' network; Ansible connects through its published SSH port, the rollout
    controller through the published control ports (`control_ports`)."""
    return HostList.model_validate(
        {
            "hosts": [
                {
                    "name": host.name,
                    "address": host.peer_address,
                    "ssh_address": host.address,
                    "control_address": host.address,
                    "ssh_port": host.port,
                    "user": host.user,
                }
                for host in hosts
            ]
        }
    )


@pytest.fixture(scope="session")
def inventory(hosts: list[SshHost], tmp_path_factory: pytest.TempPathFactory) -> StackInventory:
    """The test stack's inventory, rendered from the model as `yardarm ansible inventory`
    renders it, with its secrets in an ansible-vault file."""
    folder = tmp_path_factory.mktemp("inventory")
    password = folder.parent / "vault-password"
    password.write_text(VAULT_PASSWORD + "\n")
    password.chmod(0o600)
    topology = Topology.model_validate(yaml.safe_load(STACK_CONFIG))
    stack = StackInventory(folder, password, hosts[0].key, topology, host_list(hosts))
    stack.write(topology, folder)
    ensure_vault(folder, VAULT_PASSWORD)
    return stack


class _Quiet:
    """Progress of the wheel gathering: nothing to show inside a test run."""

    def step(self, message: str) -> None:
        pass

    def image(self, result: ImageResult) -> None:
        pass


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheelhouse `yardarm ansible wheelhouse` writes (the workspace's wheels built
    from the tree, the locked third-party ones from the shared download cache)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    try:
        gather(ROOT, folder, _Quiet())
    except ImagesError as exc:
        pytest.fail(f"cannot gather the wheels: {exc.message} ({exc.hint})", pytrace=False)
    return folder


@dataclass(frozen=True)
class AnsibleRun:
    """One ansible command: its exit code, output, and time taken."""

    returncode: int
    output: str  # stdout and stderr
    seconds: float
    stdout: str

    def recap(self) -> dict[str, dict[str, int]]:
        """The PLAY RECAP's counts per host (`ok`, `changed`, `unreachable`, `failed`)."""
        return {
            match["host"]: {
                key: int(match[key]) for key in ("ok", "changed", "unreachable", "failed")
            }
            for match in RECAP.finditer(self.output)
        }


def run_ansible(
    program: str,
    *args: str,
    timeout: float = ANSIBLE_TIMEOUT_S,
    settings: dict[str, str] | None = None,
) -> AnsibleRun:
    """`uv run <program> ARGS` with the ansible folder's settings (and `settings`, more
    ANSIBLE_* variables), output captured."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        **(settings or {}),
    }
    started = time.monotonic()
    done = subprocess.run(
        [uv, "run", "--frozen", program, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return AnsibleRun(
        done.returncode,
        done.stdout + done.stderr,
        round(time.monotonic() - started, 1),
        done.stdout,
    )
