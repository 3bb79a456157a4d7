"""Runs the gateway ASGI app under uvicorn, inside agentd's event loop."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from agentd.gateway.app import Gateway
from agentd.gateway.routes import routes_of

log = logging.getLogger("agentd.gateway")


class GatewayServer:
    def __init__(self, http_addr: str, services, servicers: dict[str, object],
                 max_body_bytes: int = 8 * 1024 * 1024):
        host, _, port = http_addr.rpartition(":")
        self.host = host.strip("[]")  # "[::1]:8321": uvicorn wants the bare IPv6 address
        self.port = int(port)
        self.services = services
        self.servicers = servicers
        self.max_body_bytes = max_body_bytes
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.bound_addr = ""
        self.socket: socket.socket | None = None  # the listening socket, once started

    async def start(self) -> int:
        # We bind the socket ourselves: a port in use is then an OSError here, where uvicorn
        # would log it and call sys.exit() from inside its task.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self.socket = sock = _listening_socket(family, self.host, self.port)
        except OSError as e:
            raise OSError(f"cannot listen on {self.host}:{self.port} (HTTP gateway): {e.strerror}") from None
        app = Gateway(routes_of(self.services), self.servicers, self.max_body_bytes)
        # httptools (llhttp, C) parses HTTP/1.1 rather than h11 (pure Python): a REST turn costs
        # 10-20 % less CPU.
        config = uvicorn.Config(app, http="httptools", log_config=None, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # agentd owns the signals
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError(f"the HTTP gateway on {self.host}:{self.port} stopped while starting")
            await asyncio.sleep(0.01)
        host, port = sock.getsockname()[:2]
        self.bound_addr = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        return port

    async def stop(self, grace: float) -> None:
        if self._server is not None and self._task is not None:
            self._server.config.timeout_graceful_shutdown = max(grace, 0.1)
            self._server.should_exit = True
            try:
                await self._task
            except Exception:
                log.exception("the HTTP gateway had failed")


def _listening_socket(family: int, host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP, and accepted sockets inherit it. With proto 0 (socket.create_server's
    # default) every small response waited ~40 ms for a delayed ACK (measured by make bench).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
