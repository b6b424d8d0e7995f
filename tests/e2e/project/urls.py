"""No HTTP views: the end-to-end tests only use websockets and the worker channel."""

from __future__ import annotations

urlpatterns: list[object] = []
