"""Every `yardarm` command pays for the CLI's imports before it does anything.

`yardarm --help` and `yardarm status` answer within a fraction of a second only while
building the CLI imports none of the client, server and telemetry libraries the other
commands and the services need. These tests say which modules load, not how long they
take, so a noisy machine cannot fail them: each runs in a fresh interpreter, where
nothing was imported before.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from yardarm.chaos import commands as chaos_commands
from yardarm.chaos import config as chaos_config

# Each costs a tenth of a second or more to import, with its dependencies.
CLIENT_LIBRARIES = {
    "aiohttp",
    "asyncpg",
    "cryptography",
    "httpx",
    "nats",
    "opentelemetry",
    "prometheus_client",
}
# Only the commands that read or render the deployment model need pydantic.
HEAVY_FOR_HELP = CLIENT_LIBRARIES | {"pydantic"}
PROBE_TIMEOUT_S = 120.0  # an import takes seconds on a loaded machine; a hang takes forever


@dataclass(frozen=True)
class Probe:
    modules: set[str]  # top-level packages imported by the end
    exit_code: int | None  # the CLI's exit status, when the code ran it
    output: str


def _probe(code: str) -> Probe:
    """Run `code` in a fresh interpreter; report the top-level packages it left imported."""
    script = (
        "import json, sys\n"
        f"{code}\n"
        "print(json.dumps({'modules': sorted({m.split('.')[0] for m in sys.modules}),"
        " 'exit': globals().get('exit_code')}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=True,
    )
    *output, last = done.stdout.splitlines()
    report = json.loads(last)
    return Probe(set(report["modules"]), report["exit"], "\n".join(output))


def _run_cli(*args: str) -> str:
    """Probe code that runs `yardarm ARGS` in-process and keeps its exit status."""
    return (
        "from yardarm import cli\n"
        f"sys.argv = ['yardarm', *{list(args)!r}]\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit as exc:\n"
        "    exit_code = exc.code\n"
    )


def test_importing_the_cli_loads_no_client_library_nor_pydantic() -> None:
    probe = _probe("import yardarm.cli")
    assert sorted(probe.modules & HEAVY_FOR_HELP) == []


def test_help_loads_no_client_library_nor_pydantic() -> None:
    probe = _probe(_run_cli("--help"))
    assert probe.exit_code == 0
    assert "Deploy and observe the yardarm service stack." in probe.output
    assert sorted(probe.modules & HEAVY_FOR_HELP) == []


def test_status_without_a_stack_loads_no_client_library(tmp_path: Path) -> None:
    probe = _probe(_run_cli("status", "--home", str(tmp_path)))
    assert probe.exit_code == 1
    assert "no stack here" in probe.output
    assert sorted(probe.modules & CLIENT_LIBRARIES) == []


@pytest.mark.parametrize("package", ["yardarm_kit", "yardarm.chaos"])
def test_lazy_reexports_resolve_to_their_definitions(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        source = importlib.import_module(f"{package}.{module._SOURCES[name]}")
        assert getattr(module, name) is getattr(source, name), name
    with pytest.raises(AttributeError):
        module.NoSuchName  # noqa: B018


def test_a_kit_submodule_is_still_importable_from_the_package() -> None:
    from yardarm_kit import tls

    assert isinstance(tls, ModuleType)
    assert tls is importlib.import_module("yardarm_kit.tls")


def test_the_chaos_delay_bound_is_the_controllers() -> None:
    assert chaos_commands.MAX_DELAY_MS == chaos_config.MAX_DELAY_MS
