"""The input hash decides whether an image is built: it must change with anything the
image is made of, and with nothing else (or an unchanged tree would rebuild)."""

from __future__ import annotations

from pathlib import Path

import pytest

from yardarm.images.build import input_hash, project_files
from yardarm.images.specs import SERVICE_IMAGES, TEST_IMAGES, ImageSpec, select, source_root

ORDERS = next(spec for spec in SERVICE_IMAGES if spec.name == "orders")
CONTROL = next(spec for spec in SERVICE_IMAGES if spec.name == "control")
POSTGRES = next(spec for spec in TEST_IMAGES if spec.name == "postgres")
BASE = "sha256:" + "b" * 64


def _hash(root: Path, spec: ImageSpec = ORDERS, base: str = BASE, **args: str) -> str:
    return input_hash(root, spec, project_files(root), base, dict(args))


def test_the_hash_is_stable_on_an_unchanged_tree(tree: Path) -> None:
    assert _hash(tree) == _hash(tree)


@pytest.mark.parametrize(
    "path",
    [
        "services/orders/src/yardarm_orders/app.py",  # the service's own source
        "services/kit/src/yardarm_kit/__init__.py",  # the kit, in every service image
        "services/orders/pyproject.toml",  # its dependencies
        "services/orders/Dockerfile",
        "uv.lock",  # the pinned third-party versions
    ],
)
def test_a_change_to_what_the_image_is_made_of_changes_the_hash(tree: Path, path: str) -> None:
    before = _hash(tree)
    (tree / path).write_text((tree / path).read_text() + "# changed\n")
    assert _hash(tree) != before


def test_a_new_file_in_the_service_changes_the_hash_before_git_add(tree: Path) -> None:
    before = _hash(tree)
    (tree / "services/orders/src/yardarm_orders/new.py").write_text("NEW = 1\n")
    assert _hash(tree) != before


@pytest.mark.parametrize(
    "path",
    [
        "services/gateway/src/yardarm_gateway/app.py",  # another service
        "docs/guide.md",
        "README.md",
        "Dockerfile",  # the control image's
        "services/orders/debug.log",  # ignored by git
    ],
)
def test_a_change_elsewhere_keeps_the_hash(tree: Path, path: str) -> None:
    before = _hash(tree)
    target = tree / path
    target.write_text((target.read_text() if target.exists() else "") + "changed\n")
    assert _hash(tree) == before


def test_the_base_image_and_the_build_arguments_are_inputs(tree: Path) -> None:
    before = _hash(tree)
    assert _hash(tree, base="sha256:" + "c" * 64) != before
    assert _hash(tree, BASE_IMAGE="yardarm/base:bookworm") != before


def test_the_control_image_covers_every_service_and_the_control_plane(tree: Path) -> None:
    before = _hash(tree, CONTROL)
    (tree / "services/gateway/src/yardarm_gateway/app.py").write_text("GATEWAY = 2\n")
    after_gateway = _hash(tree, CONTROL)
    (tree / "src/yardarm/__init__.py").write_text("X = 1\n")
    assert len({before, after_gateway, _hash(tree, CONTROL)}) == 3


def test_a_test_image_covers_its_folder_and_the_mode_of_its_script(tree: Path) -> None:
    before = _hash(tree, POSTGRES)
    (tree / "images/postgres/entrypoint.sh").chmod(0o644)  # would not run in the image
    assert _hash(tree, POSTGRES) != before
    (tree / "images/postgres/entrypoint.sh").chmod(0o755)
    assert _hash(tree, POSTGRES) == before
    (tree / "services/orders/src/yardarm_orders/app.py").write_text("ORDERS = 2\n")
    assert _hash(tree, POSTGRES) == before


def test_a_tree_outside_git_is_listed_without_caches(tree: Path) -> None:
    (tree / ".git").rename(tree / "not-git")  # no checkout: every file but caches
    (tree / "services/orders/src/yardarm_orders/__pycache__").mkdir()
    (tree / "services/orders/src/yardarm_orders/__pycache__/app.cpython-311.pyc").write_bytes(b"")
    files = project_files(tree)
    assert "services/orders/src/yardarm_orders/app.py" in files
    assert not any("__pycache__" in name for name in files)


def test_tags_are_the_package_version_and_latest(tree: Path) -> None:
    assert ORDERS.tags(tree) == ["yardarm/orders:0.2.0", "yardarm/orders:latest"]
    assert POSTGRES.tags(tree) == ["yardarm/postgres:15"]


def test_selection_of_images() -> None:
    names = [spec.name for spec in select([], test_images=False)]
    assert names == ["gateway", "orders", "fulfillment", "datastore", "control"]
    assert [spec.name for spec in select([], test_images=True)][-3:] == ["postgres", "nats", "host"]
    assert [spec.name for spec in select(["nats", "orders"], test_images=False)] == [
        "orders",
        "nats",
    ]


def test_the_source_root_is_found_from_a_folder_inside_it(tree: Path) -> None:
    assert source_root(tree / "services/orders/src") == tree
