"""Serving the API with uvicorn inside a process that owns its own signals and sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI


class _EmbeddedServer(uvicorn.Server):
    # The process that embeds the API owns SIGINT/SIGTERM (careweave up stops its parts in
    # order); uvicorn would otherwise replace those handlers while it serves.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_api(
    app: FastAPI, host: str, port: int, *, name: str = "the API"
) -> AsyncIterator[int]:
    """Serve `app` on host:port (0: a free port) until the block ends; yields the port.
    `name` says in errors what could not listen."""
    # Bound here rather than by uvicorn, whose bind failure is a sys.exit inside a task.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as err:
        listener.close()
        raise OSError(f"{name} cannot listen on {host}:{port}: {err.strerror}") from err
    bound_port = int(listener.getsockname()[1])
    # lifespan on: the app opens its connection pool to the Temporal UI there.
    server = _EmbeddedServer(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"{name} on {host}:{bound_port} stopped while starting")
            await asyncio.sleep(0.02)
        yield bound_port
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        listener.close()
