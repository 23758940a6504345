"""The images `yardarm images build` makes, and the files each one is built from.

A service image holds its service's wheel and the kit's, the control image every
workspace wheel (the control plane imports the services' settings); a test image
(Postgres, NATS, a bare-metal host) is built from Debian's packages and a folder of its
own. The `sources` of an image are what its input hash covers: a change anywhere else
does not rebuild it.

A project image's `runtime` holds what its Dockerfile says beyond the shared template
(`yardarm.images.dockerfiles` renders the Dockerfiles, `yardarm images dockerfiles`
writes them): this table is where an image's settings are changed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from yardarm.model import Topology

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


STATE_VOLUME = "/var/lib/yardarm"  # the one place an image writes (a volume)
ANY_ADDRESS = "0.0.0.0"  # in a container a listener must be reachable from outside it

# A port in the deployment model's port plan, read from a default topology (replica 0),
# so an image listens where a local stack's first replica does.
Port = Callable[["Topology"], int]


@dataclass(frozen=True)
class Runtime:
    """How a project image runs: what its Dockerfile says beyond the shared template.

    `env` names fields of the `settings` class (`module:Class`), whose `env_prefix` the
    variables take; a `Port` value comes from the model's port plan. Text fields are
    comment paragraphs, formatted with the image's values (`{prefix}`, `{volume}`, the
    model's ports such as `{datastore_port}`, `{setting[data_dir]}`); None takes the
    service images' wording from the template.
    """

    settings: str
    command: tuple[str, ...]  # what the image runs
    env: tuple[tuple[str, str | Port], ...]  # settings field -> the image's default
    environ: tuple[tuple[str, str], ...] = ()  # variables set as named (no prefix)
    expose: tuple[Port, ...] = ()  # listeners beyond the ports `env` sets
    # The comment's table of what a user sets: (variables, what; lines split at "\n").
    user_settings: tuple[tuple[str, str], ...] = ()
    settings_heading: str | None = None  # above the table
    settings_footer: str | None = None
    about: str | None = None  # the opening paragraph
    wheels: str | None = None  # what the wheelhouse holds; None: the image's members
    build_note: str | None = None  # appended to the paragraph on how it is built
    build_stage: str | None = None  # the build stage's comment
    prune_tests: tuple[str, ...] = ()  # distributions whose own test suites are removed
    prune_paths: tuple[str, ...] = ()  # folders under site-packages nothing imports
    checks: tuple[str, ...] = ()  # imported at build time; (): the command's module
    health_port: str | None = "port"  # the settings field /healthz is on; None: topology's
    overridable: bool = False  # a default CMD any command replaces, not an ENTRYPOINT

    @property
    def module(self) -> str:
        """The module the image runs (`python -m MODULE ...`)."""
        return self.command[self.command.index("-m") + 1]


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
    runtime: Runtime | None = None  # a generated Dockerfile's values; None: hand-written

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


def _service(
    name: str,
    *,
    env: tuple[tuple[str, str | Port], ...] = (),
    expose: tuple[Port, ...] = (),
    user_settings: tuple[tuple[str, str], ...] = (),
    settings_heading: str | None = None,
    settings_footer: str | None = None,
) -> ImageSpec:
    """A service image: its package, and the settings every service image sets (bound
    to 0.0.0.0 on its default port, span files off, state in the volume) before its own."""
    folder = MEMBERS[f"yardarm-{name}"]
    common: tuple[tuple[str, str | Port], ...] = (
        ("host", ANY_ADDRESS),
        ("port", lambda topology: topology.service_port(name, 0)),
        ("span_files", "false"),
        ("state_dir", STATE_VOLUME),
    )
    return ImageSpec(
        name=name,
        dockerfile=f"{folder}/Dockerfile",
        package=f"yardarm-{name}",
        members=("yardarm-kit", f"yardarm-{name}"),
        sources=(MEMBERS["yardarm-kit"], folder, "uv.lock"),
        runtime=Runtime(
            settings=f"yardarm_{name}.settings:{name.capitalize()}Settings",
            command=("python", "-m", f"yardarm_{name}"),
            env=(*common, *env),
            expose=expose,
            user_settings=user_settings,
            settings_heading=settings_heading,
            settings_footer=settings_footer,
        ),
    )


SERVICE_IMAGES: tuple[ImageSpec, ...] = (
    _service(
        "gateway",
        expose=(lambda topology: topology.gateway_admin_port(0),),
        user_settings=(
            ("ROUTES, UPSTREAMS", "JSON: the routing table and each upstream's endpoints"),
            ("DATASTORE_URLS", "JSON list: where the routing document lives (optional)"),
            ("DATASTORE_TOKEN_FILE", "the gateway's datastore credential, a mounted file"),
            (
                "ADMIN_PORT ({gateway_admin_port}), ADMIN_TOKEN_FILE",
                "the admin API and its token, a mounted file",
            ),
        ),
    ),
    _service(
        "orders",
        user_settings=(
            ("DATABASE_URL", "postgresql://user:password@host:5432/orders"),
            ("NATS_URL", "nats://host:4222 (JetStream on)"),
            ("DATASTORE_URLS", 'JSON list: ["http://datastore:{datastore_port}"]'),
            (
                "DATASTORE_TOKEN_FILE",
                "its datastore credential, a mounted file (with access control)",
            ),
        ),
    ),
    _service(
        "fulfillment",
        user_settings=(
            ("DATABASE_URL", "postgresql://user:password@host:5432/fulfillment"),
            ("NATS_URL", "nats://host:4222 (JetStream on)"),
        ),
    ),
    _service(
        "datastore",
        env=(
            ("data_dir", f"{STATE_VOLUME}/data"),
            ("raft_host", ANY_ADDRESS),
            ("raft_port", lambda topology: topology.raft_port(0)),
        ),
        settings_heading="Run-time settings ({prefix}*; docs/containers.md). Alone, the"
        " replica is a group of one and needs nothing more; in a group of three each"
        " replica sets:",
        user_settings=(
            ("REPLICA_ID", "1, 2 or 3"),
            (
                "PEERS",
                'JSON: {{"2": {{"raft": "ds-2:{raft_port}",'
                ' "http": "http://ds-2:{datastore_port}"}}, ...}}',
            ),
            (
                "ACCESS_FILE, PEER_TOKEN_FILE",
                "the access document and the group's secret,\n"
                "mounted files (unset: anyone reaching the ports may use them)",
            ),
        ),
        settings_footer="Its log and snapshots go to DATA_DIR, {setting[data_dir]}, inside"
        " the volume.",
    ),
    ImageSpec(
        name="control",
        dockerfile="Dockerfile",
        package="yardarm",
        members=tuple(MEMBERS),
        # The root wheel's metadata carries the README; it holds every service's package.
        sources=("Dockerfile", "pyproject.toml", "README.md", "src/yardarm", "services", "uv.lock"),
        runtime=Runtime(
            # The controller's own listener reads the kit's base settings (`YARDARM_*`).
            settings="yardarm_kit:ServiceSettings",
            command=("python", "-m", "yardarm.local.rollout_controller", "--home", STATE_VOLUME),
            overridable=True,
            environ=(("YARDARM_HOME", STATE_VOLUME),),
            env=(("span_files", "false"),),
            expose=(lambda topology: topology.rollouts_port,),
            health_port=None,
            about="The control plane (`yardarm/control`): the `yardarm` package and its CLI,"
            " non-root, on a read-only root filesystem. By default it runs the rollout"
            " controller (`python -m yardarm.local.rollout_controller`) on the stack home"
            " mounted at {volume}; any other command replaces it, e.g. a one-shot"
            " `docker run --rm yardarm/control yardarm <command>`.",
            wheels="every workspace wheel (the control plane imports the services' settings)",
            build_note="Larger than a service image: the rollout judge's statistics need"
            " scipy (and numpy).",
            settings_heading="Run-time settings:",
            user_settings=(
                (
                    "{volume}",
                    "the stack home (YARDARM_HOME): topology.json, credentials/,\n"
                    "certificates/ as `yardarm up` writes them; the controller\n"
                    "keeps its rollouts in the stack's datastore",
                ),
                (
                    "YARDARM_ROLLOUTS_*",
                    "the controller's tuning"
                    " (rollout_controller.ControllerSettings),\ne.g. YARDARM_ROLLOUTS_WEBHOOK_URL",
                ),
            ),
            settings_footer="The controller serves its API on the stack's base port"
            " + {rollouts_offset} ({rollouts_port} by default).",
            build_stage="Build stage: a venv holding the `yardarm` wheel and what its package"
            " metadata requires, resolved by pip from the wheelhouse alone (--no-index). pip"
            " runs from its wheel and is not left in the venv. numpy's and scipy's own test"
            " suites (50 MB) and the Kubernetes client's asyncio variant (68 MB) are left out."
            " The controller and the judge's statistics (scipy)"
            " are imported once, so a wheel that cannot load fails the build, not the start.",
            prune_tests=("numpy", "scipy"),
            # The Kubernetes client's asyncio twin (68 MB): the controller uses the
            # synchronous client, and `import kubernetes` does not load it.
            prune_paths=("kubernetes/aio",),
            checks=(
                "yardarm.cli",
                "yardarm.local.rollout_controller",
                "yardarm.kubernetes.controller",
                "scipy.stats",
            ),
        ),
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
    # A bare-metal host for the Ansible roles: sshd and supervisord on Debian bookworm.
    ImageSpec(
        name="host",
        dockerfile="images/host/Dockerfile",
        package=None,
        members=(),
        sources=("images/host",),
        tag="bookworm",
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
