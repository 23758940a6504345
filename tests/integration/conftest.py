"""Integration tests against real containers: Postgres and NATS images run under Docker
with testcontainers, once per session.

The service tests' own fixtures run here unchanged. This conftest overrides `nats_url`
and `postgres_admin_dsn` (tests/conftest.py) with the containers', so `pg_database`, the
fulfillment `bus` and `start_fulfillment`, and the orders `datastore_url` work as they do
against the local servers.

Images come from YARDARM_IMAGE_POSTGRES and YARDARM_IMAGE_NATS, whose defaults are the
public images a user would pull (postgres:16, nats:2); CI points them at its offline
builds. Without Docker or an image the tests skip, saying what to run; with
YARDARM_REQUIRE_DOCKER=1 (CI) they fail instead. Without a registry, testcontainers'
reaper cannot be pulled either: set TESTCONTAINERS_RYUK_DISABLED=true (every fixture here
removes its own containers), as CI does (.ci/prepare.d/50-docker.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import docker
import nats
import pytest
from docker.errors import DockerException, ImageNotFound, NotFound
from nats.errors import Error as NatsError
from testcontainers.community.postgres import PostgresContainer
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

from tests.conftest import free_port
from tests.fulfillment.conftest import bus, db, start_fulfillment  # noqa: F401 - fixtures
from tests.orders.conftest import datastore_url, orders_service  # noqa: F401 - fixtures

BUILD_COMMAND = "uv run yardarm images build --offline --test-images"
IMAGE_DEFAULTS = {"YARDARM_IMAGE_POSTGRES": "postgres:16", "YARDARM_IMAGE_NATS": "nats:2"}
BUILT_IMAGES = {
    "YARDARM_IMAGE_POSTGRES": "yardarm/postgres:15",
    "YARDARM_IMAGE_NATS": "yardarm/nats:2",
}
NATS_CLIENT_PORT = 4222
POSTGRES_PORT = 5432
# Where NATS keeps JetStream when the image declares no volume (the public image).
NATS_DEFAULT_STORE = "/data"
# A NATS start (or restart) is a second; a Postgres start, its initdb included, a few.
START_TIMEOUT_S = 60.0


def _required() -> bool:
    return os.environ.get("YARDARM_REQUIRE_DOCKER") == "1"


def _unavailable(reason: str) -> NoReturn:
    """Skip, or fail when CI says Docker is required."""
    if _required():
        pytest.fail(f"{reason} (YARDARM_REQUIRE_DOCKER=1)", pytrace=False)
    pytest.skip(reason)


def _docker_client() -> docker.DockerClient:
    client = docker.from_env(timeout=10)
    client.ping()
    return client


def require_docker_compose() -> str:
    """The docker-compose binary; skips (fails under YARDARM_REQUIRE_DOCKER=1) without it."""
    found = shutil.which("docker-compose")
    if found is None:
        _unavailable("docker-compose is not installed (Debian: apt-get install docker-compose)")
    return found


def docker_available() -> bool:
    """Whether a Docker daemon answers (DOCKER_HOST, or the local socket)."""
    try:
        _docker_client().close()
    except DockerException:
        return False
    return True


def require_docker() -> docker.DockerClient:
    """A client of the running Docker daemon; skips (fails under YARDARM_REQUIRE_DOCKER=1)
    when none answers."""
    try:
        return _docker_client()
    except DockerException as exc:
        _unavailable(
            "Docker is not running: start it (`dockerd`, or Docker Desktop) or set "
            f"DOCKER_HOST to a daemon that answers ({exc})"
        )


def image_for(variable: str) -> str:
    """The image a test runs: the environment's choice, else the public default."""
    return os.environ.get(variable) or IMAGE_DEFAULTS[variable]


def _pull_unless_here(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.get(image)
    except ImageNotFound:
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        client.images.pull(name, tag=tag or "latest")


def require_image(client: docker.DockerClient, variable: str) -> str:
    """The image named by `variable`, pulled when it is not here; skips (fails under
    YARDARM_REQUIRE_DOCKER=1) when it can be neither found nor pulled. Checks that
    testcontainers' reaper can run too, unless it is turned off."""
    image = image_for(variable)
    try:
        _pull_unless_here(client, image)
    except DockerException as exc:
        built = " ".join(f"{k}={v}" for k, v in BUILT_IMAGES.items())
        _unavailable(
            f"image {image} ({variable}) is not here and cannot be pulled ({exc}); without a "
            f"registry build the test images with `{BUILD_COMMAND}` and set {built}"
        )
    if not testcontainers_config.ryuk_disabled:
        try:
            _pull_unless_here(client, testcontainers_config.ryuk_image)
        except DockerException as exc:
            _unavailable(
                f"testcontainers' reaper image {testcontainers_config.ryuk_image} cannot be "
                f"pulled ({exc}): set TESTCONTAINERS_RYUK_DISABLED=true"
            )
    return image


def require_project_image(client: docker.DockerClient, service: str) -> str:
    """A project image (`yardarm/<service>:<version>`, or YARDARM_IMAGE_<SERVICE>); skips
    (fails under YARDARM_REQUIRE_DOCKER=1) with the command that builds it when missing."""
    from yardarm.containers.compose import project_images

    root = Path(__file__).resolve().parents[2]
    variable = f"YARDARM_IMAGE_{service.upper()}"
    image = os.environ.get(variable) or project_images(root)[service]
    try:
        client.images.get(image)
    except ImageNotFound:
        _unavailable(
            f"image {image} ({variable}) is not built: run "
            f"`uv run yardarm images build --offline --only {service}`"
        )
    return image


def docker_instant(text: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; Python parses up to microseconds."""
    head, _, rest = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(rest or '0')[:6]:0<6}+00:00")


def started_to_healthy_s(state: dict[str, Any]) -> float:
    """Seconds from a healthy container's start to its first passing health check, as
    Docker recorded them (`State` of `docker inspect`; the machine's own delays before
    the start do not count)."""
    passed = next(entry for entry in state["Health"]["Log"] if entry["ExitCode"] == 0)
    return (docker_instant(passed["End"]) - docker_instant(state["StartedAt"])).total_seconds()


def publish_on_loopback(container: DockerContainer, port: int, host_port: int = 0) -> None:
    """Publish a container port on 127.0.0.1 only (`host_port` 0: any free one)."""
    # docker-py takes (host address, host port); testcontainers' own helpers take a port.
    container.ports[str(port)] = ("127.0.0.1", host_port or None)  # type: ignore[assignment]


async def wait_for_jetstream(url: str, timeout: float = START_TIMEOUT_S) -> None:
    """Until a client connects to `url` and JetStream answers, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
            try:
                await nc.jetstream(timeout=2).account_info()
                return
            finally:
                await nc.close()
        except (TimeoutError, OSError, NatsError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"JetStream at {url} not up after {timeout}s: {exc!r}") from exc
            await asyncio.sleep(0.2)


class NatsServer:
    """NATS with JetStream in a container whose store is the named Docker volume `volume`,
    its client port fixed on 127.0.0.1: a container started after another keeps the URL
    and, from the volume, the streams, consumers and messages."""

    def __init__(self, client: docker.DockerClient, image: str, volume: str) -> None:
        self.image, self.volume = image, volume
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        declared = client.images.get(image).attrs["Config"].get("Volumes") or {}
        # yardarm/nats declares its store; the public image keeps JetStream under /tmp
        # unless told.
        self.store = next(iter(declared), NATS_DEFAULT_STORE)
        self.command = ["-js"] if declared else ["-js", "-sd", self.store]
        self.container: DockerContainer | None = None

    async def start(self) -> None:
        """A new container on the volume; returns once JetStream answers."""
        container = DockerContainer(self.image).with_command(self.command)
        container.with_volume_mapping(self.volume, self.store, mode="rw")
        publish_on_loopback(container, NATS_CLIENT_PORT, self.port)
        self.container = container
        await asyncio.to_thread(container.start)
        await wait_for_jetstream(self.url)

    async def stop(self) -> None:
        """`docker stop` (nats-server shuts down on SIGTERM), then remove the container;
        the volume stays."""
        container, self.container = self.container, None
        if container is None:
            return
        with contextlib.suppress(DockerException):
            await asyncio.to_thread(container.get_wrapped_container().stop, timeout=20)
        await asyncio.to_thread(container.stop)


@pytest.fixture(scope="session")
def nats_container() -> Iterator[NatsServer]:
    """The session's NATS container, its JetStream store on a named volume (removed at
    the end) so a test may replace the container and find the streams and consumers
    still there."""
    client = require_docker()
    image = require_image(client, "YARDARM_IMAGE_NATS")
    server = NatsServer(client, image, f"yardarm-it-nats-{uuid.uuid4().hex[:8]}")
    try:
        asyncio.run(server.start())
        yield server
    finally:
        asyncio.run(server.stop())
        with contextlib.suppress(NotFound):
            client.volumes.get(server.volume).remove(force=True)
        client.close()


@pytest.fixture(scope="session")
def nats_url(nats_container: NatsServer) -> str:
    """The session's NATS URL: the container's (overrides tests/conftest.py's server)."""
    return nats_container.url


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> Iterator[str]:
    """The session's Postgres: a container, as its superuser (overrides tests/conftest.py's
    local cluster, so `pg_database` makes its databases there)."""
    client = require_docker()
    image = require_image(client, "YARDARM_IMAGE_POSTGRES")
    client.close()
    container = PostgresContainer(image, username="yardarm", password="yardarm-test",
                                  dbname="postgres", driver=None)  # fmt: skip
    publish_on_loopback(container, POSTGRES_PORT)
    with container:  # waits until psql inside it answers over TCP
        yield container.get_connection_url()
