"""Keeping secrets out of what the ``hosts`` parser shows in its error messages.

Owns :func:`describe`, :func:`redact` and :func:`redact_url`: a ``hosts``
entry as it may be printed, with every password replaced by ``***``. Pure
string and dict work; it validates nothing. Tested in ``tests/test_hosts.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["describe", "redact", "redact_url"]


def describe(value: object) -> str:
    """``value`` as an error message may show it: a redacted URL or dict, else its repr."""
    if isinstance(value, str):
        return repr(redact_url(value))
    if isinstance(value, Mapping):
        return str(redact(dict(value)))
    return repr(value)


def redact(entry: dict[str, Any]) -> dict[str, Any]:
    """A copy of a dict entry with every ``*password*`` value hidden.

    So are the password in its ``address`` URL and those in its ``sentinel_kwargs``.
    """
    shown: dict[str, Any] = {}
    for key, value in entry.items():
        if "password" in str(key):
            shown[key] = "***"
        elif key == "address" and isinstance(value, str):
            shown[key] = redact_url(value)
        elif key == "sentinel_kwargs" and isinstance(value, Mapping):
            shown[key] = redact(dict(value))
        else:
            shown[key] = value
    return shown


def redact_url(url: str) -> str:
    """``url`` with the password of its user info, if any, replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    return url.replace(f":{password}@", ":***@", 1)
