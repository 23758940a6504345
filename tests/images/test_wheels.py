"""Each image gets the wheels of its own package's dependencies and no others: pip, with
--no-index, can install only what the build context holds."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from yardarm.images.specs import MEMBERS, SERVICE_IMAGES, ImagesError
from yardarm.images.wheels import (
    PIP,
    Requirement,
    Wheelhouse,
    parse_requirements,
    select_wheels,
    strip_wheel,
    wheel_key,
)

ROOT = Path(__file__).resolve().parents[2]
SPECS = {spec.name: spec for spec in SERVICE_IMAGES}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    """The project's real lockfile, and an empty-file wheel for everything it pins."""
    cache = tmp_path_factory.mktemp("cache")
    house = Wheelhouse(ROOT, cache)
    (cache / "wheels").mkdir()
    for requirement in [PIP, *house.requirements("yardarm")]:
        if requirement.marker and "win32" in requirement.marker:
            continue  # pip downloads nothing for another platform
        name = requirement.name.replace("-", "_")
        version = requirement.version.split("!")[-1]
        (cache / "wheels" / f"{name}-{version}-py3-none-any.whl").write_bytes(b"")
    return house


def _names(house: Wheelhouse, image: str) -> set[str]:
    return {wheel_key(wheel)[0] for wheel in house.third_party_wheels(SPECS[image])}


def test_a_service_image_gets_its_own_dependencies_only(wheelhouse: Wheelhouse) -> None:
    orders = _names(wheelhouse, "orders")
    assert {"asyncpg", "nats-py", "aiohttp", "uvloop", "pydantic-settings", "pip"} <= orders
    assert not orders & {"httptools", "scipy", "typer", "rich", "pgserver", "pytest"}

    gateway = _names(wheelhouse, "gateway")
    assert "httptools" in gateway
    assert not gateway & {"asyncpg", "scipy"}  # the kit's postgres extra is not the gateway's

    datastore = _names(wheelhouse, "datastore")
    assert not datastore & {"asyncpg", "httptools", "scipy"}


def test_the_control_image_gets_the_control_planes_dependencies(wheelhouse: Wheelhouse) -> None:
    control = _names(wheelhouse, "control")
    assert {"scipy", "typer", "rich", "httpx", "asyncpg", "httptools"} <= control
    # Neither the dev group nor the observability one: the image runs, it does not test.
    assert not control & {"pytest", "mypy", "testcontainers", "grafana-foundation-sdk"}


def test_each_image_builds_the_workspace_wheels_it_installs() -> None:
    assert SPECS["orders"].members == ("yardarm-kit", "yardarm-orders")
    assert set(SPECS["control"].members) == set(MEMBERS)


def test_a_missing_wheel_is_named_before_any_build(tmp_path: Path) -> None:
    wheel = tmp_path / "aiohttp-3.14.5-cp311-cp311-manylinux2014_x86_64.whl"
    wheel.write_bytes(b"")
    requirements = [
        Requirement("aiohttp", "3.14.5"),
        Requirement("colorama", "0.4.6", "sys_platform == 'win32'"),  # not for Linux: skipped
    ]
    assert select_wheels(requirements, [wheel]) == [wheel]
    with pytest.raises(ImagesError, match=r"uvloop==0\.23\.0"):
        select_wheels([*requirements, Requirement("uvloop", "0.23.0")], [wheel])
    with pytest.raises(ImagesError, match=r"aiohttp==3\.14\.6"):  # another version will not do
        select_wheels([Requirement("aiohttp", "3.14.6")], [wheel])


def test_the_export_is_parsed_with_names_normalized_and_markers_kept() -> None:
    text = "Nats_Py==2.16.0\ncffi==2.1.1 ; platform_python_implementation != 'PyPy'\n\n"
    assert parse_requirements(text) == [
        Requirement("nats-py", "2.16.0"),
        Requirement("cffi", "2.1.1", "platform_python_implementation != 'PyPy'"),
    ]
    with pytest.raises(ImagesError, match="unpinned"):
        parse_requirements("aiohttp>=3.9\n")


def test_downloads_are_kept_and_not_asked_for_again(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def run(command: list[str], **_: object) -> object:
        calls.append(command)
        raise AssertionError("nothing to download: no command should run")

    house = Wheelhouse(tmp_path, tmp_path / "cache", run)  # type: ignore[arg-type]
    (tmp_path / "cache/wheels").mkdir(parents=True)
    for name in ("pip-26.3-py3-none-any.whl", "aiohttp-3.14.5-cp311-cp311-linux.whl"):
        (tmp_path / "cache/wheels" / name).write_bytes(b"")
    house.download([Requirement("aiohttp", "3.14.5")])
    assert calls == []


def test_extension_modules_lose_their_debug_information_and_record_stays_true(
    tmp_path: Path,
) -> None:
    gcc, strip = shutil.which("gcc"), shutil.which("strip")
    if gcc is None or strip is None:
        why = "needs gcc and strip (binutils) to make and strip a shared object"
        if os.environ.get("CI") == "true":  # CI must run it: images are stripped there
            pytest.fail(f"{why} (CI=true)")
        pytest.skip(why)
    source = tmp_path / "ext.c"
    source.write_text("int answer(void) { return 42; }\n")
    module = tmp_path / "ext.so"
    subprocess.run(
        [gcc, "-g3", "-O0", "-shared", "-fPIC", "-o", str(module), str(source)], check=True
    )
    data = module.read_bytes()
    wheel = tmp_path / "ext-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as out:
        out.writestr("ext/_ext.so", data)
        out.writestr("ext.libs/libgrafted.so.1", data)  # auditwheel's: left alone
        out.writestr("ext/__init__.py", "")
        out.writestr(
            "ext-1.0.dist-info/RECORD",
            f"ext/_ext.so,sha256=old,{len(data)}\next.libs/libgrafted.so.1,sha256=old,"
            f"{len(data)}\next/__init__.py,,0\next-1.0.dist-info/RECORD,,\n",
        )

    assert strip_wheel(wheel, strip) > 0
    with zipfile.ZipFile(wheel) as result:
        stripped = result.read("ext/_ext.so")
        assert len(stripped) < len(data)
        assert result.read("ext.libs/libgrafted.so.1") == data
        record = {
            row[0]: row
            for row in csv.reader(io.StringIO(result.read("ext-1.0.dist-info/RECORD").decode()))
        }
    digest = base64.urlsafe_b64encode(hashlib.sha256(stripped).digest()).rstrip(b"=").decode()
    assert record["ext/_ext.so"] == ["ext/_ext.so", f"sha256={digest}", str(len(stripped))]
    assert record["ext.libs/libgrafted.so.1"][1] == "sha256=old"
    assert strip_wheel(wheel, strip) == 0  # nothing left to strip: the wheel is not rewritten
