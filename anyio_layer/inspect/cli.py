"""The ``anyio-layer`` command (also ``python -m anyio_layer``): options, running, output.

This module owns the command line: parsing ``--hosts`` (the layers' ``hosts``
syntax: URLs, or JSON for the dict forms), running
:func:`~anyio_layer.inspect.scan.read_snapshot` on the chosen anyio backend,
the progress line, printing reports as tables or ``--json``, and exit codes:

* 0: done;
* 1: a server could not be reached, refused the credentials or failed a command;
* 2: a usage error (bad option, invalid URL or ``hosts`` entry, invalid prefix).

Errors are printed as one line on stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import anyio

from ..exceptions import ConfigurationError, RedisError
from ..redis.hosts import DEFAULT_HOST, ClusterConfig
from . import report
from .scan import DEFAULT_SCAN_COUNT, Snapshot, check_target, read_snapshot

__all__ = ["main"]

PROG = "anyio-layer"

_SECTIONS = ("summary", "groups", "channels", "processes", "dead")

_COLUMNS: dict[str, tuple[str, ...]] = {
    "groups": ("group", "members", "oldest_member_age", "newest_member_age", "ttl", "server"),
    "members": ("group", "channel", "age"),
    "channels": ("channel", "kind", "backlog", "oldest_age", "ttl", "server"),
    "processes": ("process", "backlog", "oldest_age", "ttl", "memberships", "server"),
    "undrained_channels": ("channel", "kind", "backlog", "oldest_age", "ttl", "server"),
    "dead_members": ("group", "channel", "age", "reason"),
    "members_without_process_key": ("group", "channel", "age"),
}

_DEAD_TITLES = {
    "undrained_channels": "Channels nobody drains",
    "dead_members": "Memberships that look dead",
    "members_without_process_key": (
        "Memberships whose process has no key (dead, or idle: a live process has a key "
        "only while messages wait)"
    ),
}


class UsageError(Exception):
    """A mistake on the command line (exit status 2)."""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where to look")
    where.add_argument(
        "--hosts",
        action="append",
        metavar="HOSTS",
        help=(
            "servers, in the layers' hosts syntax: a URL (redis://, rediss://, unix://, "
            "valkey://, redis+cluster:// for the seeds of a cluster), several separated by "
            "commas or given with several --hosts, or JSON (a list, or one dict such as a "
            f"Sentinel entry). Default: {DEFAULT_HOST}"
        ),
    )
    where.add_argument(
        "--prefix", default="asgi", help="the layers' key prefix (default: %(default)s)"
    )
    output = common.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print JSON, for scripts")
    output.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="show at most N rows per table (default: 50 in tables, all with --json)",
    )
    output.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr even when it is not a terminal",
    )
    tuning = common.add_argument_group("tuning")
    tuning.add_argument(
        "--stale-after",
        type=_positive_float,
        default=report.DEFAULT_STALE_AFTER,
        metavar="SECONDS",
        help="a channel whose oldest message waited longer is undrained (default: %(default)s)",
    )
    tuning.add_argument(
        "--group-expiry",
        type=_positive_float,
        default=report.DEFAULT_GROUP_EXPIRY,
        metavar="SECONDS",
        help="the layers' group_expiry; older memberships are dead (default: %(default)g)",
    )
    tuning.add_argument(
        "--scan-count",
        type=_positive_int,
        default=DEFAULT_SCAN_COUNT,
        metavar="N",
        help="SCAN COUNT hint, also the keys read per pipeline (default: %(default)s)",
    )
    tuning.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help=argparse.SUPPRESS
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Inspect the Redis key space of anyio-layer / channels_redis queue layers: "
            "groups, channel backlogs, process keys, and what looks dead. Read-only; "
            "uses SCAN, never KEYS."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    helps = {
        "inspect": "everything below, one section after the other",
        "summary": "totals: groups, memberships, channels, messages waiting, dead counts",
        "groups": "groups with member counts and membership ages",
        "channels": "channels with their backlog, oldest message age and TTL",
        "processes": "process keys (one per process with messages waiting) and backlogs",
        "dead": "undrained channels and memberships that look dead",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, parents=[common], help=text, description=text + ".")
        if name in ("groups", "inspect"):
            sub.add_argument(
                "--members", action="store_true", help="also list every member of every group"
            )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def parse_hosts_option(values: Sequence[str] | None) -> list[Any]:
    """The ``--hosts`` values as a ``hosts`` list (raising UsageError for bad JSON)."""
    hosts: list[Any] = []
    for value in values or [DEFAULT_HOST]:
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                decoded = json.loads(text)
            except ValueError as exc:
                raise UsageError(f"--hosts {text[:40]!r}... is not valid JSON: {exc}") from None
            hosts.extend(decoded if isinstance(decoded, list) else [decoded])
        else:
            hosts.extend(part.strip() for part in text.split(",") if part.strip())
    return hosts


class _ProgressLine:
    """A self-overwriting ``keys read`` line on stderr, at most five updates a second."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last = 0.0
        self._shown = False

    def __call__(self, scanned: int, estimated: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.2 and scanned < estimated:
            return
        self._last = now
        self._stream.write(f"\rreading keys: {scanned:,} of about {estimated:,} in the databases")
        self._stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _sections(args: argparse.Namespace, snapshot: Snapshot) -> dict[str, Any]:
    tuning = {"stale_after": args.stale_after, "group_expiry": args.group_expiry}
    wanted = _SECTIONS if args.command == "inspect" else (args.command,)
    members = getattr(args, "members", False)
    out: dict[str, Any] = {}
    for section in wanted:
        if section == "summary":
            out[section] = report.summary(snapshot, **tuning)
        elif section == "groups":
            out[section] = report.groups(snapshot, members=members or args.json)
        elif section == "channels":
            out[section] = report.channels(snapshot)
        elif section == "processes":
            out[section] = report.processes(snapshot)
        else:
            out[section] = report.dead(snapshot, **tuning)
    return out


def _render(sections: dict[str, Any], limit: int | None, titled: bool) -> str:
    blocks = []
    for name, content in sections.items():
        title = name.capitalize()
        if name == "summary":
            width = max(map(len, content))
            text = "\n".join(
                f"{key.replace('_', ' ') + ':':<{width + 2}}{report.format_cell(key, value)}"
                for key, value in content.items()
            )
        elif name == "dead":
            parts = [
                f"{_DEAD_TITLES[kind]}:\n"
                + report.format_table(rows, _COLUMNS[kind], limit=limit, empty="  (none)")
                for kind, rows in content.items()
            ]
            text = "\n\n".join(parts)
        else:
            text = report.format_table(content, _COLUMNS[name], limit=limit)
            if name == "groups" and content and "member_list" in content[0]:
                rows = [
                    {"group": group["group"], **member}
                    for group in content
                    for member in group["member_list"]
                ]
                text += "\n\n" + report.format_table(rows, _COLUMNS["members"], limit=limit)
        blocks.append(f"== {title} ==\n{text}" if titled else text)
    return "\n\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        hosts = parse_hosts_option(args.hosts)
        configs = check_target(hosts, args.prefix)  # usage errors before any connection
    except (UsageError, ConfigurationError) as exc:
        _error(f"error: {_one_line(exc)}")
        return 2
    show_progress = args.progress or sys.stderr.isatty()
    progress = _ProgressLine(sys.stderr) if show_progress else None

    async def read() -> Snapshot:
        return await read_snapshot(
            hosts, args.prefix, progress=progress, scan_count=args.scan_count
        )

    try:
        snapshot = anyio.run(read, backend=args.backend)
    except ConfigurationError as exc:
        _error(f"error: {_one_line(exc)}")
        return 2
    except (RedisError, OSError) as exc:
        where = configs if isinstance(configs, ClusterConfig) else ", ".join(map(str, configs))
        _error(f"cannot read {where}: {_one_line(exc)}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if progress is not None:
            progress.finish()
    sections = _sections(args, snapshot)
    if args.json:
        if args.limit is not None:
            sections = {name: _limited(name, value, args.limit) for name, value in sections.items()}
        content = sections if args.command == "inspect" else sections[args.command]
        text = json.dumps(content, indent=2)
    else:
        limit = 50 if args.limit is None else args.limit
        text = _render(sections, limit, titled=args.command == "inspect")
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `anyio-layer channels | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _limited(section: str, content: Any, limit: int) -> Any:
    if section == "dead":
        return {kind: rows[:limit] for kind, rows in content.items()}
    if isinstance(content, list):
        return content[:limit]
    return content  # the summary


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
