"""Build the images with the docker CLI, each only when its inputs have changed.

An image's inputs are its Dockerfile, the files of the packages it contains (the files
git tracks or would track: untracked ones too, ignored ones not), uv.lock, the base
image's id and the build arguments. Their sha256 is stored on the image as the label
`org.yardarm.inputs`; when the tagged image already carries the same one the image is
skipped before any wheel is built, so a second run on an unchanged tree builds nothing.

The cache (the kept wheel downloads, each image's build context and its build log)
lives in `.yardarm/images/` in the source tree, beside a local stack's default state
(ignored by git); `yardarm down --purge` of that stack removes it too, which only costs a
download on the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from yardarm.images.base import OFFLINE_BASE, check_tools, make_offline_base
from yardarm.images.specs import ImagesError, ImageSpec, select, source_root
from yardarm.images.wheels import FLAVOUR, Runner, Wheelhouse

LABEL = "org.yardarm.inputs"
HASH_FORMAT = b"yardarm-images/1"  # bump when what the hash covers changes
CACHE_DIR = Path(".yardarm/images")
DOCKER_TIMEOUT_S = 120.0  # inspect, tag, info
PULL_TIMEOUT_S = 900.0
BUILD_TIMEOUT_S = 1800.0  # an image installing Postgres on a slow mirror
DOCKER_HINT = "install Docker and start the daemon"
# Folders never part of an image, when the tree is not a git checkout.
UNTRACKED = {".git", ".venv", ".yardarm", "__pycache__", ".mypy_cache", ".ruff_cache"}


@dataclass(frozen=True)
class ImageInfo:
    """What `docker image inspect` says of an image."""

    id: str
    size: int
    labels: dict[str, str]


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Docker:
    """The docker CLI, for the few things a build needs."""

    def __init__(self, run: Runner = subprocess.run) -> None:
        self._run = run

    @property
    def binary(self) -> str:
        docker = shutil.which("docker")
        if docker is None:
            raise ImagesError("docker is not installed (no `docker` on PATH)", DOCKER_HINT)
        return docker

    def _call(
        self, *args: str, timeout: float = DOCKER_TIMEOUT_S
    ) -> subprocess.CompletedProcess[Any]:
        try:
            return self._run(
                [self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ImagesError(
                f"`docker {args[0]}` did not answer within {timeout:.0f} s", DOCKER_HINT
            ) from exc

    def check(self) -> None:
        """Fail, saying what to do, unless a daemon answers."""
        done = self._call("info", "--format", "{{.ServerVersion}}")
        if done.returncode != 0 or not done.stdout.strip():
            why = _tail(done.stderr or done.stdout, 3) or f"exit {done.returncode}"
            raise ImagesError(f"the Docker daemon does not answer: {why}", DOCKER_HINT)

    def inspect(self, ref: str) -> ImageInfo | None:
        """The image `ref` names, or None when there is none."""
        done = self._call("image", "inspect", ref)
        if done.returncode != 0:
            return None
        [data] = json.loads(done.stdout)
        labels = (data.get("Config") or {}).get("Labels") or {}
        return ImageInfo(str(data["Id"]), int(data.get("Size") or 0), dict(labels))

    def pull(self, ref: str) -> None:
        done = self._call("pull", "--quiet", ref, timeout=PULL_TIMEOUT_S)
        if done.returncode != 0:
            raise ImagesError(
                f"cannot pull {ref}: {_tail(done.stderr or done.stdout, 3)}",
                "without a registry, `yardarm images build --offline` builds from a Debian"
                " base made with debootstrap",
            )

    def tag(self, source: str, target: str) -> None:
        done = self._call("tag", source, target)
        if done.returncode != 0:
            raise ImagesError(f"cannot tag {target}: {_tail(done.stderr, 3)}")

    def remove(self, ref: str) -> None:
        """Remove an image no tag names any more; one still in use stays."""
        self._call("image", "rm", ref)

    def build(self, command: list[str], log: Path) -> None:
        """Run `docker build ARGS`, its output into `log`."""
        with log.open("w") as out:
            out.write(f"$ docker build {' '.join(command)}\n")
            out.flush()
            try:
                done = self._run(
                    [self.binary, "build", *command],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=BUILD_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ImagesError(
                    f"the build took over {BUILD_TIMEOUT_S:.0f} s; its log: {log}"
                ) from exc
        if done.returncode != 0:
            raise ImagesError(
                f"`docker build` failed (exit {done.returncode}):\n{_tail(log.read_text())}",
                f"the whole log: {log}",
            )


def project_files(root: Path) -> list[str]:
    """The tree's files (relative, `/`-separated) as git sees them: tracked or not yet
    added, never ignored (build output, caches, a stack's state)."""
    git = shutil.which("git")
    if git is not None:
        done = subprocess.run(
            [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            timeout=DOCKER_TIMEOUT_S,
            check=False,
        )
        if done.returncode == 0:
            return sorted({name for name in done.stdout.decode().split("\0") if name})
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [name for name in dirs if name not in UNTRACKED]
        for name in names:
            if not name.endswith(".pyc"):
                files.append((Path(folder) / name).relative_to(root).as_posix())
    return sorted(files)


def _covers(source: str, path: str) -> bool:
    return path == source or path.startswith(f"{source.rstrip('/')}/")


def input_hash(
    root: Path,
    spec: ImageSpec,
    files: list[str],
    base_id: str,
    build_args: dict[str, str],
) -> str:
    """The sha256 of everything the image is built from (module docstring): equal
    hashes, equal images, so an image carrying its hash need not be built again."""
    digest = hashlib.sha256(HASH_FORMAT + b"\0")
    chosen = sorted(
        {path for path in files if any(_covers(source, path) for source in spec.sources)}
        | {spec.dockerfile}
    )
    for path in chosen:
        file = root / path
        if not file.is_file():  # deleted, not yet removed from the index
            continue
        executable = b"x" if os.access(file, os.X_OK) else b"-"
        content = hashlib.sha256(file.read_bytes()).hexdigest().encode()
        digest.update(path.encode() + b"\0" + executable + content + b"\0")
    digest.update(b"base\0" + base_id.encode() + b"\0")
    for key, value in sorted(build_args.items()):
        digest.update(f"arg\0{key}={value}\0".encode())
    if spec.package is not None:
        digest.update(b"wheels\0" + FLAVOUR.encode() + b"\0")
    return digest.hexdigest()


def default_base(dockerfile: Path) -> str:
    """The base a Dockerfile names in `ARG BASE_IMAGE=...` (its one source of truth)."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile.read_text(), re.MULTILINE)
    if match is None:
        raise ImagesError(f"{dockerfile} declares no `ARG BASE_IMAGE=<image>`")
    return match.group(1)


@dataclass
class ImageResult:
    """One image of a run: what it is, whether it was built, how long it took, its size."""

    name: str
    image: str  # the versioned tag
    tags: list[str]
    status: str  # "cached" or "built"
    seconds: float  # building (0 when cached)
    size_bytes: int
    id: str
    inputs: str
    base: str


@dataclass
class BuildReport:
    """Everything a run did; `docker_builds` counts the `docker build` commands it ran."""

    images: list[ImageResult] = field(default_factory=list)
    docker_builds: int = 0
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class Progress(Protocol):
    """How a run reports while it goes (the CLI draws it with rich)."""

    def step(self, message: str) -> None:
        """Something slow begins."""

    def image(self, result: ImageResult) -> None:
        """An image is done (built or found cached)."""


@dataclass(frozen=True)
class BuildRequest:
    """What to build (`yardarm images build`'s options)."""

    offline: bool = False
    only: tuple[str, ...] = ()
    test_images: bool = False


@contextlib.contextmanager
def _exclusive(cache: Path, progress: Progress) -> Iterator[None]:
    """One run at a time per tree: two would share the contexts and the downloads."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.step("waiting for another `yardarm images build` in this tree")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _context(root: Path, cache: Path, spec: ImageSpec, wheels: list[Path]) -> Path:
    """A wheel image's build context: its Dockerfile and its wheels, nothing else."""
    context = cache / "contexts" / spec.name
    shutil.rmtree(context, ignore_errors=True)
    (context / "wheels").mkdir(parents=True)
    shutil.copyfile(root / spec.dockerfile, context / "Dockerfile")
    for wheel in wheels:
        _link_or_copy(wheel, context / "wheels" / wheel.name)
    return context


class Builder:
    """One run of `yardarm images build`."""

    def __init__(
        self,
        request: BuildRequest,
        progress: Progress,
        *,
        root: Path | None = None,
        docker: Docker | None = None,
        run: Runner = subprocess.run,
    ) -> None:
        self.request = request
        self.progress = progress
        self.root = root or source_root()
        self.docker = docker or Docker(run)
        self.cache = self.root / CACHE_DIR
        self.wheelhouse = Wheelhouse(self.root, self.cache, run)
        self.report = BuildReport()
        self._bases: dict[str, ImageInfo] = {}

    def _base(self, spec: ImageSpec) -> tuple[str, ImageInfo]:
        """The image `spec` builds from (made or pulled when missing) and its id."""
        ref = OFFLINE_BASE if self.request.offline else default_base(self.root / spec.dockerfile)
        if ref not in self._bases:
            info = self.docker.inspect(ref)
            if info is None:
                if self.request.offline:
                    self.progress.step(f"making {ref} with debootstrap (a minute or two)")
                    make_offline_base(
                        self.docker.binary, self.cache / "base", self.cache / "logs" / "base.log"
                    )
                else:
                    self.progress.step(f"pulling {ref}")
                    self.docker.pull(ref)
                info = self.docker.inspect(ref)
                if info is None:
                    raise ImagesError(f"{ref} is still missing after it was made")
            self._bases[ref] = info
        return ref, self._bases[ref]

    def run(self) -> BuildReport:
        started = time.monotonic()
        specs = select(list(self.request.only), self.request.test_images)
        self.docker.check()
        if self.request.offline and self.docker.inspect(OFFLINE_BASE) is None:
            check_tools()  # before waiting for another run: debootstrap must be able to run
        with _exclusive(self.cache, self.progress):
            files = project_files(self.root)
            pending: list[tuple[ImageSpec, list[str], str, str, dict[str, str]]] = []
            for spec in specs:
                ref, base = self._base(spec)
                args = {"BASE_IMAGE": ref} if self.request.offline else {}
                inputs = input_hash(self.root, spec, files, base.id, args)
                tags = spec.tags(self.root)
                found = self.docker.inspect(tags[0])
                if found is not None and found.labels.get(LABEL) == inputs:
                    self._retag(found, tags)
                    self._done(spec, tags, "cached", 0.0, found, inputs, ref)
                else:
                    pending.append((spec, tags, inputs, ref, args))
            if any(spec.package is not None for spec, *_ in pending):
                self.progress.step("gathering wheels (workspace builds, locked downloads)")
                self.wheelhouse.prepare(spec for spec, *_ in pending)
            for spec, tags, inputs, ref, args in pending:
                self._build(spec, tags, inputs, ref, args)
        self.report.seconds = round(time.monotonic() - started, 1)
        return self.report

    def _retag(self, image: ImageInfo, tags: list[str]) -> None:
        for tag in tags[1:]:
            current = self.docker.inspect(tag)
            if current is None or current.id != image.id:
                self.docker.tag(image.id, tag)

    def _build(
        self, spec: ImageSpec, tags: list[str], inputs: str, base: str, args: dict[str, str]
    ) -> None:
        self.progress.step(f"building {tags[0]}")
        started = time.monotonic()
        if spec.package is not None:
            context = _context(self.root, self.cache, spec, self.wheelhouse.wheels_for(spec))
            dockerfile = context / "Dockerfile"
        else:
            context = self.root / spec.context
            dockerfile = self.root / spec.dockerfile
        logs = self.cache / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        previous = self.docker.inspect(tags[0])
        command = ["--file", str(dockerfile), "--force-rm", "--label", f"{LABEL}={inputs}"]
        for tag in tags:
            command += ["--tag", tag]
        for key, value in sorted(args.items()):
            command += ["--build-arg", f"{key}={value}"]
        self.report.docker_builds += 1
        self.docker.build([*command, str(context)], logs / f"{spec.name}.log")
        seconds = round(time.monotonic() - started, 1)
        built = self.docker.inspect(tags[0])
        if built is None:
            raise ImagesError(f"{tags[0]} is missing after its build")
        if previous is not None and previous.id != built.id:
            self.docker.remove(previous.id)  # untagged now: no dangling image per build
        self._done(spec, tags, "built", seconds, built, inputs, base)

    def _done(
        self,
        spec: ImageSpec,
        tags: list[str],
        status: str,
        seconds: float,
        image: ImageInfo,
        inputs: str,
        base: str,
    ) -> None:
        result = ImageResult(
            spec.name, tags[0], tags, status, seconds, image.size, image.id, inputs, base
        )
        self.report.images.append(result)
        self.progress.image(result)


def build_images(
    request: BuildRequest, progress: Progress, *, root: Path | None = None
) -> BuildReport:
    """Build (or find cached) the images `request` asks for."""
    return Builder(request, progress, root=root).run()
