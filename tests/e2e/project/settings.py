"""Settings of the end-to-end test project.

The channel layer comes from the environment, so one project serves every backend:

* ``E2E_BACKEND``: ``channels_compat.core.RedisChannelLayer`` (default) or
  ``channels_compat.pubsub.RedisPubSubChannelLayer``;
* ``E2E_REDIS_URL``: the Redis server, e.g. ``redis://127.0.0.1:6379``.

The pub/sub layer is configured to tell consumers about lost and restored
subscriber connections (``redis.disconnect`` / ``redis.reconnect``, handled by
``redis_disconnect`` / ``redis_reconnect`` methods).
"""

from __future__ import annotations

import os

QUEUE_BACKEND = "channels_compat.core.RedisChannelLayer"
PUBSUB_BACKEND = "channels_compat.pubsub.RedisPubSubChannelLayer"

SECRET_KEY = "e2e-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True

# "channels" provides the runworker management command.
INSTALLED_APPS = ["channels"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "project.urls"
DATABASES: dict[str, dict[str, str]] = {}

ASGI_APPLICATION = "project.asgi.application"

E2E_BACKEND = os.environ.get("E2E_BACKEND", QUEUE_BACKEND)
E2E_REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379")

_config: dict[str, object] = {"hosts": [E2E_REDIS_URL]}
if E2E_BACKEND == PUBSUB_BACKEND:
    _config["on_disconnect"] = "redis.disconnect"
    _config["on_reconnect"] = "redis.reconnect"

CHANNEL_LAYERS = {"default": {"BACKEND": E2E_BACKEND, "CONFIG": _config}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
}
