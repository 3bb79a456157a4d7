"""Runs the gateway ASGI app under uvicorn, inside agentd's event loop."""

from __future__ import annotations

import asyncio

import uvicorn

from agentd.gateway.app import Gateway
from agentd.gateway.routes import routes_of


class GatewayServer:
    def __init__(self, http_addr: str, services, servicers: dict[str, object],
                 max_body_bytes: int = 8 * 1024 * 1024):
        self.host, _, port = http_addr.rpartition(":")
        self.port = int(port)
        self.services = services
        self.servicers = servicers
        self.max_body_bytes = max_body_bytes
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.bound_addr = ""

    async def start(self) -> int:
        app = Gateway(routes_of(self.services), self.servicers, self.max_body_bytes)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_config=None,
                                access_log=False, lifespan="on", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # agentd owns the signals
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the startup error (e.g. port in use)
                raise OSError(f"HTTP gateway failed to start on {self.host}:{self.port}")
            await asyncio.sleep(0.01)
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.bound_addr = f"{host}:{port}"
        return port

    async def stop(self, grace: float) -> None:
        if self._server is not None and self._task is not None:
            self._server.config.timeout_graceful_shutdown = max(grace, 0.1)
            self._server.should_exit = True
            await self._task
