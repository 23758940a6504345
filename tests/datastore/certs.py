"""Throwaway PKIs for tests: the control plane's own CA and certificates
(`yardarm.certificates`), each in a directory of its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yardarm.certificates import ensure_certificates


@dataclass(frozen=True)
class Leaf:
    """A certificate and its key as PEM files, and the CA file that verifies it."""

    cert: Path
    key: Path
    ca: Path


class TestCA:
    """A stack CA whose `ca_file` a test hands to whoever must trust it."""

    __test__ = False  # not a pytest class

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_file = ensure_certificates(root, []).ca_file

    def leaf(self, name: str) -> Leaf:
        """A certificate for server and client use, valid for 127.0.0.1 and localhost."""
        own = ensure_certificates(self.root, [name]).service(name)
        return Leaf(own.cert_file, own.key_file, self.ca_file)
