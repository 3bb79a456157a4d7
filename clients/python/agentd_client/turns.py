"""Running a turn to its end with local Python functions as client tools.

A turn whose model calls a client tool pauses (`turn_awaiting_input`, the calls in the
turn's `output_message.tool_calls`); the caller runs them and resumes the turn with their
results, until the turn completes. `Client.run_turn` and `AsyncClient.run_turn` do that loop;
this module holds what both forms share: building the request and the tool responses, and
reading what an event means for the loop.

A tool is any callable taking the call's JSON arguments as keyword arguments; its result is
sent as text (a string as is, anything else as JSON). A tool that raises, an unknown tool
name and arguments that are not a JSON object are told to the model as the call's error
(`error_message`), as llama-stack-client's Agent does, and the turn goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from agentd.v1 import agent_messages_pb2 as messages_pb2
from agentd.v1 import agent_resources_pb2 as resources_pb2
from agentd.v1 import agents_pb2, turn_events_pb2
from agentd_client.errors import AgentdError, TurnFailedError

ClientTool = Callable[..., Any]
EventCallback = Callable[[turn_events_pb2.TurnEvent], None]
Messages = str | Sequence[messages_pb2.TurnInputMessage]

# How many times a run re-attaches to its turn after a dropped stream, per stream.
REATTACH_ATTEMPTS = 3


def input_messages(messages: Messages) -> list[messages_pb2.TurnInputMessage]:
    """A string is one user message."""
    if isinstance(messages, str):
        return [messages_pb2.TurnInputMessage(
            user=messages_pb2.UserMessage(content=messages_pb2.InterleavedContent(text=messages)))]
    return list(messages)


def turn_request(agent_id: str, session_id: str, messages: Messages, idempotency_key: str | None,
                 background: bool) -> agents_pb2.StreamTurnRequest:
    return agents_pb2.StreamTurnRequest(agent_id=agent_id, session_id=session_id,
                                        messages=input_messages(messages),
                                        request_id=idempotency_key, background=background)


def resume_request(agent_id: str, session_id: str, end: TurnEnd,
                   responses: Sequence[messages_pb2.AgentToolResponse],
                   background: bool) -> agents_pb2.StreamResumeTurnRequest:
    return agents_pb2.StreamResumeTurnRequest(agent_id=agent_id, session_id=session_id,
                                              turn_id=end.turn.turn_id, tool_responses=responses,
                                              background=background)


def _tool_response(call: messages_pb2.AgentToolCall, text: str, error: str | None = None):
    return messages_pb2.AgentToolResponse(
        call_id=call.call_id, tool_name=call.tool_name,
        content=messages_pb2.InterleavedContent(text=text), error_message=error)


def prepare_call(call: messages_pb2.AgentToolCall, tools: Mapping[str, ClientTool]):
    """(the function, its arguments) for a call, or the error response to send instead."""
    function = tools.get(call.tool_name)
    if function is None:
        return _tool_response(call, f"error: no client tool named {call.tool_name!r}",
                              f"no client tool named {call.tool_name!r}")
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        return _tool_response(call, "error: the arguments are not a JSON object",
                              "the arguments are not a JSON object")
    return function, arguments


def result_response(call: messages_pb2.AgentToolCall, result: Any) -> messages_pb2.AgentToolResponse:
    return _tool_response(call, result if isinstance(result, str) else json.dumps(result, default=str))


def failure_response(call: messages_pb2.AgentToolCall, error: Exception) -> messages_pb2.AgentToolResponse:
    return _tool_response(call, f"error: {error}", f"{type(error).__name__}: {error}")


def pending_calls(turn: resources_pb2.Turn) -> list[messages_pb2.AgentToolCall]:
    """The client tool calls a paused turn waits on (all of them, batched)."""
    return list(turn.output_message.tool_calls)


# The events that end a stream of a turn: it completed, paused for client tools, or failed.
_END_KINDS = frozenset({"turn_complete", "turn_awaiting_input", "turn_failed"})


@dataclass(frozen=True)
class TurnEnd:
    """Where a stream of a turn stopped: `turn_complete` or `turn_awaiting_input` (a failed
    turn raises instead)."""

    kind: str
    turn: resources_pb2.Turn


class Follower:
    """Following one turn through its streams, for both client forms: what each event means
    for the loop, and how to re-attach when a stream breaks after the turn began."""

    def __init__(self, agent_id: str, session_id: str, on_event: EventCallback | None):
        self.agent_id, self.session_id, self.on_event = agent_id, session_id, on_event
        self.turn_id: str | None = None
        self.attempts_left = REATTACH_ATTEMPTS

    def end_at(self, event: turn_events_pb2.TurnEvent) -> TurnEnd | None:
        """Where the turn stopped if `event` ends this stream; raises TurnFailedError."""
        self.turn_id = event.turn_id or self.turn_id
        if self.on_event:
            self.on_event(event)
        payload = event.payload
        kind = payload.WhichOneof("payload")  # once per event: this runs for every delta
        if kind not in _END_KINDS:
            return None
        if kind == "turn_failed":
            raise TurnFailedError(payload.turn_failed.turn, payload.turn_failed.error)
        return TurnEnd(kind, getattr(payload, kind).turn)

    def reattach(self, error: AgentdError, last_sequence_number: int | None):
        """The StreamTurnEvents request that picks up after a dropped stream (UNAVAILABLE:
        the connection, a proxy); any other error, or one before the turn began, is raised."""
        if error.code != grpc.StatusCode.UNAVAILABLE or self.turn_id is None or self.attempts_left == 0:
            raise error
        self.attempts_left -= 1
        return agents_pb2.StreamTurnEventsRequest(agent_id=self.agent_id, session_id=self.session_id,
                                                  turn_id=self.turn_id, starting_after=last_sequence_number)


def ended_early() -> AgentdError:
    return AgentdError(grpc.StatusCode.UNKNOWN, "the stream ended before the turn did")
