"""Consumers of the end-to-end test project.

Every websocket consumer first sends ``{"event": "joined", ...}`` once it is a
member of its group, so a client knows when messages to the room reach it.
Events sent to clients:

* ``{"event": "joined", "channel": <channel name>, "pid": <server pid>}``
* ``{"event": "message", "payload": <what a member of the room sent>}``
* ``{"event": "redis_disconnect"}`` / ``{"event": "redis_reconnect"}`` (pub/sub layer)
* ``{"event": "result", ...}`` (the worker's answer, :class:`AskConsumer`)
* ``{"event": "napped", "seconds": s}``: a chat client that sends ``{"nap": s}``
  makes its own consumer handle one channel-layer message (``chat.nap``, sent
  to its own channel) that takes ``s`` seconds, like a handler doing slow work
  (a database query, an HTTP call). Nothing goes to the room.

The chat consumers re-add themselves to their group before each
``group_send``: with channels_redis, group membership expires
(``group_expiry``) and is lost with the data when Redis restarts without
persistence, and re-adding is the documented way to keep a long-lived member
in its group. :class:`PlainChatConsumer` does not: it joins once, on connect,
as Channels' tutorial does, and relies on the queue layer's leases.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer, WebsocketConsumer

WORKER_CHANNEL = "e2e-worker"


def _group(scope: dict[str, Any]) -> str:
    return f"room-{scope['url_route']['kwargs']['room']}"


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """Async chat: everything a client sends goes to every member of its room."""

    group = ""

    async def connect(self) -> None:
        self.group = _group(self.scope)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"event": "joined", "channel": self.channel_name, "pid": os.getpid()})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and "nap" in content:
            nap = {"type": "chat.nap", "seconds": content["nap"]}
            await self.channel_layer.send(self.channel_name, nap)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "payload": content}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"event": "message", "payload": event["payload"]})

    async def chat_nap(self, event: dict[str, Any]) -> None:
        await asyncio.sleep(event["seconds"])
        await self.send_json({"event": "napped", "seconds": event["seconds"]})

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def redis_disconnect(self, event: dict[str, Any]) -> None:
        await self.send_json({"event": "redis_disconnect"})

    async def redis_reconnect(self, event: dict[str, Any]) -> None:
        await self.send_json({"event": "redis_reconnect"})


class PlainChatConsumer(ChatConsumer):
    """:class:`ChatConsumer` without the re-adding: it joins its group once, on connect."""

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "payload": content}
        )


class SyncChatConsumer(WebsocketConsumer):
    """The same chat as :class:`ChatConsumer`, synchronous (``async_to_sync`` layer calls)."""

    group = ""

    def connect(self) -> None:
        self.group = _group(self.scope)
        async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
        self.accept()
        self._send({"event": "joined", "channel": self.channel_name, "pid": os.getpid()})

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        content = json.loads(text_data or "null")
        if isinstance(content, dict) and "nap" in content:
            nap = {"type": "chat.nap", "seconds": content["nap"]}
            async_to_sync(self.channel_layer.send)(self.channel_name, nap)
            return
        async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
        async_to_sync(self.channel_layer.group_send)(
            self.group, {"type": "chat.message", "payload": content}
        )

    def chat_message(self, event: dict[str, Any]) -> None:
        self._send({"event": "message", "payload": event["payload"]})

    def chat_nap(self, event: dict[str, Any]) -> None:
        time.sleep(event["seconds"])
        self._send({"event": "napped", "seconds": event["seconds"]})

    def disconnect(self, code: int) -> None:
        if self.group:
            async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

    def redis_disconnect(self, event: dict[str, Any]) -> None:
        self._send({"event": "redis_disconnect"})

    def redis_reconnect(self, event: dict[str, Any]) -> None:
        self._send({"event": "redis_reconnect"})

    def _send(self, content: dict[str, Any]) -> None:
        self.send(text_data=json.dumps(content))


class AskConsumer(AsyncJsonWebsocketConsumer):
    """Relays ``{"n": ...}`` to the worker channel and the worker's answer to the client."""

    async def connect(self) -> None:
        await self.accept()
        await self.send_json({"event": "joined", "channel": self.channel_name, "pid": os.getpid()})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.send(
            WORKER_CHANNEL,
            {
                "type": "compute",
                "reply_to": self.channel_name,
                "n": content["n"],
                "id": content.get("id"),
            },
        )

    async def worker_result(self, event: dict[str, Any]) -> None:
        await self.send_json({"event": "result", **{k: v for k, v in event.items() if k != "type"}})

    async def redis_disconnect(self, event: dict[str, Any]) -> None:
        await self.send_json({"event": "redis_disconnect"})

    async def redis_reconnect(self, event: dict[str, Any]) -> None:
        await self.send_json({"event": "redis_reconnect"})


class WorkerConsumer(AsyncConsumer):
    """Runs in ``runworker``: answers ``compute`` requests on their ``reply_to`` channel."""

    async def compute(self, message: dict[str, Any]) -> None:
        n = message["n"]
        await self.channel_layer.send(
            message["reply_to"],
            {
                "type": "worker.result",
                "id": message.get("id"),
                "n": n,
                "result": n * n,
                "reply_to": message["reply_to"],
                "worker_pid": os.getpid(),
            },
        )

    async def redis_disconnect(self, event: dict[str, Any]) -> None:
        """The worker's own channel lost its subscriber connection (pub/sub): nothing to do."""

    async def redis_reconnect(self, event: dict[str, Any]) -> None:
        """Nothing to redo: the layer resubscribed the worker channel."""
