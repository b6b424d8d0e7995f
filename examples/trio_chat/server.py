"""A trio-native chat server on the channel layer: rooms shared by any number of processes.

    REDIS_URL=redis://127.0.0.1:6379 python examples/trio_chat/server.py --port 8001
    REDIS_URL=redis://127.0.0.1:6379 python examples/trio_chat/server.py --port 8002

Open http://127.0.0.1:8001/ and http://127.0.0.1:8002/: people connected to
either process chat together, because every process sends each line to the
room's group in Redis and receives the room's lines from it.

The structure is plain trio, no framework: :func:`main` opens the layer
**once** (``async with open_redis_layer(...)``) and serves a tiny ASGI
application with hypercorn's trio server inside that block. Each websocket
joins its room with ``layer.open_channel(room)`` (left automatically when the
socket closes, however it closes) and runs two tasks in a nursery: one relays
what the browser types to the room, one relays the room to the browser.
SIGINT or SIGTERM closes every websocket with code 1001 ("going away"), stops
the server and then the layer, in that order.

The wire format is the Django example's, so a room can even span servers of
both examples (use the same Redis and the default ``prefix``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from anyio_layer import LayerChannel, QueueLayer, RedisError, open_redis_layer

# examples/: the page and the start-up check are shared by the examples.
EXAMPLES_DIR = Path(__file__).resolve().parent.parent
sys.path.append(str(EXAMPLES_DIR))
from redis_check import RedisUnavailable, check_redis  # noqa: E402

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PAGE = (EXAMPLES_DIR / "chat.html").read_bytes()
ROOM = r"(?P<room>[-A-Za-z0-9_.]{1,80})"
PAGE_PATH = re.compile(rf"/|/room/{ROOM}/")
SOCKET_PATH = re.compile(rf"/ws/chat/{ROOM}/")
MAX_TEXT = 1000
MAX_USER = 40
#: Seconds between two renewals of a socket's room membership. Renewing finds
#: out that Redis is gone (the socket is closed and the page reconnects) and
#: restores a membership that a Redis restart has forgotten.
MEMBERSHIP_REFRESH = 3.0
#: Close code for "Redis cannot be reached" (the same in every example).
REDIS_UNREACHABLE = 4500
NO_REDIS = "the chat server cannot reach Redis"

logger = logging.getLogger("chat")


class ChatApp:
    """The ASGI application: the page over HTTP, the chat over websockets."""

    def __init__(self, layer: QueueLayer, stopping: trio.Event) -> None:
        self.layer = layer
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
        elif scope["type"] == "lifespan":  # nothing to set up: main() owns the layer
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in ("GET", "HEAD") and PAGE_PATH.fullmatch(scope["path"]):
            status, body, content_type = 200, PAGE, b"text/html; charset=utf-8"
        else:
            status, body, content_type = 404, b"not found\n", b"text/plain"
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        match = SOCKET_PATH.fullmatch(scope["path"])
        if match is None:
            await send({"type": "websocket.close", "code": 4404})
            return
        room = match["room"]
        host, port = scope.get("server") or ("?", 0)
        server = f"trio pid {os.getpid()} on {host}:{port}"

        async def send_json(event: dict[str, Any]) -> None:
            await send({"type": "websocket.send", "text": json.dumps(event)})

        try:
            async with self.layer.open_channel(f"chat.{room}") as channel:
                await send({"type": "websocket.accept"})
                await send_json({"type": "joined", "room": room, "server": server})
                lost: list[str] = []  # why Redis was lost, in words for the page
                client_left = False
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.relay_room, channel, send_json)
                    nursery.start_soon(self.keep_membership, channel, room, lost, nursery)
                    nursery.start_soon(self.cancel_when_stopping, nursery.cancel_scope)
                    client_left = await self.relay_client(room, server, receive, lost)
                    nursery.cancel_scope.cancel()
                if lost:
                    await self.redis_lost(send, send_json, lost[0])
                elif not client_left:  # the server is stopping
                    await send({"type": "websocket.close", "code": 1001})
        except RedisError as exc:  # from open_channel: the room could not be joined
            logger.warning("cannot join room %r: %s", room, exc)
            await send({"type": "websocket.accept"})
            await self.redis_lost(send, send_json, f"cannot join the room: {NO_REDIS}")

    async def redis_lost(self, send: Send, send_json: Send, text: str) -> None:
        """Tell the page in plain words, then close with an application code: it reconnects."""
        await send_json({"type": "error", "text": text})
        await send({"type": "websocket.close", "code": REDIS_UNREACHABLE})

    async def relay_client(self, room: str, server: str, receive: Receive, lost: list[str]) -> bool:
        """Send what the browser types to the room; return True when the browser leaves.

        Return False, with the reason in ``lost``, when a line cannot be sent.
        """
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return True
            try:
                content = json.loads(event.get("text") or event.get("bytes") or b"")
            except ValueError:
                continue  # not JSON: ignore it
            if not isinstance(content, dict) or not isinstance(content.get("text"), str):
                continue
            text = content["text"].strip()[:MAX_TEXT]
            user = str(content.get("user") or "anonymous").strip()[:MAX_USER]
            if not text:
                continue
            message = {"type": "chat.message", "room": room, "user": user, "text": text}
            try:
                await self.layer.group_send(f"chat.{room}", {**message, "server": server})
            except RedisError as exc:
                logger.warning("cannot send to room %r: %s", room, exc)
                lost.append(f"not sent: {NO_REDIS}")
                return False

    async def relay_room(self, channel: LayerChannel, send_json: Send) -> None:
        """Send every line said in the room, by anyone on any process, to the browser."""
        async for message in channel:
            if message.get("type") == "chat.message":
                await send_json(
                    {
                        "type": "message",
                        "room": message.get("room", "?"),
                        "user": message.get("user", "?"),
                        "text": message.get("text", ""),
                        "server": message.get("server", "?"),
                    }
                )

    async def keep_membership(
        self, channel: LayerChannel, room: str, lost: list[str], nursery: trio.Nursery
    ) -> None:
        """Renew the room membership every few seconds; when that fails, end the socket's tasks."""
        while True:
            await trio.sleep(MEMBERSHIP_REFRESH)
            try:
                await channel.group_add(f"chat.{room}")
            except RedisError as exc:
                logger.warning("lost Redis while in room %r: %s", room, exc)
                lost.append(f"disconnected: {NO_REDIS}")
                nursery.cancel_scope.cancel()
                return

    async def cancel_when_stopping(self, scope: trio.CancelScope) -> None:
        await self.stopping.wait()
        scope.cancel()


async def stop_on_signals(stopping: trio.Event, quiet: bool) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not quiet:
                print(f"{signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
            stopping.set()
            return


async def main(
    host: str, port: int, redis_url: str, quiet: bool = False, source: str = "$REDIS_URL"
) -> None:
    """Serve until SIGINT or SIGTERM; raise RedisUnavailable first if Redis cannot be used."""
    await check_redis(redis_url, source=source)
    stopping = trio.Event()
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = 5.0
    config.loglevel = "WARNING" if quiet else "INFO"
    async with open_redis_layer(hosts=[redis_url]) as layer, trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals, stopping, quiet)
        await serve(ChatApp(layer, stopping), config, shutdown_trigger=stopping.wait)
        nursery.cancel_scope.cancel()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default %(default)s)")
    parser.add_argument(
        "--redis-url",
        default=None,
        help="the Redis server all processes share (default: $REDIS_URL, else redis://127.0.0.1:6379)",
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    if args.redis_url is not None:
        args.redis_source = "--redis-url"
    elif "REDIS_URL" in os.environ:
        args.redis_url, args.redis_source = os.environ["REDIS_URL"], "$REDIS_URL"
    else:
        args.redis_url, args.redis_source = "redis://127.0.0.1:6379", "the default"
    return args


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(main, args.host, args.port, args.redis_url, args.quiet, args.redis_source)
    except RedisUnavailable as exc:
        print(
            f"trio chat: {exc} Or run examples/demo.py --example trio, which starts a private one.",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        pass
