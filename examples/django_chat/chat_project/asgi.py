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

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from django.conf import settings  # noqa: E402

# examples/: the page and the start-up check are shared by the examples.
sys.path.append(str(Path(__file__).resolve().parents[2]))
from redis_check import require_redis  # noqa: E402

# Check Redis before the server listens: a wrong REDIS_URL stops daphne with one
# line on stderr (and status 1), rather than a page that cannot join its room.
require_redis(
    settings.REDIS_URL,
    "django chat",
    source="$REDIS_URL" if "REDIS_URL" in os.environ else "the default",
    hint="Or run examples/demo.py, which starts a private one.",
)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
