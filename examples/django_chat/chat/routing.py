"""Websocket routes: ``/ws/chat/<room>/``."""

from __future__ import annotations

from django.urls import re_path

from .consumers import ChatConsumer

#: Room names are valid channel-layer group names once prefixed with "chat.".
ROOM_NAME = r"(?P<room>[-A-Za-z0-9_.]{1,80})"

websocket_urlpatterns = [
    re_path(rf"^ws/chat/{ROOM_NAME}/$", ChatConsumer.as_asgi()),
]
