"""Lua scripts, identified by SHA-1 so they can be run with EVALSHA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["Script"]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script. The pool runs it with EVALSHA and falls back to EVAL on NOSCRIPT."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())
