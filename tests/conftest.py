"""Shared pytest configuration for the test suite."""

from __future__ import annotations

import pytest

pytest_plugins = ["anyio_layer.testing.pytest_plugin"]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on both anyio backends."""
    backend: str = request.param
    return backend
