"""Starlette on the channel layer: a websocket chat plus an HTTP endpoint that broadcasts.

    cd examples/starlette_broadcast
    REDIS_URL=redis://127.0.0.1:6379 uvicorn app:app --port 8001                        # asyncio
    REDIS_URL=redis://127.0.0.1:6379 hypercorn --worker-class trio -b 127.0.0.1:8002 app:app  # trio

    curl -X POST -H 'content-type: application/json' -d '{"text": "hello, room"}' \\
        http://127.0.0.1:8001/broadcast/lobby

The same code runs under asyncio (uvicorn, or hypercorn's default worker) and
trio (hypercorn's trio worker) because the layer and Starlette are written
against anyio.

* The layer is opened once per process, in the app's **lifespan**, and handed
  to the endpoints through the lifespan state (``request.state.layer``).
* ``/ws/chat/<room>/``: a websocket joins its room with the scoped helper
  ``layer.open_channel(room)``, which leaves the room however the socket ends.
  What the browser sends goes to everyone in the room, on every process.
* ``POST /broadcast/<room>`` with ``{"text": ..., "user": ...}``: a
  ``group_send`` to the room, from any process, e.g. a backend job.
* ``/`` and ``/room/<room>/``: the chat page, as in the Django and trio examples
  (same wire format, so servers of all three examples can share rooms).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from anyio_layer import LayerChannel, QueueLayer, RedisError, open_redis_layer

# examples/: the page and the start-up check are shared by the examples.
EXAMPLES_DIR = Path(__file__).resolve().parent.parent
sys.path.append(str(EXAMPLES_DIR))
from redis_check import require_redis  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
PAGE = (EXAMPLES_DIR / "chat.html").read_text()
ROOM = re.compile(r"[-A-Za-z0-9_.]{1,80}")
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


# Check Redis when the server loads the app, before it listens: a wrong REDIS_URL
# stops it with one line on stderr (and status 1) rather than a traceback from
# the lifespan, or a page that cannot join its room.
require_redis(
    REDIS_URL,
    "starlette chat",
    source="$REDIS_URL" if "REDIS_URL" in os.environ else "the default",
    hint="Or run examples/demo.py --example starlette, which starts a private one.",
)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    """Open the layer for as long as the server runs; its tasks live in this block."""
    async with open_redis_layer(hosts=[REDIS_URL]) as layer:
        yield {"layer": layer}


def chat_message(room: str, user: object, text: str, server: str) -> dict[str, Any]:
    """The channel-layer message for one line said in ``room`` (shared by all examples)."""
    return {
        "type": "chat.message",
        "room": room,
        "user": str(user or "anonymous").strip()[:MAX_USER],
        "text": text.strip()[:MAX_TEXT],
        "server": server,
    }


def server_label(scope: Mapping[str, Any]) -> str:
    host, port = scope.get("server") or ("?", 0)
    return f"starlette pid {os.getpid()} on {host}:{port}"


async def page(request: Request) -> Response:
    room = request.path_params.get("room", "lobby")
    if not ROOM.fullmatch(room):
        return PlainTextResponse("not found\n", status_code=404)
    return HTMLResponse(PAGE)


async def broadcast(request: Request) -> Response:
    """``POST /broadcast/<room>``: send ``{"text": ..., "user": ...}`` to everyone in the room."""
    room = request.path_params["room"]
    if not ROOM.fullmatch(room):
        return JSONResponse({"error": "invalid room name"}, status_code=404)
    try:
        content = json.loads(await request.body())
    except ValueError:
        content = None
    if not isinstance(content, dict) or not str(content.get("text") or "").strip():
        return JSONResponse({"error": 'send JSON like {"text": "hello"}'}, status_code=400)
    layer: QueueLayer = request.state.layer
    message = chat_message(
        room, content.get("user") or "broadcast", str(content["text"]), server_label(request.scope)
    )
    try:
        await layer.group_send(f"chat.{room}", message)
    except RedisError as exc:
        logger.warning("cannot broadcast to room %r: %s", room, exc)
        return JSONResponse({"error": NO_REDIS}, status_code=503)
    return JSONResponse({"room": room, "sent": message["text"]}, status_code=202)


async def chat_socket(websocket: WebSocket) -> None:
    room = websocket.path_params["room"]
    if not ROOM.fullmatch(room):
        await websocket.close(code=4404)
        return
    layer: QueueLayer = websocket.state.layer
    server = server_label(websocket.scope)
    try:
        async with layer.open_channel(f"chat.{room}") as channel:
            await websocket.accept()
            await websocket.send_json({"type": "joined", "room": room, "server": server})
            lost: list[str] = []  # why Redis was lost, in words for the page
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(relay_room, websocket, channel)
                tasks.start_soon(keep_membership, channel, room, lost, tasks.cancel_scope)
                await relay_client(websocket, layer, room, server, lost)
                tasks.cancel_scope.cancel()  # the browser left, or Redis did
            if lost:
                await redis_lost(websocket, lost[0])
    except RedisError as exc:  # from open_channel: the room could not be joined
        logger.warning("cannot join room %r: %s", room, exc)
        await websocket.accept()
        await redis_lost(websocket, f"cannot join the room: {NO_REDIS}")


async def redis_lost(websocket: WebSocket, text: str) -> None:
    """Tell the page in plain words, then close with an application code: it reconnects."""
    await websocket.send_json({"type": "error", "text": text})
    await websocket.close(code=REDIS_UNREACHABLE)


async def keep_membership(
    channel: LayerChannel, room: str, lost: list[str], scope: anyio.CancelScope
) -> None:
    """Renew the room membership every few seconds; when that fails, end the socket's tasks."""
    while True:
        await anyio.sleep(MEMBERSHIP_REFRESH)
        try:
            await channel.group_add(f"chat.{room}")
        except RedisError as exc:
            logger.warning("lost Redis while in room %r: %s", room, exc)
            lost.append(f"disconnected: {NO_REDIS}")
            scope.cancel()
            return


async def relay_client(
    websocket: WebSocket, layer: QueueLayer, room: str, server: str, lost: list[str]
) -> None:
    """Send what the browser types to the room, until it disconnects or a line cannot be sent."""
    while True:
        event = await websocket.receive()
        if event["type"] == "websocket.disconnect":
            return
        try:
            content = json.loads(event.get("text") or event.get("bytes") or b"")
        except ValueError:
            continue  # not JSON: ignore it
        if not isinstance(content, dict) or not isinstance(content.get("text"), str):
            continue
        if not content["text"].strip():
            continue
        message = chat_message(room, content.get("user"), content["text"], server)
        try:
            await layer.group_send(f"chat.{room}", message)
        except RedisError as exc:
            logger.warning("cannot send to room %r: %s", room, exc)
            lost.append(f"not sent: {NO_REDIS}")
            return


async def relay_room(websocket: WebSocket, channel: LayerChannel) -> None:
    """Send every line said in the room, by anyone on any process, to the browser."""
    async for message in channel:
        if message.get("type") == "chat.message":
            await websocket.send_json(
                {
                    "type": "message",
                    "room": message.get("room", "?"),
                    "user": message.get("user", "?"),
                    "text": message.get("text", ""),
                    "server": message.get("server", "?"),
                }
            )


app = Starlette(
    routes=[
        Route("/", page),
        Route("/room/{room}/", page),
        Route("/broadcast/{room}", broadcast, methods=["POST"]),
        WebSocketRoute("/ws/chat/{room}/", chat_socket),
    ],
    lifespan=lifespan,
)
