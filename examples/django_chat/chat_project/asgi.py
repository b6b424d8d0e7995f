"""The ASGI application: ``daphne chat_project.asgi:application``.

HTTP goes to Django (the page), websockets to the chat consumer. Websocket
handshakes are accepted only from the origins in ``ALLOWED_HOSTS``, so another
site cannot open a chat connection in a visitor's name.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat_project.settings")

# Set Django up before importing anything that uses settings or models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
