"""Running the app under uvicorn (``jobq serve``), in the foreground or in a thread.

On shutdown the event streams are ended first: an SSE response never finishes
by itself, and uvicorn waits for open responses before it runs the lifespan's
shutdown.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from jobq.api.app import create_app
from jobq.api.runtime import Runtime
from jobq.api.settings import Settings


class Server(uvicorn.Server):
    """uvicorn.Server that closes the app's event streams before waiting for responses."""

    def __init__(self, app: FastAPI, **config: Any) -> None:
        config.setdefault("timeout_graceful_shutdown", 5)
        config.setdefault("log_level", "info")
        super().__init__(uvicorn.Config(app, **config))
        self.app = app
        self.ready = threading.Event()  # set once listening (from any thread)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        rt: Runtime = self.app.state.jobq
        if rt.hub is not None:
            rt.hub.close_subscriptions()
        await super().shutdown(sockets)


def serve(
    host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None, **config: Any
) -> None:
    """Serve the API until SIGINT/SIGTERM."""
    Server(create_app(settings), host=host, port=port, **config).run()


class ThreadedServer:
    """The API on a loopback port in a background thread (tests, benchmarks).

    ``with ThreadedServer(app) as srv: httpx.get(srv.url + "/health")``
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", **config: Any) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections
        # only when the listening socket says so (proto 0 would leave Nagle on,
        # and every response, sent as headers then body, would wait ~40 ms).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        config.setdefault("log_level", "warning")
        self.server = Server(app, host=host, port=self.port, **config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        # Woken by the server itself; the thread dying (a failed startup) ends the wait too.
        while not self.server.ready.wait(0.1):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
