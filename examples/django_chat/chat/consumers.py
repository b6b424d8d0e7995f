"""The chat consumer: one group per room, one channel per websocket.

Events sent to the browser (JSON):

* ``{"type": "joined", "room": ..., "server": ...}`` once the socket is in its room;
* ``{"type": "message", "room": ..., "user": ..., "text": ..., "server": ...}`` for
  every line said in the room, by anyone on any server process (``server`` is
  the process the author is connected to);
* ``{"type": "error", "text": ...}`` when a line could not be sent.

The browser sends ``{"user": ..., "text": ...}``. The channel-layer message is
``{"type": "chat.message", "room", "user", "text", "server"}``, the same as in
the trio and Starlette examples, so servers of all three can share one room.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from anyio_layer import RedisError

MAX_TEXT = 1000
MAX_USER = 40


def server_label(scope: Mapping[str, Any]) -> str:
    host, port = scope.get("server") or ("?", 0)
    return f"django pid {os.getpid()} on {host}:{port}"


class ChatConsumer(AsyncJsonWebsocketConsumer):
    room = ""
    group = ""

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        try:
            await self.channel_layer.group_add(f"chat.{self.room}", self.channel_name)
        except RedisError as exc:
            # Redis is unreachable: say so in the page's log, then close with an
            # application code (4000-4999), the same in every example.
            await self.accept()
            await self.send_json({"type": "error", "text": f"cannot join the room: {exc}"})
            await self.close(code=4500)
            return
        self.group = f"chat.{self.room}"
        await self.accept()
        await self.send_json(
            {"type": "joined", "room": self.room, "server": server_label(self.scope)}
        )

    async def disconnect(self, code: int) -> None:
        if self.group:
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except RedisError:  # Redis is gone: the membership expires by itself
                pass

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Like AsyncJsonWebsocketConsumer.receive, but bad input is ignored
        # rather than raised (which would log a traceback and close the socket).
        try:
            content = json.loads(text_data or bytes_data or b"")
        except ValueError:
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("text"), str):
            return
        text = content["text"].strip()[:MAX_TEXT]
        user = str(content.get("user") or "anonymous").strip()[:MAX_USER]
        if not text:
            return
        message = {
            "type": "chat.message",
            "room": self.room,
            "user": user,
            "text": text,
            "server": server_label(self.scope),
        }
        try:
            await self.channel_layer.group_send(self.group, message)
        except RedisError as exc:  # Redis is unreachable: tell this user, keep the socket
            await self.send_json({"type": "error", "text": f"not sent: {exc}"})

    async def chat_message(self, event: dict[str, Any]) -> None:
        """A line said in the room (handler of ``chat.message`` layer messages)."""
        await self.send_json(
            {
                "type": "message",
                "room": event.get("room", self.room),
                "user": event.get("user", "?"),
                "text": event.get("text", ""),
                "server": event.get("server", "?"),
            }
        )
