"""Shaping a :class:`~anyio_layer.inspect.scan.Snapshot` into reports, and reports into tables.

This module owns *what the reports say*: every function takes a snapshot and
returns JSON-ready dicts and lists (ages and TTLs in seconds, measured from
the snapshot's ``taken_at``), and :func:`format_table` turns rows into the
aligned text the command prints. Nothing here does I/O.

What looks dead (:func:`dead`):

* an *undrained channel* is a channel key whose oldest message has waited
  longer than ``stale_after`` seconds: a live reader takes messages within
  milliseconds, so nobody is reading it (or its consumer is stuck). For a
  process key, that means the process is gone or hung;
* a *dead member* is a group membership whose channel is undrained (for a
  process-local channel: its process key), or which is older than
  ``group_expiry`` (the layer drops it at the group's next send);
* a member *without a process key* is a process-local channel whose process
  has no key right now. That is what a dead process whose group got no
  traffic since ``expiry`` looks like, but also what every idle live process
  looks like (its key exists only while messages wait), so these are listed
  apart, as unconfirmed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..messages import non_local_name
from .scan import ChannelInfo, Snapshot

__all__ = [
    "DEFAULT_GROUP_EXPIRY",
    "DEFAULT_STALE_AFTER",
    "channels",
    "dead",
    "format_age",
    "format_cell",
    "format_table",
    "groups",
    "processes",
    "summary",
]

#: Seconds a message may wait before its channel counts as undrained.
DEFAULT_STALE_AFTER = 10.0
#: The layers' default ``group_expiry``.
DEFAULT_GROUP_EXPIRY = 86400.0

Row = dict[str, Any]


def _age(snapshot: Snapshot, when: float | None) -> float | None:
    return None if when is None else round(max(0.0, snapshot.taken_at - when), 3)


def _ttl(ttl: float | None) -> float | None:
    return None if ttl is None else round(ttl, 3)


def _channel_row(snapshot: Snapshot, channel: ChannelInfo) -> Row:
    return {
        "channel": channel.name,
        "kind": "process" if channel.process_local else "channel",
        "server": channel.server,
        "backlog": channel.backlog,
        "oldest_age": _age(snapshot, channel.oldest),
        "ttl": _ttl(channel.ttl),
    }


def groups(snapshot: Snapshot, *, members: bool = True) -> list[Row]:
    """Every group: member count, the ages of its oldest and newest memberships, TTL.

    With ``members``, each row also lists ``{"channel", "age"}`` per member, oldest first.
    """
    rows = []
    for group in snapshot.groups:
        ages = [_age(snapshot, joined) for _, joined in group.members]
        row: Row = {
            "group": group.name,
            "server": group.server,
            "members": len(group.members),
            "oldest_member_age": ages[0] if ages else None,
            "newest_member_age": ages[-1] if ages else None,
            "ttl": _ttl(group.ttl),
        }
        if members:
            row["member_list"] = [
                {"channel": channel, "age": age}
                for (channel, _), age in zip(group.members, ages, strict=True)
            ]
        rows.append(row)
    return rows


def channels(snapshot: Snapshot, *, include_process_keys: bool = True) -> list[Row]:
    """Every channel key with a backlog, the biggest backlog first."""
    rows = [
        _channel_row(snapshot, channel)
        for channel in snapshot.channels
        if include_process_keys or not channel.process_local
    ]
    rows.sort(key=lambda row: (-row["backlog"], row["channel"]))
    return rows


def processes(snapshot: Snapshot) -> list[Row]:
    """Every process key (one per layer instance with messages waiting) and its memberships."""
    memberships: dict[str, int] = {}
    for group in snapshot.groups:
        for member, _ in group.members:
            if "!" in member:
                name = non_local_name(member)
                memberships[name] = memberships.get(name, 0) + 1
    rows = []
    for channel in snapshot.channels:
        if channel.process_local:
            row = _channel_row(snapshot, channel)
            del row["kind"]
            row["process"] = row.pop("channel")
            row["memberships"] = memberships.get(channel.name, 0)
            rows.append(row)
    rows.sort(key=lambda row: (-row["backlog"], row["process"]))
    return rows


def dead(
    snapshot: Snapshot,
    *,
    stale_after: float = DEFAULT_STALE_AFTER,
    group_expiry: float = DEFAULT_GROUP_EXPIRY,
) -> dict[str, list[Row]]:
    """What looks dead (see the module docstring): three lists of rows."""
    by_name = {channel.name: channel for channel in snapshot.channels}
    undrained = {
        channel.name
        for channel in snapshot.channels
        if (_age(snapshot, channel.oldest) or 0.0) > stale_after
    }
    dead_members: list[Row] = []
    keyless: list[Row] = []
    for group in snapshot.groups:
        for channel, joined in group.members:
            age = _age(snapshot, joined)
            key_name = non_local_name(channel)
            row: Row = {"group": group.name, "channel": channel, "age": age}
            if key_name in undrained:
                oldest = _age(snapshot, by_name[key_name].oldest)
                what = "process key" if "!" in channel else "channel"
                dead_members.append({**row, "reason": f"{what} not drained for {oldest}s"})
            elif age is not None and age > group_expiry:
                dead_members.append({**row, "reason": f"membership older than {group_expiry:g}s"})
            elif "!" in channel and key_name not in by_name:
                keyless.append({**row, "process": key_name})
    stuck = [_channel_row(snapshot, by_name[name]) for name in undrained]
    stuck.sort(key=lambda row: (-(row["oldest_age"] or 0.0), row["channel"]))
    return {
        "undrained_channels": stuck,
        "dead_members": dead_members,
        "members_without_process_key": keyless,
    }


def summary(
    snapshot: Snapshot,
    *,
    stale_after: float = DEFAULT_STALE_AFTER,
    group_expiry: float = DEFAULT_GROUP_EXPIRY,
) -> Row:
    """Totals over the snapshot, and how long reading it took."""
    looks_dead = dead(snapshot, stale_after=stale_after, group_expiry=group_expiry)
    oldest = min((c.oldest for c in snapshot.channels if c.oldest is not None), default=None)
    process_keys = sum(1 for channel in snapshot.channels if channel.process_local)
    return {
        "prefix": snapshot.prefix,
        "cluster": snapshot.cluster,
        "servers": list(snapshot.servers),
        "groups": len(snapshot.groups),
        "memberships": sum(len(group.members) for group in snapshot.groups),
        "channels": len(snapshot.channels) - process_keys,
        "process_keys": process_keys,
        "messages_waiting": sum(channel.backlog for channel in snapshot.channels),
        "oldest_message_age": _age(snapshot, oldest),
        "undrained_channels": len(looks_dead["undrained_channels"]),
        "dead_members": len(looks_dead["dead_members"]),
        "members_without_process_key": len(looks_dead["members_without_process_key"]),
        "other_keys": snapshot.other_keys,
        "keys_scanned": snapshot.keys_scanned,
        "scan_seconds": round(snapshot.elapsed, 3),
    }


# -- text output ------------------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """A short duration: ``0.4s``, ``12s``, ``5m07s``, ``3h02m``, ``2d05h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_cell(column: str, value: object) -> str:
    """One table cell: ages and TTLs as durations, None as ``-``, lists joined."""
    if value is None:
        return "-"
    if column.endswith("age") or column == "ttl":
        return format_age(value) if isinstance(value, (int, float)) else str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    *,
    limit: int | None = None,
    empty: str = "(none)",
) -> str:
    """Rows as an aligned text table with a header; at most ``limit`` rows, then a count."""
    if not rows:
        return empty
    shown = rows if limit is None else rows[:limit]
    cells = [[format_cell(column, row.get(column)) for column in columns] for row in shown]
    header = [column.upper().replace("_", " ") for column in columns]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(columns))]
    numeric = [
        all(isinstance(row.get(column), (int, float)) or row.get(column) is None for row in shown)
        for column in columns
    ]

    def line(values: Iterable[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [line(header), *(line(values) for values in cells)]
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more (use --limit or --json)")
    return "\n".join(lines)
