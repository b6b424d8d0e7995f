"""Translation of core exceptions into the ones Channels code expects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from channels.exceptions import ChannelFull

from anyio_layer import exceptions

__all__ = ["channels_errors"]


@contextlib.contextmanager
def channels_errors() -> Iterator[None]:
    """Raise ``channels.exceptions.ChannelFull`` for the core's ChannelFull.

    Invalid names already raise ``TypeError`` subclasses with Channels'
    wording, and everything else derives from
    :class:`anyio_layer.exceptions.ChannelLayerError`.
    """
    try:
        yield
    except exceptions.ChannelFull as exc:
        raise ChannelFull(str(exc)) from exc
