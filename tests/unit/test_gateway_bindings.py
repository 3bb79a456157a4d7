"""The gateway's option-driven bindings (options.proto): stream_flag, SSE framing, event ids,
Last-Event-ID, keep-alive and error events, from_header, HttpBody answers and multipart
bodies. Scripted servicers (tests/fakes/scripted.py) behind the real gateway."""

from __future__ import annotations

import json

import httpx
import pytest
import pytest_asyncio

from agentd.app import SERVICES
from agentd.gateway.server import GatewayServer
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import files_pb2
from tests.fakes.scripted import servicers

MAX_BODY = 4096
# FilesService is in the contract but not served by agentd yet: the scripted one stands in.
SERVED = [*SERVICES, files_pb2.DESCRIPTOR.services_by_name["FilesService"]]


@pytest_asyncio.fixture
async def gateway():
    served = servicers()
    server = GatewayServer("127.0.0.1:0", SERVED, served, max_body_bytes=MAX_BODY)
    port = await server.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        yield client, served
    await server.stop(0)


def sse_events(text: str) -> list[dict]:
    """The events as an SSE decoder dispatches them (a blank line ends one), comments kept."""
    found, current = [], {}
    lines = text.split("\n")
    for line in lines[:-1] if text.endswith("\n") else lines:  # the text after the last newline
        if not line:
            if current:
                found.append(current)
            current = {}
        elif line.startswith(":"):
            current.setdefault("comments", []).append(line)
        else:
            name, _, value = line.partition(": ")
            current[name] = json.loads(value) if name == "data" else value
    assert not current or set(current) == {"comments"}, current
    return found


TURN = "/v1/agents/agent_1/session/{}/turn"
# The smallest valid turn input (the request validator refuses an empty messages list).
MESSAGES = [{"role": "user", "content": "hi"}]


async def test_llama_stack_stream_has_data_and_id_lines_and_bare_keepalive_comments(gateway):
    client, _ = gateway
    response = await client.post(TURN.format("sess_heartbeat"), json={"messages": MESSAGES, "stream": True})
    assert response.status_code == 200
    text = response.text
    # The heartbeat is one comment line with no blank line after it.
    assert text.startswith('id: 0\ndata: {"event":{"payload":{"event_type":"turn_start"')
    assert "\n\n: keep-alive\nid: 1\ndata: " in text
    assert "\n\n: keep-alive\n: keep-alive\nid: 2\ndata: " in text
    assert ": keep-alive\n\n" not in text and "event: " not in text
    events = sse_events(text)
    assert [(e["id"], e["data"]["event"]["payload"]["event_type"]) for e in events] == [
        ("0", "turn_start"), ("1", "step_progress"), ("2", "step_progress"), ("3", "turn_complete")]
    assert [e["data"]["event"]["sequence_number"] for e in events] == [0, 1, 2, 3]
    assert "heartbeat" not in text


async def test_turn_failed_is_the_routes_error_event_and_ends_the_stream(gateway):
    client, served = gateway
    response = await client.post(TURN.format("sess_turn_failed"), json={"messages": MESSAGES, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [e["id"] for e in events] == ["0", "1", "2"]
    assert events[-1]["data"] == {"error": {"message": "503: Model 'm' is unavailable."}}
    assert "word99" not in response.text
    assert served["agentd.v1.AgentsService"].closed.is_set()


async def test_openai_stream_has_event_lines_with_the_discriminator(gateway):
    client, _ = gateway
    response = await client.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [(e["event"], e["id"], e["data"]["type"]) for e in events] == [
        ("response.created", "0", "response.created"), ("response.in_progress", "1", "response.in_progress"),
        ("response.output_text.delta", "2", "response.output_text.delta"),
        ("response.completed", "3", "response.completed")]
    assert response.text.count(": keep-alive\n") == 4
    assert "response.heartbeat" not in response.text


@pytest.mark.parametrize("path, body, streams", [
    (TURN.format("sess_heartbeat"), {"messages": MESSAGES, "stream": True}, True),
    (TURN.format("sess_heartbeat"), {"messages": MESSAGES, "stream": False}, False),
    (TURN.format("sess_heartbeat"), {"messages": MESSAGES}, False),
    (TURN.format("sess_heartbeat"), {"messages": MESSAGES, "stream": None}, False),
    # The canonical route serves only the stream, whatever the flag says.
    (TURN.format("sess_heartbeat") + ":stream", {"messages": MESSAGES}, True),
    (TURN.format("sess_heartbeat") + ":stream", {"messages": MESSAGES, "stream": False}, True),
    ("/v1/responses", {"model": "m", "input": "hi"}, False),
    ("/v1/responses:stream", {"model": "m", "input": "hi"}, True),
])
async def test_stream_flag_selects_the_streaming_rpc_on_a_shared_route(gateway, path, body, streams):
    client, _ = gateway
    response = await client.post(path, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream" if streams else "application/json")


@pytest.mark.parametrize("path, body, error", [
    (TURN.format("sess_heartbeat"), {"messages": MESSAGES, "stream": "yes"},
     {"detail": "stream: expected a boolean, got a string"}),
    ("/v1/responses", {"model": "m", "input": "hi", "stream": 1},
     {"error": {"message": "stream: expected a boolean, got a number", "type": "invalid_request_error",
                "param": "stream", "code": "invalid_argument"}}),
])
async def test_a_stream_flag_that_is_not_a_boolean_is_400_not_a_json_answer(gateway, path, body, error):
    client, served = gateway
    before = {name: len(service.requests) for name, service in served.items() if hasattr(service, "requests")}
    response = await client.post(path, json=body)
    assert response.status_code == 400
    assert response.json() == error
    after = {name: len(service.requests) for name, service in served.items() if hasattr(service, "requests")}
    assert after == before  # refused before any servicer ran


@pytest.mark.parametrize("query, starting_after", [("?stream=true", None), ("?stream=1", None)])
async def test_stream_flag_on_a_shared_get_route_is_a_query_parameter(gateway, query, starting_after):
    client, served = gateway
    streamed = await client.get("/v1/agents/agent_1/session/sess_1/turn/turn_1" + query)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert len(sse_events(streamed.text)) == 4
    plain = await client.get("/v1/agents/agent_1/session/sess_1/turn/turn_1?stream=false")
    assert plain.json()["turn_id"] == "turn_1"
    requests = served["agentd.v1.AgentsService"].requests
    assert isinstance(requests[-2], pb.StreamTurnEventsRequest)
    assert isinstance(requests[-1], pb.GetTurnRequest)


async def test_last_event_id_stands_for_starting_after(gateway):
    client, served = gateway
    agents = served["agentd.v1.AgentsService"]
    response = await client.get("/v1alpha/agents/agent_1/session/sess_1/turn/turn_1/events",
                                headers={"Last-Event-ID": "1"})
    assert agents.requests[-1].starting_after == 1
    assert [e["id"] for e in sse_events(response.text)] == ["2", "3"]
    # An explicit query parameter wins over the header.
    response = await client.get("/v1/agents/agent_1/session/sess_1/turn/turn_1?stream=true&starting_after=2",
                                headers={"Last-Event-ID": "0"})
    assert agents.requests[-1].starting_after == 2
    assert [e["id"] for e in sse_events(response.text)] == ["3"]
    # Without either, the stream replays from the start.
    await client.get("/v1/agents/agent_1/session/sess_1/turn/turn_1/events")
    assert not agents.requests[-1].HasField("starting_after")
    bad = await client.get("/v1/agents/agent_1/session/sess_1/turn/turn_1/events",
                           headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]
    # OpenAI's re-attach (responses.retrieve(stream=True)) takes it too.
    responses = served["agentd.v1.ResponsesService"]
    response = await client.get("/v1/responses/resp_1?stream=true", headers={"last-event-id": "2"})
    assert responses.requests[-1].starting_after == 2
    assert [e["data"]["type"] for e in sse_events(response.text)] == ["response.completed"]


async def test_provider_data_is_read_from_its_header(gateway):
    client, served = gateway
    agents = served["agentd.v1.AgentsService"]
    data = {"mcp_headers": {"http://mcp": {"Authorization": "Bearer x"}}}
    for stream in (False, True):
        body = {"messages": MESSAGES, "stream": stream}
        response = await client.post(TURN.format("sess_heartbeat"), json=body,
                                     headers={"X-LlamaStack-Provider-Data": json.dumps(data)})
        assert response.status_code == 200
        request = agents.requests[-1]
        assert isinstance(request, pb.StreamTurnRequest if stream else pb.CreateTurnRequest)
        assert request.provider_data.mcp_headers["http://mcp"]["Authorization"] == "Bearer x"
    await client.post(TURN.format("sess_heartbeat"), json={"messages": MESSAGES})
    assert not agents.requests[-1].HasField("provider_data")


@pytest.mark.parametrize("value, needle", [
    ("{not json", "x-llamastack-provider-data: header is not valid JSON"),
    ('{"mcp_headers": []}', "x-llamastack-provider-data.mcp_headers: expected an object"),
])
async def test_bad_provider_data_header_is_400_naming_it(gateway, value, needle):
    client, served = gateway
    response = await client.post(TURN.format("sess_heartbeat"), json={"messages": MESSAGES},
                                 headers={"x-llamastack-provider-data": value})
    assert response.status_code == 400
    assert needle in response.json()["detail"]
    assert served["agentd.v1.AgentsService"].requests == []


async def test_http_body_is_answered_raw_with_its_content_type(gateway):
    client, _ = gateway
    for prefix in ("/v1", "/v1/openai/v1"):
        response = await client.get(f"{prefix}/files/file_1/content")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert response.content == b"a,b\n1,\xff\n"
    missing = await client.get("/v1/files/file_missing/content")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"


async def test_multipart_upload_fills_fields_nested_fields_and_the_file(gateway):
    client, served = gateway
    response = await client.post("/v1/files", files={"file": ("notes.txt", b"hello\x00world", "text/plain")},
                                 data={"purpose": "assistants", "expires_after[anchor]": "created_at",
                                       "expires_after[seconds]": "3600", "unknown": "ignored"})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "file_1" and response.json()["filename"] == "notes.txt"
    request = served["agentd.v1.FilesService"].requests[-1]
    assert (request.file.filename, request.file.content_type, request.file.data) == (
        "notes.txt", "text/plain", b"hello\x00world")
    assert request.purpose == "assistants"
    assert (request.expires_after.anchor, request.expires_after.seconds) == ("created_at", 3600)
    # No content type on the part: octet-stream.
    await client.post("/v1/openai/v1/files", files={"file": ("b.bin", b"\x01")},
                      data={"purpose": "user_data"})
    assert served["agentd.v1.FilesService"].requests[-1].file.content_type == "application/octet-stream"


@pytest.mark.parametrize("files, data, param", [
    ({"file": ("a.txt", b"x")}, {"purpose": "assistants", "expires_after[seconds]": "soon"},
     "expires_after[seconds]"),
    (None, {"file": "not a file", "purpose": "assistants"}, "file"),
    ({"purpose": ("p.txt", b"x")}, {}, "purpose"),
])
async def test_bad_multipart_parts_are_400_naming_the_part(gateway, files, data, param):
    client, served = gateway
    if files is None:  # force multipart without a file part
        files = {"dummy": (None, b"")}
    response = await client.post("/v1/files", files=files, data=data)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert served["agentd.v1.FilesService"].requests == []


async def test_multipart_over_the_body_limit_is_413(gateway):
    client, served = gateway
    response = await client.post("/v1/files", files={"file": ("big.bin", b"x" * (MAX_BODY + 1))},
                                 data={"purpose": "assistants"})
    assert response.status_code == 413
    assert str(MAX_BODY) in response.json()["error"]["message"]
    assert served["agentd.v1.FilesService"].requests == []
