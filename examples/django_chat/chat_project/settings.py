"""Settings of the chat example: no database, one channel layer, everything else default.

Environment variables:

* ``REDIS_URL``: the Redis server every server process shares
  (default ``redis://127.0.0.1:6379``);
* ``DJANGO_ALLOWED_HOSTS``: comma-separated host names the site answers to,
  also the origins websockets are accepted from (default: loopback names);
* ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG=1``: as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

# The drop-in replacement for channels_redis: only the BACKEND path differs.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_compat.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    },
}

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "chat-example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

# "daphne" first makes `manage.py runserver` serve websockets too.
INSTALLED_APPS = ["daphne", "channels", "chat"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "chat_project.urls"
ASGI_APPLICATION = "chat_project.asgi.application"
DATABASES: dict[str, dict[str, str]] = {}
# The chat page is shared by the three examples: examples/chat.html.
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [Path(__file__).resolve().parent.parent.parent],
    }
]
USE_TZ = True
