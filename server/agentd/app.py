"""Builds and runs agentd: the grpc.aio server, the HTTP gateway beside it, the database."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.exc import SQLAlchemyError

from agentd.api.agents import AgentsServicer
from agentd.api.conversations import ConversationsServicer
from agentd.api.grpc_pipeline import add_to_server
from agentd.api.models import ModelsServicer
from agentd.api.responses import ResponsesServicer
from agentd.api.shields import ShieldsServicer
from agentd.api.tool_groups import ToolGroupsServicer
from agentd.config import Settings
from agentd.context import LOCAL_PRINCIPAL
from agentd.engine.responses import ResponseEngine
from agentd.engine.runs import Runs
from agentd.engine.shields import DeclaredShields
from agentd.engine.turns import TurnEngine
from agentd.inference import ModelRegistry
from agentd.storage import Database, Repository
from agentd.storage.agents import AgentStore
from agentd.storage.conversations import ConversationStore
from agentd.storage.events import EventStore
from agentd.storage.responses import ResponseStore
from agentd.tools.runtime import ConfiguredToolRuntime
from agentd.v1 import (
    agents_pb2,
    conversations_pb2,
    files_pb2,
    files_pb2_grpc,
    models_pb2,
    responses_pb2,
    shields_pb2,
    tool_groups_pb2,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)

log = logging.getLogger("agentd")

# At shutdown, how long the transports wait for their calls after the runs' grace: enough for
# the runs the drain stops to write their ends and send them.
END_DELIVERY_S = 1.0


class StartError(Exception):
    """agentd could not start; the message says what and why, for the operator."""


def _start_failure(error: BaseException) -> str:
    if isinstance(error, OSError):
        return str(error)
    if isinstance(error, SQLAlchemyError):
        return f"the database is not usable: {error.__class__.__name__}: {getattr(error, 'orig', error)}"
    return f"{error.__class__.__name__}: {error}"


# The services agentd serves; the gateway serves the routes of exactly these.
SERVICES = [
    agents_pb2.DESCRIPTOR.services_by_name["AgentsService"],
    responses_pb2.DESCRIPTOR.services_by_name["ResponsesService"],
    conversations_pb2.DESCRIPTOR.services_by_name["ConversationsService"],
    models_pb2.DESCRIPTOR.services_by_name["ModelsService"],
    shields_pb2.DESCRIPTOR.services_by_name["ShieldsService"],
    tool_groups_pb2.DESCRIPTOR.services_by_name["ToolGroupsService"],
    vector_stores_pb2.DESCRIPTOR.services_by_name["VectorStoresService"],
    files_pb2.DESCRIPTOR.services_by_name["FilesService"],
]


def server_options(settings: Settings) -> list[tuple[str, int]]:
    # Fit for a mesh: keepalive pings every 30 s, clients may ping every 10 s, connections
    # recycled after 30 min so load balancers rebalance (grpc_practice.md §3.4).
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_idle_ms", 300_000),
        ("grpc.max_connection_age_ms", 1_800_000),
        ("grpc.max_connection_age_grace_ms", 300_000),
        # What a client may send. What agentd sends has no bound of its own: a turn's last
        # event carries its input and its answer, a session all its turns, so either can
        # outgrow the largest request, and a bound here made them unreadable over gRPC.
        ("grpc.max_receive_message_length", settings.max_message_bytes),
    ]


class Agentd:
    """One running agentd: start(), then stop() (or run_until_signal())."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings.effective_database_url)
        self.repo = Repository(self.db)
        # Every live turn and response of this process; drained on stop.
        self.runs = Runs(EventStore(self.repo), heartbeat_s=settings.heartbeat_s)
        # One registry (one HTTP client per endpoint) for the whole process.
        self.registry = ModelRegistry.from_settings(settings)
        self.agent_store = AgentStore(self.repo)
        self.conversation_store = ConversationStore(self.repo)
        # The server-side tools configuration declares (web search with a key; others listed,
        # not run yet).
        self.tools = ConfiguredToolRuntime(settings)
        # The shields configuration declares; none is run yet (the shields issue), so no check
        # finds a violation, but agents naming an undeclared one are refused.
        self.shields = DeclaredShields(shield.id for shield in settings.shields)
        self.turns = TurnEngine(self.agent_store, self.runs, self.registry, self.tools, self.shields,
                                settings.documents, settings.tool_timeout_s, settings.run_lease_s)
        self.responses = ResponseEngine(ResponseStore(self.repo), self.conversation_store, self.runs,
                                        self.registry, self.tools, self.shields, settings.run_lease_s)
        self.health: health.aio.HealthServicer | None = None
        self.server: grpc.aio.Server | None = None
        self.servicers = self._servicers()
        assert set(self.servicers) == {s.full_name for s in SERVICES}
        self.grpc_port = 0
        self.http_port = 0
        self._gateway = None

    def _servicers(self) -> dict[str, object]:
        """Each served service's full name -> the object that serves it."""
        return {
            "agentd.v1.AgentsService": AgentsServicer(self.agent_store, self.turns),
            "agentd.v1.ResponsesService": ResponsesServicer(self.responses),
            "agentd.v1.ConversationsService": ConversationsServicer(self.conversation_store, self.responses),
            "agentd.v1.ModelsService": ModelsServicer(self.registry),
            "agentd.v1.ShieldsService": ShieldsServicer(self.settings),
            "agentd.v1.ToolGroupsService": ToolGroupsServicer(self.settings),
            # Vector stores and files are in the contract, not built yet: UNIMPLEMENTED
            # (reason NOT_AVAILABLE_YET) from the generated base servicers.
            "agentd.v1.VectorStoresService": vector_stores_pb2_grpc.VectorStoresServiceServicer(),
            "agentd.v1.FilesService": files_pb2_grpc.FilesServiceServicer(),
        }

    def _build_server(self) -> grpc.aio.Server:
        # Built inside the running loop: grpc.aio objects are bound to the loop that made them.
        server = grpc.aio.server(options=server_options(self.settings))
        for service in SERVICES:
            add_to_server(self.servicers[service.full_name], service, server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [s.full_name for s in SERVICES] + [health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        return server

    async def start(self) -> None:
        """Starts everything, or nothing: a failure stops what had started and raises
        StartError saying what could not start."""
        try:
            await self._start()
        except BaseException as error:
            await self.stop(0, quiet=True)
            if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
                raise
            raise StartError(_start_failure(error)) from error

    async def _start(self) -> None:
        await self.db.migrate()
        await self.turns.start()
        await self.responses.leases.start()  # recovery, then the lease keeper until close()
        await self.registry.start()
        self.server = self._build_server()
        host, _, port = self.settings.grpc_addr.rpartition(":")
        try:
            self.grpc_port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:  # grpc's way of saying the port is taken
            raise OSError(f"cannot listen on {self.settings.grpc_addr} (gRPC): {e}") from None
        await self.server.start()
        # Logged before health says SERVING: whoever waits for that may read the log at once.
        log.info("gRPC listening on %s:%d (event loop: %s)", host, self.grpc_port,
                 type(asyncio.get_running_loop()).__module__.partition(".")[0])
        for service in SERVICES:
            await self.health.set(service.full_name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("no authentication configured: every call acts as the local principal %r",
                 LOCAL_PRINCIPAL)
        if self.settings.http_addr:
            from agentd.gateway.server import GatewayServer

            self._gateway = GatewayServer(self.settings.http_addr, SERVICES,
                                          self.servicers,
                                          max_body_bytes=self.settings.max_message_bytes)
            self.http_port = await self._gateway.start()
            log.info("HTTP gateway listening on %s", self._gateway.bound_addr)

    async def stop(self, grace: float | None = None, quiet: bool = False) -> None:
        """Graceful: health NOT_SERVING, then both transports stop taking calls at once and
        give running ones `grace` seconds (and END_DELIVERY_S); runs (turns, responses,
        background ones too) get `grace`, then are stopped as interrupted and kept before the
        database closes, their streams ending with that end.
        Safe on a half-started server."""
        grace = self.settings.grace_period_s if grace is None else grace
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        # The transports outlast the runs' grace a little: the end of a run the drain stops
        # (turn_failed, response.failed: one write) reaches its stream before the call is cut.
        calls_grace = grace + END_DELIVERY_S
        stopping = []
        if self._gateway is not None:
            stopping.append(self._gateway.stop(calls_grace))
        if self.server is not None:
            stopping.append(self.server.stop(calls_grace))
        stopping.append(self.runs.drain(grace))
        await asyncio.gather(*stopping)
        await self.responses.close()
        await self.turns.close()
        await self.registry.close()
        await self.tools.aclose()
        await self.db.close()
        if not quiet:
            log.info("stopped")

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("shutting down: draining for up to %.0f s", self.settings.grace_period_s)
        await self.stop()
