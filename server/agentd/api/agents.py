"""AgentsService: agents, sessions, and turns run by the turn engine (engine/turns)."""

from __future__ import annotations

import contextlib

from agentd import ids, paging
from agentd.api.fields import no_nul as _no_nul
from agentd.api.fields import request_id_of, starting_after_of
from agentd.api.stream_events import event_response
from agentd.clock import timestamp
from agentd.context import principal
from agentd.engine import agent_config
from agentd.engine.runs import TURNS, run_to_end
from agentd.engine.turns import TurnEngine
from agentd.errors import InvalidArgument, NotFound, Unimplemented
from agentd.storage.agents import AgentStore
from agentd.v1 import agent_resources_pb2 as types
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import agents_pb2_grpc

MAX_SESSION_NAME = 1024


class AgentsServicer(agents_pb2_grpc.AgentsServiceServicer):
    def __init__(self, store: AgentStore, engine: TurnEngine | None = None):
        self.store = store
        self.engine = engine

    # ------------------------------------------------------------------ agents

    async def CreateAgent(self, request: pb.CreateAgentRequest, context) -> pb.CreateAgentResponse:
        request_id = request_id_of(request)
        agent = types.Agent(agent_id=ids.new_id(ids.AGENT), created_at=timestamp(),
                            agent_config=agent_config.normalize(request.agent_config))
        agent = await self.store.create_agent(principal.get(), agent, request_id)
        return pb.CreateAgentResponse(agent_id=agent.agent_id, agent=agent)

    async def GetAgent(self, request: pb.GetAgentRequest, context) -> pb.GetAgentResponse:
        agent_id = _no_nul(request.agent_id, "agent_id")
        agent = await self.store.get_agent(principal.get(), agent_id)
        if agent is None:
            raise NotFound("agent", agent_id)
        return pb.GetAgentResponse(agent=agent)

    async def ListAgents(self, request: pb.ListAgentsRequest, context) -> pb.ListAgentsResponse:
        agents, page = await self.store.list_agents(principal.get(), paging.decode(request.page_token),
                                                    paging.page_size(request.page_size))
        return pb.ListAgentsResponse(data=agents, has_more=page.has_more,
                                     next_page_token=page.next_page_token)

    async def DeleteAgent(self, request: pb.DeleteAgentRequest, context) -> pb.DeleteAgentResponse:
        agent_id = _no_nul(request.agent_id, "agent_id")
        if self.engine is not None:
            await self.engine.stop_runs(principal.get(), agent_id)
        deleted = await self.store.delete_agent(principal.get(), agent_id)
        if self.engine is not None:
            await self.engine.stop_runs_deleted(principal.get())
        if not deleted:
            raise NotFound("agent", agent_id)
        return pb.DeleteAgentResponse()

    async def _not_found(self, agent_id: str, resource: str, resource_id: str) -> NotFound:
        """The NOT_FOUND for a child that is missing: its agent's, when the agent is missing
        too. Looked up only on this failure path; a found child proves its agent exists
        (deleting an agent cascades to its sessions, turns and steps)."""
        if not await self.store.agent_exists(principal.get(), agent_id):
            return NotFound("agent", agent_id)
        return NotFound(resource, resource_id)

    # ---------------------------------------------------------------- sessions

    async def CreateSession(self, request: pb.CreateSessionRequest, context) -> pb.CreateSessionResponse:
        name = _no_nul(request.session_name, "session_name")
        if len(name) > MAX_SESSION_NAME:
            raise InvalidArgument("session_name", f"at most {MAX_SESSION_NAME} characters")
        agent_id = _no_nul(request.agent_id, "agent_id")
        request_id = request_id_of(request)
        session = types.AgentSession(session_id=ids.new_id(ids.SESSION), session_name=name,
                                     started_at=timestamp())
        session = await self.store.create_session(principal.get(), agent_id, session, request_id)
        if session is None:
            raise NotFound("agent", agent_id)
        return pb.CreateSessionResponse(session_id=session.session_id, session=session)

    async def GetSession(self, request: pb.GetSessionRequest, context) -> pb.GetSessionResponse:
        session = await self._session(request.agent_id, request.session_id)
        session.turns.extend(await self.store.session_turns(principal.get(), session.session_id,
                                                            list(request.turn_ids) or None))
        return pb.GetSessionResponse(session=session)

    async def ListSessions(self, request: pb.ListSessionsRequest, context) -> pb.ListSessionsResponse:
        agent_id = _no_nul(request.agent_id, "agent_id")
        sessions, page = await self.store.list_sessions(
            principal.get(), agent_id, paging.decode(request.page_token), paging.page_size(request.page_size))
        if not sessions and not await self.store.agent_exists(principal.get(), agent_id):
            raise NotFound("agent", agent_id)  # an empty list of a missing agent is not a list
        return pb.ListSessionsResponse(data=sessions, has_more=page.has_more,
                                       next_page_token=page.next_page_token)

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context) -> pb.DeleteSessionResponse:
        agent_id = _no_nul(request.agent_id, "agent_id")
        session_id = _no_nul(request.session_id, "session_id")
        if self.engine is not None:
            await self.engine.stop_runs(principal.get(), agent_id, session_id)
        deleted = await self.store.delete_session(principal.get(), agent_id, session_id)
        if self.engine is not None:
            await self.engine.stop_runs_deleted(principal.get())
        if not deleted:
            raise await self._not_found(agent_id, "session", session_id)
        return pb.DeleteSessionResponse()

    async def _session(self, agent_id: str, session_id: str) -> types.AgentSession:
        agent_id = _no_nul(agent_id, "agent_id")
        session = await self.store.get_session(principal.get(), agent_id, _no_nul(session_id, "session_id"))
        if session is None:
            raise await self._not_found(agent_id, "session", session_id)
        return session

    # ------------------------------------------------------------ turns, steps

    async def GetTurn(self, request: pb.GetTurnRequest, context) -> pb.GetTurnResponse:
        await self._session(request.agent_id, request.session_id)  # the session must be this agent's
        turn_id = _no_nul(request.turn_id, "turn_id")
        turn = await self.store.get_turn(principal.get(), request.session_id, turn_id)
        if turn is None:
            raise NotFound("turn", turn_id)
        return pb.GetTurnResponse(turn=turn)

    async def GetStep(self, request: pb.GetStepRequest, context) -> pb.GetStepResponse:
        await self._session(request.agent_id, request.session_id)
        turn_id = _no_nul(request.turn_id, "turn_id")
        step_id = _no_nul(request.step_id, "step_id")
        step = await self.store.get_step(principal.get(), request.session_id, turn_id, step_id)
        if step is None:
            if not await self.store.turn_exists(principal.get(), request.session_id, turn_id):
                raise NotFound("turn", turn_id)
            raise NotFound("step", step_id)
        return pb.GetStepResponse(step=step)

    # ------------------------------------------------------------------ running turns
    # The engine does the work; these translate requests and stream events. A stream is read
    # under aclosing so a dropped call closes it at once (cancelling a non-background turn).

    @staticmethod
    async def _turn_of_terminal(events) -> types.Turn:
        """What the unary forms return: the turn of the stream's last event."""
        terminal = await run_to_end(events, TURNS)
        if terminal is None:  # on_stop always ends a turn's stream with turn_failed
            raise RuntimeError("the turn's stream ended without its status event")
        payload = terminal.payload
        return getattr(payload, payload.WhichOneof("payload")).turn

    def _start(self, request, context):
        engine = self._engine()
        return engine.start_turn(
            principal.get(), _no_nul(request.agent_id, "agent_id"), _no_nul(request.session_id, "session_id"),
            messages=list(request.messages), documents=list(request.documents),
            toolgroups=list(request.toolgroups),
            tool_config=request.tool_config if request.HasField("tool_config") else None,
            instructions=request.instructions if request.HasField("instructions") else None,
            background=request.background, request_id=request_id_of(request),
            timeout_s=context.time_remaining())

    def _resume(self, request, context):
        return self._engine().resume_turn(
            principal.get(), _no_nul(request.agent_id, "agent_id"), _no_nul(request.session_id, "session_id"),
            _no_nul(request.turn_id, "turn_id"), tool_responses=list(request.tool_responses),
            background=request.background, request_id=request_id_of(request),
            timeout_s=context.time_remaining())

    def _engine(self) -> TurnEngine:
        if self.engine is None:
            raise Unimplemented("Running turns is not available: no turn engine is configured.")
        return self.engine

    async def CreateTurn(self, request: pb.CreateTurnRequest, context) -> pb.CreateTurnResponse:
        events = await self._start(request, context)
        return pb.CreateTurnResponse(turn=await self._turn_of_terminal(events))

    async def StreamTurn(self, request: pb.StreamTurnRequest, context):
        events = await self._start(request, context)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event_response(pb.StreamTurnResponse, event)

    async def ResumeTurn(self, request: pb.ResumeTurnRequest, context) -> pb.ResumeTurnResponse:
        events = await self._resume(request, context)
        return pb.ResumeTurnResponse(turn=await self._turn_of_terminal(events))

    async def StreamResumeTurn(self, request: pb.StreamResumeTurnRequest, context):
        events = await self._resume(request, context)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event_response(pb.StreamResumeTurnResponse, event)

    async def StreamTurnEvents(self, request: pb.StreamTurnEventsRequest, context):
        events = await self._engine().follow(
            principal.get(), _no_nul(request.agent_id, "agent_id"), _no_nul(request.session_id, "session_id"),
            _no_nul(request.turn_id, "turn_id"),
            starting_after_of(request))
        async with contextlib.aclosing(events):
            async for event in events:
                yield event_response(pb.StreamTurnEventsResponse, event)

    async def CancelTurn(self, request: pb.CancelTurnRequest, context) -> pb.CancelTurnResponse:
        turn = await self._engine().cancel(
            principal.get(), _no_nul(request.agent_id, "agent_id"), _no_nul(request.session_id, "session_id"),
            _no_nul(request.turn_id, "turn_id"))
        return pb.CancelTurnResponse(turn=turn)
