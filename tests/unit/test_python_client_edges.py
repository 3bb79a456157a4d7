"""The sync Python client's edge cases that a live server cannot be made to produce on
demand, against grpcio-testing's scripted channel: the test plays the server, call by call."""

from __future__ import annotations

import json
import queue
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc_testing
import pytest
from agentd_client import (
    AgentdError,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    TurnFailedError,
    UnavailableError,
)
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import turn_events_pb2 as te

AGENTS = pb.DESCRIPTOR.services_by_name["AgentsService"]
STREAM_TURN = AGENTS.methods_by_name["StreamTurn"]
STREAM_RESUME = AGENTS.methods_by_name["StreamResumeTurn"]
STREAM_EVENTS = AGENTS.methods_by_name["StreamTurnEvents"]
GET_AGENT = AGENTS.methods_by_name["GetAgent"]
TURN_ID = "turn_1"
OK = grpc.StatusCode.OK


@pytest.fixture
def channel():
    return grpc_testing.channel([AGENTS], grpc_testing.strict_real_time())


@pytest.fixture
def client(channel):
    return Client.over(channel, token="tok", timeout=7, metadata=[("x-tenant", "t1")])


@pytest.fixture
def background():
    """Runs the client's side on a thread while the test plays the server."""
    with ThreadPoolExecutor(1) as pool:
        yield pool


def event(seq: int, **payload) -> pb.StreamTurnResponse:
    return pb.StreamTurnResponse(event=te.TurnEvent(sequence_number=seq, turn_id=TURN_ID,
                                                    payload=te.TurnEventPayload(**payload)))


def text(seq: int, chunk: str) -> pb.StreamTurnResponse:
    return event(seq, step_progress=te.StepProgressPayload(
        step_type=t.AGENT_STEP_TYPE_INFERENCE, delta=te.ContentDelta(text=te.TextDelta(text=chunk))))


def turn(status: t.TurnStatus, *calls: tuple[str, str, object]) -> t.Turn:
    tool_calls = [m.AgentToolCall(call_id=c, tool_name=n, arguments=json.dumps(a)) for c, n, a in calls]
    return t.Turn(turn_id=TURN_ID, status=status, output_message=m.CompletionMessage(tool_calls=tool_calls))


def paused(seq: int, *calls) -> pb.StreamTurnResponse:
    return event(seq, turn_awaiting_input=te.TurnAwaitingInputPayload(
        turn=turn(t.TURN_STATUS_AWAITING_INPUT, *calls)))


def complete(seq: int) -> pb.StreamTurnResponse:
    return event(seq, turn_complete=te.TurnCompletePayload(turn=turn(t.TURN_STATUS_COMPLETED)))


def rich_status(code: int, message: str, reason: str, *violations: tuple[str, str]) -> tuple:
    """Trailing metadata carrying a google.rpc.Status as agentd sends it."""
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="agentd.dev",
                                                          metadata={"agent_id": "agent_x"}))
    if violations:
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]))
    return (("grpc-status-details-bin", status.SerializeToString()), ("x-request-id", "req-9"))


class Seen(queue.Queue):
    """The events the client side got, in order; the server side waits on them before it
    ends a call, since the scripted channel drops responses not yet read when a call fails."""

    def wait_for(self, count: int) -> list:
        return [self.get() for _ in range(count)]


def send(rpc, *responses) -> None:
    for response in responses:
        rpc.send_response(response)


def collect(stream, seen: Seen) -> AgentdError | None:
    try:
        for e in stream:
            seen.put(e)
    except AgentdError as error:
        return error
    return None


def test_a_stream_cut_after_n_events_delivers_them_then_raises_unavailable(client, channel, background):
    stream, seen = client.agents.StreamTurn(pb.StreamTurnRequest(agent_id="a", session_id="s")), Seen()
    done = background.submit(collect, stream, seen)
    _, _, rpc = channel.take_unary_stream(STREAM_TURN)
    send(rpc, event(0, turn_start=te.TurnStartPayload(turn_id=TURN_ID)), text(1, "Hel"), text(2, "lo"))
    events = seen.wait_for(3)
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "Connection reset by peer")
    error = done.result()
    assert [e.sequence_number for e in events] == [0, 1, 2] and stream.last_sequence_number == 2
    assert isinstance(error, UnavailableError) and error.reason is None
    assert error.message == "Connection reset by peer"


def test_run_turn_re_attaches_after_a_cut_and_misses_nothing(client, channel, background):
    seen = Seen()
    done = background.submit(client.run_turn, "a", "s", "hi", on_event=seen.put, background=True)
    _, request, rpc = channel.take_unary_stream(STREAM_TURN)
    assert request.background and request.messages[0].user.content.text == "hi"
    send(rpc, event(0, turn_start=te.TurnStartPayload(turn_id=TURN_ID)), text(1, "Hel"))
    seen.wait_for(2)
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "stream reset")
    _, reattach, rpc = channel.take_unary_stream(STREAM_EVENTS)
    assert (reattach.agent_id, reattach.session_id, reattach.turn_id) == ("a", "s", TURN_ID)
    assert reattach.HasField("starting_after") and reattach.starting_after == 1
    send(rpc, text(2, "lo"), complete(3))
    rpc.terminate((), OK, "")
    assert done.result().status == t.TURN_STATUS_COMPLETED
    assert [e.sequence_number for e in seen.wait_for(2)] == [2, 3] and seen.empty()


def test_a_stream_cut_before_its_first_event_is_raised_not_re_attached(client, channel, background):
    done = background.submit(client.run_turn, "a", "s", "hi")
    _, _, rpc = channel.take_unary_stream(STREAM_TURN)
    rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "no route")
    with pytest.raises(UnavailableError):  # no turn id yet: nothing to re-attach to
        done.result()


def test_a_status_with_rich_details_becomes_an_exception_with_them(client, channel, background):
    done = background.submit(client.agents.GetAgent, pb.GetAgentRequest(agent_id="agent_x"),
                             request_id="req-9", metadata=[("x-extra", "1")])
    metadata, _, rpc = channel.take_unary_unary(GET_AGENT)
    assert ("authorization", "Bearer tok") in metadata and ("x-request-id", "req-9") in metadata
    assert ("x-tenant", "t1") in metadata and ("x-extra", "1") in metadata
    rpc.terminate(None, rich_status(code_pb2.NOT_FOUND, "agent agent_x not found", "AGENT_NOT_FOUND"),
                  grpc.StatusCode.NOT_FOUND, "agent agent_x not found")
    with pytest.raises(NotFoundError) as caught:
        done.result()
    error = caught.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert (error.reason, error.domain) == ("AGENT_NOT_FOUND", "agentd.dev")
    assert error.error_metadata == {"agent_id": "agent_x"} and error.request_id == "req-9"
    assert error.status.message == "agent agent_x not found"


def test_a_stream_refused_with_field_violations(client, channel, background):
    seen = Seen()
    done = background.submit(collect, client.agents.StreamTurn(pb.StreamTurnRequest(agent_id="a")), seen)
    _, _, rpc = channel.take_unary_stream(STREAM_TURN)
    trailers = rich_status(code_pb2.INVALID_ARGUMENT, "bad turn", "INVALID_ARGUMENT",
                           ("session_id", "required"), ("messages", "required"))
    rpc.terminate(trailers, grpc.StatusCode.INVALID_ARGUMENT, "bad turn")
    error = done.result()
    assert seen.empty() and isinstance(error, InvalidArgumentError)
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("session_id", "required"), ("messages", "required")]


def test_undecodable_details_still_give_the_code_and_message(client, channel, background):
    done = background.submit(client.agents.GetAgent, pb.GetAgentRequest(agent_id="agent_x"))
    _, _, rpc = channel.take_unary_unary(GET_AGENT)
    rpc.terminate(None, (("grpc-status-details-bin", b"\xff\x00not a status"),),
                  grpc.StatusCode.NOT_FOUND, "gone")
    with pytest.raises(NotFoundError) as caught:
        done.result()
    assert (caught.value.message, caught.value.reason, caught.value.status) == ("gone", None, None)


def test_a_deadline_expiring_mid_stream_raises_after_the_events_and_is_not_re_attached(
        client, channel, background):
    seen = Seen()
    done = background.submit(client.run_turn, "a", "s", "hi", on_event=seen.put, timeout=5)
    _, _, rpc = channel.take_unary_stream(STREAM_TURN)
    send(rpc, event(0, turn_start=te.TurnStartPayload(turn_id=TURN_ID)), text(1, "slow"))
    assert [e.sequence_number for e in seen.wait_for(2)] == [0, 1]
    rpc.terminate((), grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    with pytest.raises(DeadlineExceededError):  # the caller's deadline: raised, not retried
        done.result()


def test_the_client_tool_loop_facing_a_second_pause(client, channel, background):
    asked = []

    def get_weather(city: str) -> dict:
        asked.append(city)
        return {"sky": "sunny"}

    done = background.submit(client.run_turn, "a", "s", "weather?", tools={"get_weather": get_weather})
    _, _, rpc = channel.take_unary_stream(STREAM_TURN)
    send(rpc, event(0, turn_start=te.TurnStartPayload(turn_id=TURN_ID)),
         paused(1, ("c1", "get_weather", {"city": "Paris"})))
    rpc.terminate((), OK, "")
    _, first, rpc = channel.take_unary_stream(STREAM_RESUME)
    assert (first.turn_id, [r.call_id for r in first.tool_responses]) == (TURN_ID, ["c1"])
    assert json.loads(first.tool_responses[0].content.text) == {"sky": "sunny"}
    # The resumed turn asks again: two calls at once, one to a tool the client lacks.
    send(rpc, paused(2, ("c2", "get_weather", {"city": "Rome"}), ("c3", "get_time", {})))
    rpc.terminate((), OK, "")
    _, second, rpc = channel.take_unary_stream(STREAM_RESUME)
    assert [(r.call_id, r.HasField("error_message")) for r in second.tool_responses] == [
        ("c2", False), ("c3", True)]
    send(rpc, complete(3))
    rpc.terminate((), OK, "")
    assert done.result().status == t.TURN_STATUS_COMPLETED and asked == ["Paris", "Rome"]


def test_a_call_whose_arguments_are_not_a_json_object_is_answered_without_calling_the_tool(
        client, channel, background):
    asked = []
    done = background.submit(client.run_turn, "a", "s", "weather?",
                             tools={"get_weather": lambda **arguments: asked.append(arguments)})
    _, _, rpc = channel.take_unary_stream(STREAM_TURN)
    send(rpc, event(0, turn_start=te.TurnStartPayload(turn_id=TURN_ID)),
         paused(1, ("c1", "get_weather", ["Paris"])))  # a JSON array, not an object
    rpc.terminate((), OK, "")
    _, resume, rpc = channel.take_unary_stream(STREAM_RESUME)
    [response] = resume.tool_responses
    assert (response.call_id, response.content.text, response.error_message) == (
        "c1", "error: the arguments are not a JSON object", "the arguments are not a JSON object")
    send(rpc, complete(2))
    rpc.terminate((), OK, "")
    assert done.result().status == t.TURN_STATUS_COMPLETED and asked == []


def test_a_failed_turn_raises_turn_failed_with_its_error(client, channel, background):
    done = background.submit(client.run_turn, "a", "s", "hi")
    _, _, rpc = channel.take_unary_stream(STREAM_TURN)
    error = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="the model is down")
    error.details.add().Pack(error_details_pb2.ErrorInfo(reason="MODEL_UNAVAILABLE", domain="agentd.dev"))
    send(rpc, event(0, turn_failed=te.TurnFailedPayload(turn=turn(t.TURN_STATUS_FAILED), error=error)))
    rpc.terminate((), OK, "")
    with pytest.raises(TurnFailedError) as caught:  # UNAVAILABLE here is the turn's, not the stream's
        done.result()
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE")
    assert caught.value.turn.status == t.TURN_STATUS_FAILED


def test_a_stream_ending_before_the_turn_does_is_an_error(client, channel, background):
    done = background.submit(client.run_turn, "a", "s", "hi")
    _, _, rpc = channel.take_unary_stream(STREAM_TURN)
    send(rpc, event(0, turn_start=te.TurnStartPayload(turn_id=TURN_ID)))
    rpc.terminate((), OK, "")
    with pytest.raises(AgentdError, match="ended before the turn did"):
        done.result()
