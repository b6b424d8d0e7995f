"""The chat consumer: one group per room, one channel per websocket.

Events sent to the browser (JSON):

* ``{"type": "joined", "room": ..., "server": ...}`` once the socket is in its room;
* ``{"type": "message", "room": ..., "user": ..., "text": ..., "server": ...}`` for
  every line said in the room, by anyone on any server process (``server`` is
  the process the author is connected to);
* ``{"type": "error", "text": ...}`` when Redis cannot be reached: the room
  cannot be joined, a line was not sent, or the connection to Redis was lost
  (noticed within ``MEMBERSHIP_REFRESH`` seconds). The socket is then closed
  with code 4500, and the page reconnects.

The browser sends ``{"user": ..., "text": ...}``. The channel-layer message is
``{"type": "chat.message", "room", "user", "text", "server"}``, the same as in
the trio and Starlette examples, so servers of all three can share one room.
Error texts are plain words for the page; the details go to the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from anyio_layer import RedisError

MAX_TEXT = 1000
MAX_USER = 40
#: Seconds between two renewals of a socket's room membership. Renewing finds
#: out that Redis is gone (the socket is closed and the page reconnects) and
#: restores a membership that a Redis restart has forgotten.
MEMBERSHIP_REFRESH = 3.0
#: Close code for "Redis cannot be reached" (an application code, 4000-4999,
#: the same in every example).
REDIS_UNREACHABLE = 4500
NO_REDIS = "the chat server cannot reach Redis"

logger = logging.getLogger("chat")


def server_label(scope: Mapping[str, Any]) -> str:
    host, port = scope.get("server") or ("?", 0)
    return f"django pid {os.getpid()} on {host}:{port}"


class ChatConsumer(AsyncJsonWebsocketConsumer):
    room = ""
    group = ""
    refresher: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        try:
            await self.channel_layer.group_add(f"chat.{self.room}", self.channel_name)
        except RedisError as exc:
            logger.warning("cannot join room %r: %s", self.room, exc)
            await self.accept()
            await self.redis_lost(f"cannot join the room: {NO_REDIS}")
            return
        self.group = f"chat.{self.room}"
        await self.accept()
        await self.send_json(
            {"type": "joined", "room": self.room, "server": server_label(self.scope)}
        )
        self.refresher = asyncio.create_task(self.keep_membership())

    async def keep_membership(self) -> None:
        """Renew the room membership every few seconds; when that fails, close the socket."""
        while True:
            await asyncio.sleep(MEMBERSHIP_REFRESH)
            try:
                await self.channel_layer.group_add(self.group, self.channel_name)
            except RedisError as exc:
                logger.warning("lost Redis while in room %r: %s", self.room, exc)
                await self.redis_lost(f"disconnected: {NO_REDIS}")
                return

    async def redis_lost(self, text: str) -> None:
        """Tell the page in plain words, then close the socket: the page reconnects."""
        await self.send_json({"type": "error", "text": text})
        await self.close(code=REDIS_UNREACHABLE)

    async def disconnect(self, code: int) -> None:
        if self.refresher is not None:
            self.refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.refresher
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
        except RedisError as exc:
            logger.warning("cannot send to room %r: %s", self.room, exc)
            await self.redis_lost(f"not sent: {NO_REDIS}")

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
