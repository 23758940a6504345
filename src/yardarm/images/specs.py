"""The images `yardarm images build` makes, and the files each one is built from.

A service image holds its service's wheel and the kit's, the control image every
workspace wheel (the control plane imports the services' settings); a test image
(Postgres, NATS) is built from Debian's packages and a folder of its own. The `sources`
of an image are what its input hash covers: a change anywhere else does not rebuild it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

# The workspace's distributions and the folder holding each one's pyproject.toml.
MEMBERS: dict[str, str] = {
    "yardarm-kit": "services/kit",
    "yardarm-gateway": "services/gateway",
    "yardarm-orders": "services/orders",
    "yardarm-fulfillment": "services/fulfillment",
    "yardarm-datastore": "services/datastore",
    "yardarm": ".",
}
SERVICES = ("gateway", "orders", "fulfillment", "datastore")
REPOSITORY = "yardarm"


class ImagesError(Exception):
    """An image cannot be built; `hint` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile, what it installs, and the files its build depends on."""

    name: str
    dockerfile: str  # relative to the project root
    # The distribution pip installs from the wheelhouse, with the workspace members whose
    # wheels it needs; None for a test image, built from its own folder.
    package: str | None
    members: tuple[str, ...]
    sources: tuple[str, ...]  # files and folders (relative) whose contents are inputs
    tag: str | None = None  # a fixed tag (test images); None: the package's version
    test_image: bool = False

    @property
    def repository(self) -> str:
        return f"{REPOSITORY}/{self.name}"

    @property
    def context(self) -> str:
        """A test image's build context: its Dockerfile's folder."""
        return str(Path(self.dockerfile).parent)

    def version(self, root: Path) -> str:
        """The tag: the fixed one, or the version in the package's pyproject.toml."""
        if self.tag is not None:
            return self.tag
        assert self.package is not None
        pyproject = root / MEMBERS[self.package] / "pyproject.toml"
        try:
            version = tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
            raise ImagesError(f"cannot read the version of {self.package} in {pyproject}") from exc
        return str(version)

    def tags(self, root: Path) -> list[str]:
        """Every tag the image gets: the version, and `latest` for the project's own."""
        version = self.version(root)
        tags = [f"{self.repository}:{version}"]
        if not self.test_image:
            tags.append(f"{self.repository}:latest")
        return tags


def _service(name: str) -> ImageSpec:
    folder = MEMBERS[f"yardarm-{name}"]
    return ImageSpec(
        name=name,
        dockerfile=f"{folder}/Dockerfile",
        package=f"yardarm-{name}",
        members=("yardarm-kit", f"yardarm-{name}"),
        sources=(MEMBERS["yardarm-kit"], folder, "uv.lock"),
    )


SERVICE_IMAGES: tuple[ImageSpec, ...] = (
    *(_service(name) for name in SERVICES),
    ImageSpec(
        name="control",
        dockerfile="Dockerfile",
        package="yardarm",
        members=tuple(MEMBERS),
        # The root wheel's metadata carries the README; it holds every service's package.
        sources=("Dockerfile", "pyproject.toml", "README.md", "src/yardarm", "services", "uv.lock"),
    ),
)
TEST_IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec(
        name="postgres",
        dockerfile="images/postgres/Dockerfile",
        package=None,
        members=(),
        sources=("images/postgres",),
        tag="15",
        test_image=True,
    ),
    ImageSpec(
        name="nats",
        dockerfile="images/nats/Dockerfile",
        package=None,
        members=(),
        sources=("images/nats",),
        tag="2",
        test_image=True,
    ),
)


def select(only: list[str], test_images: bool) -> list[ImageSpec]:
    """The images to build: those named with `--only` (test images too), else every
    service image and, with `--test-images`, the test images; always in the list's order."""
    every = {spec.name: spec for spec in (*SERVICE_IMAGES, *TEST_IMAGES)}
    unknown = [name for name in only if name not in every]
    if unknown:
        raise ImagesError(
            f"unknown image {', '.join(repr(name) for name in unknown)}",
            f"the images are: {', '.join(every)}",
        )
    if only:
        return [spec for spec in every.values() if spec.name in only]
    return [*SERVICE_IMAGES, *(TEST_IMAGES if test_images else ())]


def source_root(start: Path | None = None) -> Path:
    """The yardarm source tree holding `start` (the working directory by default): the
    images are built from its services and lockfile, so a stack directory elsewhere
    will not do."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        pyproject = candidate / "pyproject.toml"
        if not (pyproject.is_file() and (candidate / "services").is_dir()):
            continue
        try:
            name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if name == "yardarm":
            return candidate
    raise ImagesError(
        f"{here} is not inside the yardarm source tree",
        "run `yardarm images build` from the yardarm repository (it builds from its sources)",
    )
