"""The wheelhouse the images install from, so no build reaches an index.

The workspace's wheels are built fresh on every run that builds an image (`uv build`);
the third-party ones are the versions uv.lock pins (`uv export`), downloaded once as
binary wheels for CPython 3.11 on manylinux x86_64 and kept under the cache for the next
runs (their extension modules stripped of debug information when the host has
`strip`). Each image gets only the wheels its own package requires (`select_wheels`),
so its build context stays small and pip, resolving from the package's metadata with
`--no-index`, can install nothing else.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yardarm.images.specs import ImagesError, ImageSpec

# pip runs from its own wheel inside the build stage (the base's pip, if any, is not
# used), and downloads the wheels on the host: one version for both.
PIP_VERSION = "26.3"
PYTHON = "3.11"
# Bookworm's glibc is 2.36: a manylinux wheel for any glibc up to it runs on the offline
# base and on python:3.11-slim. pip takes each platform tag literally (no older glibc
# implied), so every one is listed, the legacy aliases too.
GLIBC_MAX = 36
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MAX, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
# Part of every wheel image's input hash: a change here changes what gets installed.
FLAVOUR = f"cp311-manylinux_2_{GLIBC_MAX}_x86_64-pip{PIP_VERSION}"
COMMAND_TIMEOUT_S = 900.0  # a download of every locked wheel on a slow link

Runner = Callable[..., "subprocess.CompletedProcess[Any]"]


@dataclass(frozen=True)
class Requirement:
    """One pinned requirement from the lockfile's export."""

    name: str  # normalized (PEP 503)
    version: str
    marker: str | None = None  # for some platforms only (win32, PyPy): may have no wheel

    @property
    def line(self) -> str:
        pin = f"{self.name}=={self.version}"
        return f"{pin} ; {self.marker}" if self.marker else pin


PIP = Requirement("pip", PIP_VERSION)


def normalize(name: str) -> str:
    """A distribution's name as wheel files and indexes compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(text: str) -> list[Requirement]:
    """The pins of `uv export` output (`name==version ; marker` lines)."""
    requirements = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "-")):
            continue
        spec, _, marker = line.partition(";")
        name, pinned, version = spec.strip().partition("==")
        if not pinned or not version.strip():
            raise ImagesError(f"the lockfile export has an unpinned requirement: {line!r}")
        requirements.append(
            Requirement(normalize(name.strip()), version.strip(), marker.strip() or None)
        )
    return requirements


def wheel_key(path: Path) -> tuple[str, str]:
    """A wheel file's (normalized name, version), from its name (PEP 427)."""
    parts = path.name.removesuffix(".whl").split("-")
    if len(parts) < 5:
        raise ImagesError(f"{path.name} is not a wheel's file name")
    return normalize(parts[0]), parts[1]


def _same_version(left: str, right: str) -> bool:
    """Versions as a wheel file names them and as the lock does (an epoch `N!` is not
    always in the file name)."""
    return left.split("!")[-1].lower() == right.split("!")[-1].lower()


def select_wheels(requirements: Iterable[Requirement], wheels: Iterable[Path]) -> list[Path]:
    """The wheel of each requirement. A requirement for other platforms only (a marker,
    and no wheel was downloaded for it) is left out; any other one missing is an error,
    said here rather than as pip's "no matching distribution" inside a build."""
    available: dict[str, list[tuple[str, Path]]] = {}
    for wheel in sorted(wheels):
        name, version = wheel_key(wheel)
        available.setdefault(name, []).append((version, wheel))
    chosen: list[Path] = []
    missing: list[str] = []
    for requirement in requirements:
        match = next(
            (
                wheel
                for version, wheel in available.get(requirement.name, [])
                if _same_version(version, requirement.version)
            ),
            None,
        )
        if match is not None:
            if match not in chosen:
                chosen.append(match)
        elif requirement.marker is None:
            missing.append(requirement.line)
    if missing:
        raise ImagesError(
            f"no wheel for {', '.join(missing)}",
            "run `yardarm images build` with PyPI reachable once, to download them",
        )
    return chosen


def _shared_object(name: str) -> bool:
    """An extension module the wheel's own build made. Libraries auditwheel grafted in
    (`<package>.libs/`) are left alone: patchelf rewrote them, and they come stripped."""
    top = name.split("/", 1)[0]
    return (name.endswith(".so") or ".so." in name) and not top.endswith(".libs")


def _record_line(path: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path, f"sha256={digest}", str(len(data))]


def strip_wheel(wheel: Path, strip: str) -> int:
    """Remove the debug information from the wheel's extension modules (`strip
    --strip-debug`: the code and its symbols stay), rewriting the wheel and its RECORD;
    the bytes saved. Many manylinux wheels ship it: uvloop's module alone is 13 MB with
    it and 2 MB without, which an image would carry for nothing."""
    with zipfile.ZipFile(wheel) as source:
        members = [info for info in source.infolist() if _shared_object(info.filename)]
        if not members:
            return 0
        slimmer: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory(prefix="strip-") as tmp:
            for number, info in enumerate(members):
                data = source.read(info)
                file = Path(tmp) / str(number)
                file.write_bytes(data)
                done = subprocess.run(
                    [strip, "--strip-debug", str(file)], capture_output=True, check=False
                )
                stripped = file.read_bytes()
                if done.returncode == 0 and len(stripped) < len(data):
                    slimmer[info.filename] = stripped
        if not slimmer:
            return 0
        rewritten = wheel.with_name(f".{wheel.name}.tmp")
        with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                data = slimmer.get(info.filename) or source.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    data = _rewrite_record(data, slimmer)
                target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    saved = wheel.stat().st_size - rewritten.stat().st_size
    os.replace(rewritten, wheel)
    return saved


def _rewrite_record(record: bytes, changed: dict[str, bytes]) -> bytes:
    """RECORD with the hash and size of each changed file (PEP 376, as csv)."""
    rows = list(csv.reader(io.StringIO(record.decode())))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        if row and row[0] in changed:
            row = _record_line(row[0], changed[row[0]])
        writer.writerow(row)
    return out.getvalue().encode()


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Wheelhouse:
    """The wheels of one run: the workspace's (built on first use, in `workspace/`) and
    the locked third-party ones (kept across runs in `wheels/`)."""

    def __init__(self, root: Path, cache: Path, run: Runner = subprocess.run) -> None:
        self.root = root
        self.third_party = cache / "wheels"
        self.workspace = cache / "workspace"
        self._run = run
        self._requirements: dict[str, list[Requirement]] = {}
        self._built: dict[str, Path] = {}
        # Requirements pip skipped for their markers (not for this platform): not asked
        # for again on every run.
        self._skipped = self.third_party / "skipped.txt"

    def _uv(self) -> str:
        uv = shutil.which("uv")
        if uv is None:
            raise ImagesError(
                "uv is not on PATH (it builds the wheels and exports the lockfile)",
                "install uv: https://docs.astral.sh/uv/getting-started/installation/",
            )
        return uv

    def _call(self, command: list[str], what: str, hint: str) -> str:
        try:
            done = self._run(
                command,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ImagesError(f"{what} took over {COMMAND_TIMEOUT_S:.0f} s", hint) from exc
        if done.returncode != 0:
            raise ImagesError(f"{what} failed:\n{_tail(done.stderr or done.stdout)}", hint)
        return str(done.stdout)

    def requirements(self, package: str) -> list[Requirement]:
        """The third-party pins `package` needs at run time, as uv.lock resolves them."""
        if package not in self._requirements:
            text = self._call(
                [
                    self._uv(), "export", "--frozen", "--no-dev", "--no-default-groups",
                    "--no-hashes", "--no-emit-workspace", "--no-header", "--no-annotate",
                    "--package", package,
                ],
                f"`uv export --package {package}`",
                "check that uv.lock is up to date: `uv lock --check`",
            )  # fmt: skip
            self._requirements[package] = parse_requirements(text)
        return self._requirements[package]

    def _downloaded(self) -> set[tuple[str, str]]:
        keys = set()
        for wheel in self.third_party.glob("*.whl"):
            name, version = wheel_key(wheel)
            keys.add((name, version.split("!")[-1].lower()))
        return keys

    def download(self, requirements: Iterable[Requirement]) -> None:
        """Download the wheels not downloaded yet (none: no network at all)."""
        self.third_party.mkdir(parents=True, exist_ok=True)
        have = self._downloaded()
        skipped = set(self._skipped.read_text().splitlines()) if self._skipped.is_file() else set()
        missing: list[Requirement] = []
        for requirement in [PIP, *requirements]:
            key = (requirement.name, requirement.version.split("!")[-1].lower())
            if key not in have and requirement.line not in skipped and requirement not in missing:
                missing.append(requirement)
        if not missing:
            return
        before = set(self.third_party.glob("*.whl"))
        listing = self.third_party / "requirements.txt"
        listing.write_text("".join(f"{requirement.line}\n" for requirement in missing))
        self._call(
            [
                self._uv(), "tool", "run", "--python", PYTHON, "--from", f"pip=={PIP_VERSION}",
                "pip", "download", "--quiet", "--disable-pip-version-check",
                "--only-binary=:all:", "--no-deps", "--python-version", PYTHON,
                "--implementation", "cp", "--abi", "cp311",
                *(option for platform in PLATFORMS for option in ("--platform", platform)),
                "--dest", str(self.third_party), "--requirement", str(listing),
            ],
            "downloading the locked wheels",
            f"check that PyPI is reachable, or put the wheels in {self.third_party}",
        )  # fmt: skip
        strip = shutil.which("strip")  # binutils; without it the images are larger
        if strip is not None:
            for wheel in sorted(set(self.third_party.glob("*.whl")) - before):
                strip_wheel(wheel, strip)
        have = self._downloaded()
        newly_skipped = [
            requirement.line
            for requirement in missing
            if requirement.marker is not None
            and (requirement.name, requirement.version.split("!")[-1].lower()) not in have
        ]
        if newly_skipped:
            lines = sorted(skipped.union(newly_skipped))
            self._skipped.write_text("".join(f"{line}\n" for line in lines))

    def build_members(self, members: Iterable[str]) -> dict[str, Path]:
        """Each workspace member's wheel, built from the tree as it is now."""
        if not self._built:
            shutil.rmtree(self.workspace, ignore_errors=True)  # no wheel of a past run
        self.workspace.mkdir(parents=True, exist_ok=True)
        wheels = {}
        for member in members:
            if member not in self._built:
                self._call(
                    [
                        self._uv(), "build", "--wheel", "--package", member, "--quiet",
                        "--no-create-gitignore", "--out-dir", str(self.workspace),
                    ],
                    f"`uv build --package {member}`",
                    f"fix the package, then try `uv build --wheel --package {member}`",
                )  # fmt: skip
                built = [
                    wheel
                    for wheel in self.workspace.glob("*.whl")
                    if wheel_key(wheel)[0] == normalize(member)
                ]
                if len(built) != 1:
                    raise ImagesError(f"`uv build --package {member}` made no single wheel")
                self._built[member] = built[0]
            wheels[member] = self._built[member]
        return wheels

    def third_party_wheels(self, spec: ImageSpec) -> list[Path]:
        """The downloaded wheels `spec`'s package requires, and pip's."""
        assert spec.package is not None, f"{spec.name} installs no wheels"
        return select_wheels(
            [PIP, *self.requirements(spec.package)], self.third_party.glob("*.whl")
        )

    def prepare(self, specs: Iterable[ImageSpec]) -> None:
        """Download what these images need in one go, and build their workspace wheels."""
        wheel_specs = [spec for spec in specs if spec.package is not None]
        requirements: list[Requirement] = []
        for spec in wheel_specs:
            assert spec.package is not None
            requirements.extend(self.requirements(spec.package))
        self.download(requirements)
        for spec in wheel_specs:
            self.build_members(spec.members)

    def wheels_for(self, spec: ImageSpec) -> list[Path]:
        """Every wheel `spec`'s build context holds."""
        return [*self.build_members(spec.members).values(), *self.third_party_wheels(spec)]
