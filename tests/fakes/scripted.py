"""Scripted servicers for the gateway's tests: fixed event scripts in place of the engine,
served through the real gateway (GatewayServer, uvicorn on an ephemeral port)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from google.api import httpbody_pb2
from google.rpc import code_pb2, status_pb2

from agentd import codec
from agentd.errors import NotFound
from agentd.v1 import agent_messages_pb2 as messages
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import (
    agents_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    response_events_pb2,
    response_resource_pb2,
    responses_pb2,
    responses_pb2_grpc,
)
from agentd.v1 import turn_events_pb2 as events

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "openai"
FAILURE = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="Model 'm' is unavailable.")


def turn(turn_id: str = "turn_1", status=t.TURN_STATUS_COMPLETED) -> t.Turn:
    return t.Turn(turn_id=turn_id, session_id="sess_1", status=status,
                  output_message=messages.CompletionMessage(content=messages.InterleavedContent(text="done")))


def turn_event(n: int, **payload) -> events.TurnEvent:
    return events.TurnEvent(sequence_number=n, turn_id="turn_1", payload=events.TurnEventPayload(**payload))


def progress(n: int) -> events.TurnEvent:
    return turn_event(n, step_progress=events.StepProgressPayload(
        step_type=t.AGENT_STEP_TYPE_INFERENCE, step_id="step_1",
        delta=events.ContentDelta(text=events.TextDelta(text=f"word{n} "))))


def heartbeat(n: int) -> events.TurnEvent:
    return turn_event(n, heartbeat=events.HeartbeatPayload())


# The turn scripts, by session id: heartbeats interleaved (they repeat the last number).
TURN_SCRIPTS = {
    "sess_heartbeat": [turn_event(0, turn_start=events.TurnStartPayload(turn_id="turn_1")), heartbeat(0),
                       progress(1), heartbeat(1), heartbeat(1), progress(2),
                       turn_event(3, turn_complete=events.TurnCompletePayload(turn=turn()))],
    "sess_turn_failed": [turn_event(0, turn_start=events.TurnStartPayload(turn_id="turn_1")), progress(1),
                         heartbeat(1),
                         turn_event(2, turn_failed=events.TurnFailedPayload(
                             turn=turn(status=t.TURN_STATUS_FAILED), error=FAILURE)),
                         progress(99)],  # never sent: the failure ends the SSE stream
}


class ScriptedAgents(agents_pb2_grpc.AgentsServiceServicer):
    def __init__(self):
        self.requests: list = []
        self.closed = asyncio.Event()

    async def CreateAgent(self, request, context):
        return pb.CreateAgentResponse(agent_id="agent_1")

    async def CreateSession(self, request, context):
        return pb.CreateSessionResponse(session_id="sess_turn_failed")

    async def CreateTurn(self, request, context):
        self.requests.append(request)
        return pb.CreateTurnResponse(turn=turn("turn_unary"))

    async def GetTurn(self, request, context):
        self.requests.append(request)
        return pb.GetTurnResponse(turn=turn(request.turn_id))

    async def StreamTurn(self, request, context):
        self.requests.append(request)
        try:
            for event in TURN_SCRIPTS[request.session_id]:
                yield pb.StreamTurnResponse(event=event)
        finally:
            self.closed.set()

    async def StreamTurnEvents(self, request, context):
        self.requests.append(request)
        if request.turn_id == "turn_missing":
            raise NotFound("turn", request.turn_id)
        for event in TURN_SCRIPTS["sess_heartbeat"]:
            if not request.HasField("starting_after") or event.sequence_number > request.starting_after:
                yield pb.StreamTurnEventsResponse(event=event)


def response_events() -> list[response_events_pb2.ResponseStreamEvent]:
    """A plain text answer (from the OpenAI fixtures) with heartbeats between its events."""
    documents = json.loads((FIXTURES / "response_stream_events.json").read_text())
    wanted = ["response.created", "response.in_progress", "response.output_text.delta", "response.completed"]
    script = []
    for n, kind in enumerate(wanted):
        document = dict(next(d for d in documents if d["type"] == kind), sequence_number=n)
        script.append(codec.parse(document, response_events_pb2.ResponseStreamEvent))
        script.append(response_events_pb2.ResponseStreamEvent(
            sequence_number=n, heartbeat=response_events_pb2.ResponseHeartbeatEvent()))
    return script


class ScriptedResponses(responses_pb2_grpc.ResponsesServiceServicer):
    def __init__(self):
        self.requests: list = []

    async def CreateResponse(self, request, context):
        self.requests.append(request)
        document = json.loads((FIXTURES / "response.json").read_text())
        response = codec.parse(document, response_resource_pb2.Response)
        return responses_pb2.CreateResponseResponse(response=response)

    async def StreamResponse(self, request, context):
        self.requests.append(request)
        for event in response_events():
            yield responses_pb2.StreamResponseResponse(event=event)

    async def StreamResponseEvents(self, request, context):
        self.requests.append(request)
        for event in response_events():
            if event.sequence_number > request.starting_after:
                yield responses_pb2.StreamResponseEventsResponse(event=event)


class ScriptedFiles(files_pb2_grpc.FilesServiceServicer):
    def __init__(self):
        self.requests: list = []

    async def UploadFile(self, request, context):
        self.requests.append(request)
        return files_pb2.UploadFileResponse(file=files_pb2.File(
            id="file_1", bytes=len(request.file.data), created_at=1_700_000_000,
            filename=request.file.filename, purpose=request.purpose, status="processed"))

    async def GetFileContent(self, request, context):
        if request.file_id == "file_missing":
            raise NotFound("file", request.file_id)
        return httpbody_pb2.HttpBody(content_type="text/csv", data=b"a,b\n1,\xff\n")


def servicers() -> dict[str, object]:
    return {"agentd.v1.AgentsService": ScriptedAgents(), "agentd.v1.ResponsesService": ScriptedResponses(),
            "agentd.v1.FilesService": ScriptedFiles()}
