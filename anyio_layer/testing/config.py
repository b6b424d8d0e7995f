"""Where a test process lives and the ``redis.conf`` lines every one of them shares.

Owns the loopback address, the private temporary directory of each process, the
quoting of ``redis.conf`` values and the configuration lines common to servers
and Sentinels (and those that turn TLS on). It starts nothing and picks no port
(:mod:`.process` does). Covered by tests/test_testing.py.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .tls import TLSFiles

__all__ = ["LOOPBACK", "common_config", "private_directory", "quote_value", "tls_config"]

#: Every test process listens on this address only.
LOOPBACK = "127.0.0.1"


def private_directory(kind: str, unix_socket: bool = False) -> Path:
    """A new temporary directory for one process (short enough for its unix socket)."""
    directory = Path(tempfile.mkdtemp(prefix=f"anyio-layer-{kind}-"))
    # Unix socket paths are limited to ~104 bytes; a long $TMPDIR (macOS) can exceed that.
    if unix_socket and len(str(directory / "redis.sock")) > 100 and os.path.isdir("/tmp"):
        directory.rmdir()
        directory = Path(tempfile.mkdtemp(prefix=f"anyio-layer-{kind}-", dir="/tmp"))
    return directory


def quote_value(value: str | Path) -> str:
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


def common_config(directory: Path, log_path: Path) -> list[str]:
    """The ``redis.conf`` lines every process started here has, servers and Sentinels alike."""
    return [
        "# Written by anyio_layer.testing for a throwaway test server.",
        "daemonize no",
        f"bind {LOOPBACK}",
        "protected-mode no",
        f"dir {quote_value(directory)}",
        f"logfile {quote_value(log_path)}",
        "loglevel notice",
    ]


def tls_config(files: TLSFiles) -> list[str]:
    """The ``redis.conf`` lines that make a process serve TLS with ``files``."""
    return [
        f"tls-cert-file {quote_value(files.server_cert)}",
        f"tls-key-file {quote_value(files.server_key)}",
        f"tls-ca-cert-file {quote_value(files.ca_cert)}",
        "tls-auth-clients optional",
    ]
