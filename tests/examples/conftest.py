"""Fixtures of the example tests (helpers are in ``examples_support.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from anyio_layer.testing import RedisServer


@pytest.fixture(scope="module")
def example_redis() -> Iterator[RedisServer]:
    """A private Redis for one test module's example servers.

    Private rather than the session's shared server: the example servers stay
    connected for the whole module, and other tests flush the shared one.
    """
    server = RedisServer.launch()
    try:
        yield server
    finally:
        server.close()
