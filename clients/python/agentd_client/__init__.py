"""A typed client for agentd over gRPC, sync and async, over the generated stubs (agentd.v1).

    with Client("127.0.0.1:50051", token="...") as client:
        agent = client.agents.CreateAgent(agents_pb2.CreateAgentRequest(agent_config=...))
        for event in client.agents.StreamTurn(request, timeout=60, request_id="req-1"):
            ...
        turn = client.run_turn(agent_id, session_id, "What is the weather?",
                               tools={"get_weather": get_weather})

    async with AsyncClient("127.0.0.1:50051") as client:
        await client.models.ListModels(models_pb2.ListModelsRequest())

Every service of the contract is an attribute (`agents`, `responses`, `conversations`,
`vector_stores`, `files`, `shields`, `tool_groups`, `models`) with one method per RPC, named
as in the protos. Each method takes the request message and, as keyword arguments, a
deadline in seconds (`timeout`), the call's `request_id` (sent as `x-request-id`: the id of
the call in agentd's logs, not the idempotency key some requests carry) and extra
`metadata` pairs. Failures raise AgentdError subclasses (NotFoundError, ...) carrying the
status code, the ErrorInfo `reason` and BadRequest field violations. Server streams are
iterators of the events themselves (TurnEvent, ResponseStreamEvent).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import grpc

from agentd.v1 import agent_resources_pb2, turn_events_pb2
from agentd_client import errors, turns
from agentd_client._calls import AsyncEventStream, CallDefaults, EventStream, Metadata
from agentd_client._services import AsyncServices, Services
from agentd_client.errors import *  # noqa: F403 - the exceptions are the package's own names too
from agentd_client.errors import AgentdError

# The client classes, then every exception errors.py exports: that list is kept in one place.
__all__ = ["AsyncClient", "AsyncEventStream", "Client", "EventStream"]
__all__ += errors.__all__

DEFAULT_TARGET = "127.0.0.1:50051"
# Match the server's keepalive policy (it allows client pings every >= 10 s).
# Answers of any size: a session, or a turn's last event (its input and its answer), may
# outgrow gRPC's default 4 MiB, and agentd sends them whole.
CHANNEL_OPTIONS = (("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
                   ("grpc.max_receive_message_length", -1))


class _ClientBase:
    def _setup(self, channel, service_types, token: str | None, timeout: float | None,
               metadata: Metadata) -> None:
        self.channel = channel
        defaults = CallDefaults(token, timeout, tuple(metadata))
        for attribute, service_type in service_types.items():
            setattr(self, attribute, service_type(channel, defaults))


class Client(_ClientBase, Services):
    """Blocking calls over one channel. `token` goes out as `authorization: Bearer`,
    `timeout` is the deadline of every unary call that sets none, `metadata` goes with
    every call."""

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None,
                 timeout: float | None = None, metadata: Metadata = (),
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS):
        channel = (grpc.secure_channel(target, credentials, options) if credentials
                   else grpc.insecure_channel(target, options))
        self._setup(channel, self._service_types, token, timeout, metadata)

    @classmethod
    def over(cls, channel: grpc.Channel, *, token: str | None = None, timeout: float | None = None,
             metadata: Metadata = ()) -> Client:
        """A client over a channel made elsewhere (interceptors, a test channel)."""
        client = cls.__new__(cls)
        client._setup(channel, cls._service_types, token, timeout, metadata)
        return client

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_turn(self, agent_id: str, session_id: str, messages: turns.Messages, *,
                 tools: Mapping[str, turns.ClientTool] | None = None,
                 on_event: turns.EventCallback | None = None, timeout: float | None = None,
                 idempotency_key: str | None = None, background: bool = False) -> agent_resources_pb2.Turn:
        """Streams a turn to its end: each pause on client tools calls the `tools` functions
        and resumes the turn with their results. Every event goes to `on_event`. Returns the
        completed turn; a failed turn raises TurnFailedError. `timeout` is the deadline of
        each stream (turn, resume); `idempotency_key` is the turn's `request_id`.

        A stream that drops (UNAVAILABLE) after the turn began is re-attached where it
        broke. With `background` the turn runs on while no stream is attached, so nothing is
        lost; without it agentd cancels a turn whose stream goes away (Llama Stack's
        behaviour) and the re-attach sees it end cancelled (TurnFailedError)."""
        tools = {} if tools is None else tools  # not `or`: an empty-looking Mapping may answer any name
        request = turns.turn_request(agent_id, session_id, messages, idempotency_key, background)
        stream = self.agents.StreamTurn(request, timeout=timeout)
        while True:
            end = self._follow(agent_id, session_id, stream, on_event, timeout)
            if end.kind == "turn_complete":
                return end.turn
            responses = [self._call_tool(call, tools) for call in turns.pending_calls(end.turn)]
            resume = turns.resume_request(agent_id, session_id, end, responses, background)
            stream = self.agents.StreamResumeTurn(resume, timeout=timeout)

    def _follow(self, agent_id: str, session_id: str, stream: EventStream[turn_events_pb2.TurnEvent],
                on_event: turns.EventCallback | None, timeout: float | None) -> turns.TurnEnd:
        follower = turns.Follower(agent_id, session_id, on_event)
        while True:
            try:
                event = next(stream)
            except StopIteration:
                raise turns.ended_early() from None
            except AgentdError as e:
                request = follower.reattach(e, stream.last_sequence_number)
                stream = self.agents.StreamTurnEvents(request, timeout=timeout)
                continue
            if end := follower.end_at(event):
                return end

    @staticmethod
    def _call_tool(call, tools: Mapping[str, turns.ClientTool]):
        prepared = turns.prepare_call(call, tools)
        if not isinstance(prepared, tuple):
            return prepared
        function, arguments = prepared
        try:
            return turns.result_response(call, function(**arguments))
        except Exception as e:  # noqa: BLE001 - a failing tool is told to the model, as its result
            return turns.failure_response(call, e)


class AsyncClient(_ClientBase, AsyncServices):
    """Client for asyncio (grpc.aio); create it inside the running event loop."""

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None,
                 timeout: float | None = None, metadata: Metadata = (),
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS):
        channel = (grpc.aio.secure_channel(target, credentials, options) if credentials
                   else grpc.aio.insecure_channel(target, options))
        self._setup(channel, self._service_types, token, timeout, metadata)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def run_turn(self, agent_id: str, session_id: str, messages: turns.Messages, *,
                       tools: Mapping[str, turns.ClientTool] | None = None,
                       on_event: turns.EventCallback | None = None,
                       timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline of each stream
                       idempotency_key: str | None = None,
                       background: bool = False) -> agent_resources_pb2.Turn:
        """Client.run_turn for asyncio; a tool may be a coroutine function."""
        tools = {} if tools is None else tools  # not `or`: an empty-looking Mapping may answer any name
        request = turns.turn_request(agent_id, session_id, messages, idempotency_key, background)
        stream = self.agents.StreamTurn(request, timeout=timeout)
        while True:
            end = await self._follow(agent_id, session_id, stream, on_event, timeout)
            if end.kind == "turn_complete":
                return end.turn
            responses = [await self._call_tool(call, tools) for call in turns.pending_calls(end.turn)]
            resume = turns.resume_request(agent_id, session_id, end, responses, background)
            stream = self.agents.StreamResumeTurn(resume, timeout=timeout)

    async def _follow(self, agent_id: str, session_id: str,
                      stream: AsyncEventStream[turn_events_pb2.TurnEvent],
                      on_event: turns.EventCallback | None,
                      timeout: float | None) -> turns.TurnEnd:  # noqa: ASYNC109 - the gRPC deadline
        follower = turns.Follower(agent_id, session_id, on_event)
        while True:
            try:
                event = await anext(stream)
            except StopAsyncIteration:
                raise turns.ended_early() from None
            except AgentdError as e:
                request = follower.reattach(e, stream.last_sequence_number)
                stream = self.agents.StreamTurnEvents(request, timeout=timeout)
                continue
            if end := follower.end_at(event):
                return end

    @staticmethod
    async def _call_tool(call, tools: Mapping[str, turns.ClientTool]):
        prepared = turns.prepare_call(call, tools)
        if not isinstance(prepared, tuple):
            return prepared
        function, arguments = prepared
        try:
            result = function(**arguments)
            if inspect.isawaitable(result):
                result = await result
            return turns.result_response(call, result)
        except Exception as e:  # noqa: BLE001 - a failing tool is told to the model, as its result
            return turns.failure_response(call, e)
