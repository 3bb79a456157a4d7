"""AgentsService: agents and sessions now; turns arrive with the turn engine."""

from __future__ import annotations

import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from agentd import paging
from agentd.clock import now_micros
from agentd.context import principal
from agentd.engine import agent_config
from agentd.errors import InvalidArgument, NotFound, Unimplemented
from agentd.storage import Repository, schema
from agentd.v1 import agent_types_pb2 as types
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import agents_pb2_grpc

MAX_SESSION_NAME = 1024


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _timestamp(micros: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(micros)
    return ts


def _required(value: str, field: str) -> str:
    """A required id or name. NUL is refused here: PostgreSQL cannot store or compare it."""
    if not value:
        raise InvalidArgument(field, "required")
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


class AgentsServicer(agents_pb2_grpc.AgentsServiceServicer):
    def __init__(self, repo: Repository):
        self.repo = repo

    # ------------------------------------------------------------------ agents

    async def CreateAgent(self, request: pb.CreateAgentRequest, context) -> pb.CreateAgentResponse:
        if not request.HasField("agent_config"):
            raise InvalidArgument("agent_config", "required")
        created = now_micros()
        agent = types.Agent(agent_id=new_id("agent"), created_at=_timestamp(created),
                            agent_config=agent_config.normalize(request.agent_config))
        await self.repo.insert(schema.agents, id=agent.agent_id, owner=principal.get(),
                               created_at=created, body=agent.SerializeToString())
        return pb.CreateAgentResponse(agent_id=agent.agent_id, agent=agent)

    async def GetAgent(self, request: pb.GetAgentRequest, context) -> pb.GetAgentResponse:
        return pb.GetAgentResponse(agent=await self._agent(request.agent_id))

    async def ListAgents(self, request: pb.ListAgentsRequest, context) -> pb.ListAgentsResponse:
        page = await self.repo.page(schema.agents, principal.get(), paging.decode(request.page_token),
                                    paging.page_size(request.page_size))
        return pb.ListAgentsResponse(data=[types.Agent.FromString(b) for b in page.bodies],
                                     has_more=page.has_more, next_page_token=page.next_page_token)

    async def DeleteAgent(self, request: pb.DeleteAgentRequest, context) -> pb.DeleteAgentResponse:
        agent_id = _required(request.agent_id, "agent_id")
        if not await self.repo.delete(schema.agents, principal.get(), agent_id):
            raise NotFound("agent", agent_id)
        return pb.DeleteAgentResponse()

    async def _agent(self, agent_id: str) -> types.Agent:
        body = await self.repo.get_body(schema.agents, principal.get(), _required(agent_id, "agent_id"))
        if body is None:
            raise NotFound("agent", agent_id)
        return types.Agent.FromString(body)

    async def _not_found(self, agent_id: str, resource: str, resource_id: str) -> NotFound:
        """The NOT_FOUND for a child that is missing: its agent's, when the agent is missing
        too. Looked up only on this failure path; a found child proves its agent exists
        (deleting an agent cascades to its sessions, turns and steps)."""
        if not await self.repo.exists(schema.agents, principal.get(), agent_id):
            return NotFound("agent", agent_id)
        return NotFound(resource, resource_id)

    # ---------------------------------------------------------------- sessions

    async def CreateSession(self, request: pb.CreateSessionRequest, context) -> pb.CreateSessionResponse:
        name = _required(request.session_name, "session_name")
        if len(name) > MAX_SESSION_NAME:
            raise InvalidArgument("session_name", f"at most {MAX_SESSION_NAME} characters")
        agent_id = _required(request.agent_id, "agent_id")
        created = now_micros()
        session = types.Session(session_id=new_id("sess"), session_name=name,
                                started_at=_timestamp(created))
        if not await self.repo.insert_child(schema.sessions, schema.agents, agent_id,
                                            id=session.session_id, owner=principal.get(),
                                            agent_id=agent_id, created_at=created,
                                            body=session.SerializeToString()):
            raise NotFound("agent", agent_id)
        return pb.CreateSessionResponse(session_id=session.session_id, session=session)

    async def GetSession(self, request: pb.GetSessionRequest, context) -> pb.GetSessionResponse:
        session = await self._session(request.agent_id, request.session_id)
        cursor, wanted = paging.Cursor(), list(request.turn_ids) or None
        while True:  # every turn (or every wanted one), oldest first
            page = await self.repo.page(schema.turns, principal.get(), cursor, paging.MAX_PAGE_SIZE,
                                        ids=wanted, session_id=session.session_id)
            session.turns.extend(types.Turn.FromString(b) for b in page.bodies)
            if page.next_cursor is None:
                return pb.GetSessionResponse(session=session)
            cursor = page.next_cursor

    async def ListSessions(self, request: pb.ListSessionsRequest, context) -> pb.ListSessionsResponse:
        agent_id = _required(request.agent_id, "agent_id")
        page = await self.repo.page(schema.sessions, principal.get(), paging.decode(request.page_token),
                                    paging.page_size(request.page_size), agent_id=agent_id)
        if not page.bodies and not await self.repo.exists(schema.agents, principal.get(), agent_id):
            raise NotFound("agent", agent_id)  # an empty list of a missing agent is not a list
        return pb.ListSessionsResponse(data=[types.Session.FromString(b) for b in page.bodies],
                                       has_more=page.has_more, next_page_token=page.next_page_token)

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context) -> pb.DeleteSessionResponse:
        agent_id = _required(request.agent_id, "agent_id")
        session_id = _required(request.session_id, "session_id")
        if not await self.repo.delete(schema.sessions, principal.get(), session_id, agent_id=agent_id):
            raise await self._not_found(agent_id, "session", session_id)
        return pb.DeleteSessionResponse()

    async def _session(self, agent_id: str, session_id: str) -> types.Session:
        agent_id = _required(agent_id, "agent_id")
        body = await self.repo.get_body(schema.sessions, principal.get(),
                                        _required(session_id, "session_id"), agent_id=agent_id)
        if body is None:
            raise await self._not_found(agent_id, "session", session_id)
        return types.Session.FromString(body)

    # ------------------------------------------------------------ turns, steps

    async def GetTurn(self, request: pb.GetTurnRequest, context) -> pb.GetTurnResponse:
        return pb.GetTurnResponse(turn=await self._turn(request.agent_id, request.session_id,
                                                        request.turn_id))

    async def GetStep(self, request: pb.GetStepRequest, context) -> pb.GetStepResponse:
        turn = await self._turn(request.agent_id, request.session_id, request.turn_id)
        step_id = _required(request.step_id, "step_id")
        for step in turn.steps:
            if getattr(step, step.WhichOneof("step")).step_id == step_id:
                return pb.GetStepResponse(step=step)
        raise NotFound("step", step_id)

    async def _turn(self, agent_id: str, session_id: str, turn_id: str) -> types.Turn:
        await self._session(agent_id, session_id)  # the session must belong to this agent
        body = await self.repo.get_body(schema.turns, principal.get(), _required(turn_id, "turn_id"),
                                        session_id=session_id)
        if body is None:
            raise NotFound("turn", turn_id)
        return types.Turn.FromString(body)

    # The turn engine is a later issue; until then these answer UNIMPLEMENTED.

    async def CreateTurn(self, request, context):
        raise Unimplemented("Running turns is not available yet.", reason="TURNS_NOT_AVAILABLE")

    async def ResumeTurn(self, request, context):
        raise Unimplemented("Running turns is not available yet.", reason="TURNS_NOT_AVAILABLE")

    async def StreamTurn(self, request, context):
        raise Unimplemented("Running turns is not available yet.", reason="TURNS_NOT_AVAILABLE")
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    async def StreamResumeTurn(self, request, context):
        raise Unimplemented("Running turns is not available yet.", reason="TURNS_NOT_AVAILABLE")
        yield  # pragma: no cover
