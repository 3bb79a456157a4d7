"""Answers the gateway gives on its own, before any servicer runs (no route, wrong verb, body
too large, invalid JSON): like every call they carry the request id and log one access
line, and their error style comes from the route table, not from the path's text."""

from __future__ import annotations

import logging

import httpx
import pytest

from agentd.app import SERVICES, Agentd
from agentd.gateway.app import Gateway
from agentd.gateway.routes import routes_of
from agentd.v1 import agents_pb2_grpc, conversations_pb2_grpc, models_pb2_grpc, responses_pb2_grpc
from agentd.v1.options_pb2 import ERROR_STYLE_LLAMA_STACK, ERROR_STYLE_OPENAI
from tests.conftest import make_settings


def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agentd.rpc"]


@pytest.mark.parametrize("method, path, content, status, logged", [
    ("GET", "/v1alpha/nothing-here", None, 404, "rpc GET /v1alpha/nothing-here NOT_FOUND "),
    ("PUT", "/v1alpha/agents", None, 405, "rpc PUT /v1alpha/agents UNIMPLEMENTED "),
    ("POST", "/v1alpha/agents", b"{not json", 400,
     "rpc /agentd.v1.AgentsService/CreateAgent INVALID_ARGUMENT "),
    ("POST", "/v1alpha/agents", b'{"agent_config": 3}', 400,
     "rpc /agentd.v1.AgentsService/CreateAgent INVALID_ARGUMENT "),
])
async def test_own_answers_carry_the_request_id_and_log_a_line(http, caplog, method, path, content, status,
                                                               logged):
    caplog.set_level(logging.INFO, "agentd.rpc")
    response = await http.request(method, path, content=content, headers={"x-request-id": "own-1"})
    assert response.status_code == status
    assert response.headers["x-request-id"] == "own-1"
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()  # these paths belong to the Agents API
    lines = _access_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith(logged), lines


async def test_own_answers_get_a_fresh_request_id_when_none_is_sent(http):
    response = await http.get("/nowhere")
    assert len(response.headers["x-request-id"]) == 16


async def test_body_too_large_carries_the_request_id_and_logs_a_line(database_url, tmp_path, caplog):
    caplog.set_level(logging.INFO, "agentd.rpc")
    server = Agentd(make_settings(database_url, tmp_path, max_message_bytes=1024))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as client:
            response = await client.post("/v1/conversations", content=b"{" + b" " * 2000 + b"}",
                                         headers={"x-request-id": "big-1"})
    finally:
        await server.stop(0)
    assert response.status_code == 413
    assert response.headers["x-request-id"] == "big-1"
    assert response.json()["error"]["code"] == "request_too_large"  # an OpenAI route: its style
    lines = _access_lines(caplog)
    assert len(lines) == 1
    assert lines[0].startswith("rpc /agentd.v1.ConversationsService/CreateConversation RESOURCE_EXHAUSTED ")


@pytest.mark.parametrize("method, path, openai", [
    ("GET", "/v1alpha/nothing-here", False),  # shares /v1alpha with the Agents routes only
    ("GET", "/v1/agents/agent_1/nothing", False),  # /v1/agents: Agents
    ("GET", "/v1/conversations/conv_1/nothing", True),  # /v1/conversations: OpenAI
    ("GET", "/v1/openai/v1/nothing", True),
    ("GET", "/v1/nothing", True),  # as much shared with both: the OpenAI style
    ("GET", "/nothing/agents", True),  # "/agents" in the text is not a route prefix
    ("GET", "/", True),
    ("PUT", "/v1/agents", False),  # 405: the style of the route that has the path
    ("PUT", "/v1/responses", True),
])
async def test_style_of_unmatched_paths_comes_from_the_route_table(http, method, path, openai):
    response = await http.request(method, path)
    assert response.status_code in (404, 405)
    body = response.json()
    if openai:
        assert set(body["error"]) == {"message", "type", "param", "code"}
        expected = "route_not_found" if response.status_code == 404 else "method_not_allowed"
        assert body["error"]["code"] == expected
    else:
        assert set(body) == {"detail"}


def test_style_for_path_uses_the_longest_shared_literal_prefix():
    servicers = {"agentd.v1.AgentsService": agents_pb2_grpc.AgentsServiceServicer(),
                 "agentd.v1.ResponsesService": responses_pb2_grpc.ResponsesServiceServicer(),
                 "agentd.v1.ConversationsService": conversations_pb2_grpc.ConversationsServiceServicer(),
                 "agentd.v1.ModelsService": models_pb2_grpc.ModelsServiceServicer()}
    gateway = Gateway(routes_of(SERVICES), servicers, 1024)
    assert gateway.style_for_path("/v1alpha/x/y") == ERROR_STYLE_LLAMA_STACK
    assert gateway.style_for_path("/v1/agents") == ERROR_STYLE_LLAMA_STACK
    assert gateway.style_for_path("/v1/models/x/y") == ERROR_STYLE_OPENAI
    assert gateway.style_for_path("/v2/agents") == ERROR_STYLE_OPENAI
    assert gateway.style_for_path("") == ERROR_STYLE_OPENAI
