"""The stack's certificate authority and one certificate per service, for TLS links.

With `tls.enabled` in the topology, the control plane makes a private CA for the stack
(once; its key never leaves `<home>/tls/`) and a certificate per service signed by it,
valid for the names the service is reached by (loopback locally). Every service serves
HTTPS with its certificate, trusts only the stack's CA for its calls out, and presents
its certificate as a client too, which the datastore's Raft listener requires.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# cryptography is imported where certificates are made: every CLI command reaches this
# module (for the paths), and only `yardarm up` with TLS needs the rest.
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest lifetime clients such as browsers accept
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServiceCertificate:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class StackCertificates:
    """Where one stack's CA and service certificates are."""

    home: Path

    @property
    def directory(self) -> Path:
        return self.home / "tls"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key_file(self) -> Path:
        return self.directory / "ca.key"

    def service(self, name: str) -> ServiceCertificate:
        return ServiceCertificate(self.directory / f"{name}.crt", self.directory / f"{name}.key")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _ca(certs: StackCertificates) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if certs.ca_file.is_file() and certs.ca_key_file.is_file():
        cert = x509.load_pem_x509_certificate(certs.ca_file.read_bytes())
        key = serialization.load_pem_private_key(certs.ca_key_file.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{certs.ca_key_file} is not an EC key")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    # One CA per stack home, named by a digest of the path (a CN holds at most 64 chars).
    tag = hashlib.sha256(str(certs.home.resolve()).encode()).hexdigest()[:12]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"yardarm stack CA {tag}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(certs.ca_key_file, _key_pem(key))
    certs.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _leaf(
    path: ServiceCertificate,
    service: str,
    hosts: tuple[str, ...],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(path.key_file, _key_pem(key))
    path.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _valid(path: ServiceCertificate, ca_cert: x509.Certificate, hosts: tuple[str, ...]) -> bool:
    """An existing certificate is kept while it is signed by this CA, names the same
    hosts and has a month left."""
    from cryptography import x509

    if not (path.cert_file.is_file() and path.key_file.is_file()):
        return False
    cert = x509.load_pem_x509_certificate(path.cert_file.read_bytes())
    if cert.issuer != ca_cert.subject:
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left < datetime.timedelta(days=30):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san) == set(_names(hosts))


def ensure_certificates(
    home: Path, services: Iterable[str], hosts: tuple[str, ...] = LOOPBACK_NAMES
) -> StackCertificates:
    """The stack's CA and a certificate for each service (made once, kept while valid)."""
    certs = StackCertificates(home)
    certs.directory.mkdir(parents=True, exist_ok=True)
    certs.directory.chmod(0o700)
    ca_cert, ca_key = _ca(certs)
    for service in services:
        path = certs.service(service)
        if not _valid(path, ca_cert, hosts):
            _leaf(path, service, hosts, ca_cert, ca_key)
    return certs
