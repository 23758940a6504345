"""The offline base image, `yardarm/base:bookworm`, for machines without a registry.

Nothing can be pulled there, not even a Debian image, so the base is made from Debian's
packages: `debootstrap --variant=minbase` with python3 (3.11 in bookworm), python3-venv
and the CA certificates, from the mirror apt already uses, then `docker import`. It is
made once, when missing; `docker image rm yardarm/base:bookworm` makes the next
`--offline` run make it again (and, its id changing, rebuild every image).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from yardarm.images.specs import ImagesError

OFFLINE_BASE = "yardarm/base:bookworm"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT_S = 1800.0  # a slow mirror
IMPORT_TIMEOUT_S = 600.0
# Not needed in a container, and left out of the packages the test images install on it
# (as in Debian's own slim images): documentation, manuals, translations.
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""
TRIMMED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale")


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses on this machine (deb822 `.sources` or `sources.list`),
    the public one when there is none: a machine without a registry often reaches only
    its own mirror."""
    candidates: list[str] = []
    files = sorted((apt_dir / "sources.list.d").glob("*.sources"))
    files += [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("URIs:"):
                candidates.extend(line.removeprefix("URIs:").split())
            elif line.startswith("deb "):
                words = re.sub(r"\[[^]]*\]", " ", line).split()  # drop `[signed-by=...]`
                if len(words) >= 2:
                    candidates.append(words[1])
    for uri in candidates:
        uri = uri.rstrip("/")
        if uri.startswith(("http://", "https://")) and uri.endswith("/debian"):
            return uri
    return DEFAULT_MIRROR


def check_tools() -> str:
    """debootstrap's path; what to do when it is missing or cannot run."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImagesError(
            f"debootstrap is not installed: --offline makes {OFFLINE_BASE} with it",
            "apt-get install debootstrap",
        )
    if os.geteuid() != 0:
        raise ImagesError(
            f"debootstrap needs root to make {OFFLINE_BASE}",
            "run `yardarm images build --offline` once as root (the base is kept)",
        )
    return debootstrap


def _empty(folder: Path, pattern: str = "*") -> None:
    for child in folder.glob(pattern):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _trim(rootfs: Path) -> None:
    """Leave out what no container uses; keep dpkg from putting it back."""
    for folder in TRIMMED:
        _empty(rootfs / folder)
    _empty(rootfs / "var/cache/apt/archives", "*.deb")
    _empty(rootfs / "var/lib/apt/lists", "*_*")  # the indexes; `partial/` and `lock` stay
    _empty(rootfs / "var/log", "*.log")
    _empty(rootfs / "dev")  # the runtime provides /dev
    excludes = rootfs / "etc/dpkg/dpkg.cfg.d"
    excludes.mkdir(parents=True, exist_ok=True)
    (excludes / "yardarm-slim").write_text(DPKG_EXCLUDES)


def make_offline_base(docker: str, work: Path, log: Path) -> None:
    """debootstrap a bookworm root filesystem under `work` and import it as the base
    with the `docker` CLI; debootstrap's output goes to `log`."""
    debootstrap = check_tools()
    work.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="base-", dir=work) as tmp, log.open("w") as out:
        rootfs = Path(tmp) / "rootfs"
        command = [
            debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}",
            SUITE, str(rootfs), mirror,
        ]  # fmt: skip
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        try:
            done = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise ImagesError(
                f"debootstrap took over {DEBOOTSTRAP_TIMEOUT_S:.0f} s; its log: {log}",
                f"check that {mirror} is reachable",
            ) from exc
        if done.returncode != 0:
            raise ImagesError(
                f"debootstrap failed (exit {done.returncode}); its log: {log}",
                f"check that {mirror} is reachable and has {SUITE}",
            )
        _trim(rootfs)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
            stdout=subprocess.PIPE,
            stderr=out,
        )
        try:
            imported = subprocess.run(
                [
                    docker, "import",
                    "--change", "ENV LANG=C.UTF-8",
                    "--change", 'CMD ["bash"]',
                    "-", OFFLINE_BASE,
                ],
                stdin=tar.stdout,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=IMPORT_TIMEOUT_S,
            )  # fmt: skip
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait(timeout=IMPORT_TIMEOUT_S)
        if tar.returncode != 0 or imported.returncode != 0:
            raise ImagesError(f"importing the base into Docker failed; the log: {log}")
