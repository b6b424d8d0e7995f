"""End-to-end: daphne stopped by a signal while websockets are open exits cleanly.

daphne stops its Twisted reactor, and with it the asyncio loop, without
closing the loop. Its shutdown hook is meant to cancel the application tasks
first, but daphne 4.2 raises ``KeyError`` there (logged only with
``--verbosity 2``) when a connection has no application instance, e.g. a
browser's idle keep-alive connection: then nothing is cancelled. The tasks of
the consumers, of daphne (``asyncio.Queue.get``, the consumers' ``receive``)
and of the layer stay suspended, and on CPython 3.11 before 3.11.8 finalizing
them during interpreter teardown could crash the process (segmentation fault,
exit status -11). ``channels_compat`` closes the layer of such a stopped loop
at interpreter exit, running the loop once more (see
``channels_compat._runtime``).

Each test starts one daphne (with ``-X faulthandler``) on a private Redis,
opens two websockets and an idle TCP connection, sends the signal and expects
exit status 0 and no fatal error in daphne's output. Whether the crash happens
depends on what is still referenced at exit; this project crashed every time
without the fix with ``--verbosity 2`` (daphne then hands Twisted's log,
``KeyError`` included, to ``logging``), so the tests use it. That ``KeyError``
is the only traceback allowed in the output.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest
from _support import BACKENDS, Client, child_env, free_port, spawn, wait_for_port

from anyio_layer.testing.pytest_plugin import RedisServerFactory

EXIT_TIMEOUT = 20.0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_daphne_stopped_with_open_websockets_exits_cleanly(
    backend: str, signum: signal.Signals, redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    redis = redis_server_factory()
    port = free_port()
    args = [sys.executable, "-X", "faulthandler", "-m", "daphne", "-b", "127.0.0.1"]
    args += ["-v", "2", "-p", str(port), "project.asgi:application"]
    daphne = spawn("daphne", args, child_env(BACKENDS[backend], redis.url), tmp_path)
    try:
        wait_for_port(daphne, port)

        async def scenario() -> None:
            url = f"ws://127.0.0.1:{port}/ws/chat/shutdown/"
            chatters = [await Client.open(f"client-{index}", url) for index in range(2)]
            # Both consumers use the layer: the message reaches both through the group.
            await chatters[0].send("hello")
            for chatter in chatters:
                await chatter.wait_until(lambda c=chatter: c.payloads() == ["hello"], 10, "hello")
            # A connection with no request yet, like a browser's spare connection.
            with socket.create_connection(("127.0.0.1", port), 5):
                await asyncio.sleep(0.2)  # daphne has registered it
                daphne.popen.send_signal(signum)
                status = await asyncio.to_thread(daphne.popen.wait, EXIT_TIMEOUT)
            assert status == 0, f"daphne exited with {status}:\n{daphne.describe()}"
            for chatter in chatters:
                await chatter.close()

        asyncio.run(scenario())
    finally:
        if daphne.popen.poll() is None:
            daphne.popen.kill()
            daphne.popen.wait()
    output = daphne.stderr() + daphne.stdout_path.read_text(errors="replace")
    for fatal in ("Fatal Python error", "Segmentation fault"):
        assert fatal not in output, f"daphne: {fatal!r}:\n{daphne.describe()}"
    daphne_bug = "KeyError: 'application_instance'"  # daphne's shutdown hook, not ours
    assert output.count("Traceback") == output.count(daphne_bug), daphne.describe()
