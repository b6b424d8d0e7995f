"""ASGI entry point: ``daphne project.asgi:application`` (and ``runworker``'s application)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Set up Django before anything imports models or settings-dependent code.
django_asgi_app = get_asgi_application()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402

from .routing import websocket_urlpatterns, worker_consumers  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
        "channel": ChannelNameRouter(worker_consumers),
    }
)
