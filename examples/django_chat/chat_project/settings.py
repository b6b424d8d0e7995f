"""Settings of the chat example: no database, one channel layer, everything else default.

Environment variables:

* ``REDIS_URL``: the Redis server every server process shares
  (default ``redis://127.0.0.1:6379``);
* ``DJANGO_ALLOWED_HOSTS``: comma-separated host names the site answers to,
  also the origins websockets are accepted from (default: loopback names);
* ``DJANGO_TIME_ZONE``: the zone of log times (default: the system's, else UTC);
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


def system_time_zone() -> str:
    """The machine's time zone (the target of /etc/localtime), else UTC.

    Django sets the process's zone to TIME_ZONE (default "America/Chicago"),
    which also dates the server's log lines: following the system's zone keeps
    them in step with the system clock.
    """
    import zoneinfo

    target = os.path.realpath("/etc/localtime")
    name = target.split("/zoneinfo/", 1)[1] if "/zoneinfo/" in target else ""
    try:
        zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return "UTC"
    return name


TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE") or system_time_zone()
