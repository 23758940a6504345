"""The launcher the roles' process managers run: a bad launch document stops it with a
clear message and EX_CONFIG (78, a restart will not help), and a good one becomes the
service itself (same process, `python -m yardarm_<service>`) with the document's
settings, shown here by a real datastore replica that answers /readyz on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from yardarm.baremetal.launch import LaunchError, read_document
from yardarm.local.render import LOOPBACK, LocalTarget, write_flags
from yardarm.model import SERVICE_NAMES, Topology, deployment, instance_settings

EX_USAGE = 64
EX_CONFIG = 78
PORT_RANGE = range(26000, 26940, 60)  # base ports: each stack's ports stay below 27000
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def _document(folder: Path, content: str) -> Path:
    path = folder / "launch.json"
    path.write_text(content)
    return path


def _launch(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "yardarm.baremetal.launch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- the document -------------------------------------------------------------------------


def test_a_good_document_gives_the_service_and_its_settings(tmp_path: Path) -> None:
    env = {"YARDARM_ORDERS_PORT": "8100", "YARDARM_ORDERS_PEERS": '{"2": {"raft": "x"}}'}
    path = _document(tmp_path, json.dumps({"service": "orders", "env": env}))
    assert read_document(path) == ("orders", env)
    for service in SERVICE_NAMES:
        path.write_text(json.dumps({"service": service, "env": {}}))
        assert read_document(path) == (service, {})


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "is not JSON"),
        ("{service: orders}", "is not JSON"),
        ('["orders", {}]', "must hold an object with `service` and `env`"),
        ('"orders"', "must hold an object with `service` and `env`"),
        ('{"env": {}}', "service must be one of datastore, orders, fulfillment, gateway"),
        ('{"service": "nats", "env": {}}', "service must be one of datastore, orders"),
        ('{"service": ["orders"], "env": {}}', "service must be one of"),
        ('{"service": "orders"}', "env must map names to strings"),
        ('{"service": "orders", "env": ["A=1"]}', "env must map names to strings"),
        ('{"service": "orders", "env": {"YARDARM_ORDERS_PORT": 8100}}', "env must map names"),
        ('{"service": "orders", "env": {"A": null}}', "env must map names to strings"),
        ('{"service": "orders", "env": {"A": {"b": "c"}}}', "env must map names to strings"),
    ],
)
def test_a_bad_document_is_refused_saying_why(tmp_path: Path, content: str, why: str) -> None:
    path = _document(tmp_path, content)
    with pytest.raises(LaunchError, match="^" + str(path)) as caught:
        read_document(path)
    assert why in str(caught.value)


def test_an_unreadable_document_is_refused_saying_why(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(LaunchError, match=f"cannot read {missing}: No such file or directory"):
        read_document(missing)
    with pytest.raises(LaunchError, match=f"cannot read {tmp_path}: Is a directory"):
        read_document(tmp_path)


# --- the command --------------------------------------------------------------------------


def test_a_bad_document_stops_the_launcher_with_ex_config(tmp_path: Path) -> None:
    path = _document(tmp_path, '{"service": "redis", "env": {}}')
    launched = _launch(str(path))
    out, err = launched.communicate(timeout=60)
    assert launched.returncode == EX_CONFIG, err
    assert err.strip() == (
        f"yardarm launch: {path}: service must be one of datastore, orders, fulfillment, gateway"
    )
    assert out == ""
    missing = tmp_path / "missing.json"
    launched = _launch(str(missing))
    _out, err = launched.communicate(timeout=60)
    assert launched.returncode == EX_CONFIG, err
    assert f"yardarm launch: cannot read {missing}" in err


@pytest.mark.parametrize("args", [[], ["a.json", "b.json"]])
def test_anything_but_one_file_is_a_usage_error(args: list[str]) -> None:
    launched = _launch(*args)
    _out, err = launched.communicate(timeout=60)
    assert launched.returncode == EX_USAGE, err
    assert err.strip() == "usage: python -m yardarm.baremetal.launch FILE"


# --- a real launch ------------------------------------------------------------------------


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _base_port() -> int:
    """A base port whose datastore-0 ports (HTTP and Raft) are free on loopback, and
    datastore-1's HTTP port (the decoy the environment names)."""
    for base in PORT_RANGE:
        topology = Topology(base_port=base)
        ports = [topology.datastore_port(0), topology.raft_port(0), topology.datastore_port(1)]
        if all(_free(port) for port in ports):
            return base
    pytest.fail(f"no free base port in {PORT_RANGE}")


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _stop(launched: subprocess.Popen[str]) -> None:
    """SIGTERM to the launched process, then SIGKILL to its whole session if it lingers
    (a launcher that ran the service as a child instead of becoming it left it there)."""
    launched.terminate()
    try:
        launched.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        launched.kill()
        launched.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(launched.pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux's /proc")
def test_the_launcher_becomes_the_service_with_the_documents_settings(tmp_path: Path) -> None:
    topology = Topology.model_validate(
        {"base_port": _base_port(), "services": {"datastore": {"replicas": 1}}}
    )
    planned = deployment(topology)
    home = tmp_path / "home"
    target = LocalTarget(planned, home, {})  # issues the stack's credentials in `home`
    write_flags(topology, home)
    datastore = planned.named("datastore-0")
    settings = instance_settings(planned, datastore, target)
    assert settings["YARDARM_DATASTORE_PEERS"] == "{}"
    assert Path(settings["YARDARM_DATASTORE_ACCESS_FILE"]).is_file()
    assert Path(settings["YARDARM_DATASTORE_PEER_TOKEN_FILE"]).is_file()
    path = _document(tmp_path, json.dumps({"service": "datastore", "env": settings}))
    # The document's settings win over what the process manager's environment holds.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("YARDARM_", "OTEL_"))},
        "YARDARM_DATASTORE_INSTANCE": "not-from-the-document",
        "YARDARM_DATASTORE_PORT": str(topology.datastore_port(1)),
        "YARDARM_DATASTORE_DATA_DIR": str(tmp_path / "not-from-the-document"),
    }
    ready = f"http://{LOOPBACK}:{topology.datastore_port(0)}/readyz"
    decoy = f"http://{LOOPBACK}:{topology.datastore_port(1)}/readyz"
    assert _status(ready) is None, f"something already answers {ready}"
    log = tmp_path / "service.log"
    with log.open("w") as output:
        launched = subprocess.Popen(
            [sys.executable, "-m", "yardarm.baremetal.launch", str(path)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while _status(ready) != 200:
            if launched.poll() is not None:
                tail = log.read_text()[-3000:]
                pytest.fail(f"the service exited {launched.returncode}:\n{tail}")
            assert _status(decoy) is None, "the service took the environment's port"
            assert time.monotonic() < deadline, f"{ready} not 200 in {READY_TIMEOUT_S:.0f} s"
            time.sleep(0.1)
        # The launcher replaced itself: the process it started is the service.
        assert _cmdline(launched.pid) == [sys.executable, "-m", "yardarm_datastore"]
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{launched.pid}/environ").read_text().split("\0")
            if "=" in item
        )
        assert {key: environ.get(key) for key in settings} == settings
        # Its data went where the document said.
        assert any(Path(settings["YARDARM_DATASTORE_DATA_DIR"]).iterdir())
        assert not (tmp_path / "not-from-the-document").exists()
        launched.terminate()
        assert launched.wait(timeout=STOP_TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        _stop(launched)
