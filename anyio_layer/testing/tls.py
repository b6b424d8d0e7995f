"""Certificates for TLS test servers: a CA made for the purpose, and what it signs.

Owns :class:`TLSFiles` and :func:`generate_tls_files` (with the ``cryptography``
package, or else the ``openssl`` command). It starts no server and writes no
``redis.conf`` lines (:mod:`.config` does). Covered by the TLS tests of
tests/test_testing.py.
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import os
import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["TLSFiles", "generate_tls_files"]


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS test server: a CA, and a server and a client certificate it signed.

    The server certificate is valid for ``localhost``, ``127.0.0.1`` and
    ``::1`` (subjectAltName DNS and IP entries) and may also be used as a client
    certificate (replication uses it). Keys are unencrypted, mode 0600.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, client_cert: bool = True) -> ssl.SSLContext:
        """An :class:`ssl.SSLContext` that trusts the CA and, optionally, presents the client cert.

        Hostname checking stays on: connect with ``server_hostname="127.0.0.1"``
        or ``"localhost"``.
        """
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if client_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def copy_to(self, directory: Path) -> TLSFiles:
        """Copy the six files into ``directory`` (created if needed) and describe the copies."""
        directory.mkdir(parents=True, exist_ok=True)
        copies: dict[str, Path] = {}
        for name in ("ca_cert", "ca_key", "server_cert", "server_key", "client_cert", "client_key"):
            source: Path = getattr(self, name)
            target = directory / source.name
            shutil.copyfile(source, target)
            if name.endswith("_key"):
                target.chmod(0o600)
            copies[name] = target
        return TLSFiles(**copies)


def _tls_file_paths(directory: Path) -> TLSFiles:
    return TLSFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


def generate_tls_files(
    directory: Path,
    *,
    backend: Literal["auto", "cryptography", "openssl"] = "auto",
) -> TLSFiles:
    """Create a self-signed CA and a server and a client certificate signed by it.

    The files are written to ``directory`` (created if missing) as ``ca.crt``,
    ``ca.key``, ``server.crt``, ``server.key``, ``client.crt`` and
    ``client.key``. Keys are ECDSA P-256; certificates are valid from a day ago
    for a year.

    Args:
        directory: where to write the files.
        backend: ``"cryptography"`` (the Python package), ``"openssl"`` (the
            command-line tool) or ``"auto"``: the package if installed, else
            the tool.

    Raises:
        RuntimeError: neither is available (the message names the extra to
            install), or ``openssl`` failed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = _tls_file_paths(directory)
    if backend == "auto":
        have_cryptography = importlib.util.find_spec("cryptography") is not None
        if have_cryptography:
            backend = "cryptography"
        elif shutil.which("openssl") is not None:
            backend = "openssl"
        else:
            raise RuntimeError(
                "TLS test servers need certificates, made either with the 'cryptography' "
                "package (pip install 'anyio-channel-layer[cryptography]') or with the "
                "openssl command-line tool; neither is available."
            )
    if backend == "cryptography":
        _generate_with_cryptography(files)
    elif backend == "openssl":
        _generate_with_openssl(files)
    else:
        raise ValueError(
            f"unknown TLS backend {backend!r}; use 'auto', 'cryptography' or 'openssl'"
        )
    return files


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _generate_with_cryptography(files: TLSFiles) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(days=1)
    not_after = now + datetime.timedelta(days=365)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "anyio_layer.testing"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )

    def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(path, pem)

    def save_cert(cert: x509.Certificate, path: Path) -> None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("anyio_layer test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    save_key(ca_key, files.ca_key)
    save_cert(ca_cert, files.ca_cert)

    def leaf(
        common_name: str,
        usages: list[x509.ObjectIdentifier],
        alt_names: list[x509.GeneralName],
        cert_path: Path,
        key_path: Path,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        save_key(key, key_path)
        save_cert(builder.sign(ca_key, hashes.SHA256()), cert_path)

    leaf(
        "localhost",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ],
        files.server_cert,
        files.server_key,
    )
    leaf(
        "anyio_layer test client",
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        [],
        files.client_cert,
        files.client_key,
    )


_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _generate_with_openssl(files: TLSFiles) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError(
            "the openssl command-line tool is not on PATH; install it, or install the "
            "'cryptography' package (pip install 'anyio-channel-layer[cryptography]')"
        )
    directory = files.ca_cert.parent
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)

    def run(*args: str) -> None:
        completed = subprocess.run(
            [openssl, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"openssl {' '.join(args)} failed with status {completed.returncode}:\n"
                f"{completed.stderr.strip()}"
            )

    def new_key(path: Path) -> None:
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
        path.chmod(0o600)

    subject = "/O=anyio_layer.testing/CN="
    new_key(files.ca_key)
    run(
        "req", "-x509", "-new", "-sha256", "-days", "365",
        "-key", str(files.ca_key), "-subj", subject + "anyio_layer test CA",
        "-config", str(config), "-extensions", "ca", "-out", str(files.ca_cert),
    )  # fmt: skip
    for section, common_name, cert, key in (
        ("server", "localhost", files.server_cert, files.server_key),
        ("client", "anyio_layer test client", files.client_cert, files.client_key),
    ):
        new_key(key)
        csr = directory / f"{section}.csr"
        run(
            "req", "-new", "-sha256", "-key", str(key), "-subj", subject + common_name,
            "-config", str(config), "-out", str(csr),
        )  # fmt: skip
        run(
            "x509", "-req", "-sha256", "-days", "365", "-in", str(csr),
            "-CA", str(files.ca_cert), "-CAkey", str(files.ca_key),
            "-set_serial", f"0x{secrets.token_hex(16)}",
            "-extfile", str(config), "-extensions", section, "-out", str(cert),
        )  # fmt: skip
        csr.unlink()
    config.unlink()
