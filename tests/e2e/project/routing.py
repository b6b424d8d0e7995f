"""Websocket routes and worker channels of the end-to-end test project."""

from __future__ import annotations

from django.urls import path

from . import consumers

#: The channel ``runworker`` listens on (``python -m django runworker e2e-worker``).
WORKER_CHANNEL = consumers.WORKER_CHANNEL

websocket_urlpatterns = [
    path("ws/chat/<str:room>/", consumers.ChatConsumer.as_asgi()),
    path("ws/sync-chat/<str:room>/", consumers.SyncChatConsumer.as_asgi()),
    path("ws/plain-chat/<str:room>/", consumers.PlainChatConsumer.as_asgi()),
    path("ws/ask/", consumers.AskConsumer.as_asgi()),
]

worker_consumers = {WORKER_CHANNEL: consumers.WorkerConsumer.as_asgi()}
