"""The legacy REST routes, through the real gateway in front of the real gRPC server."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from agentd.app import Agentd
from tests.conftest import make_settings

AGENT_CONFIG = {"model": "test-model", "instructions": "Be brief.",
                "toolgroups": ["builtin::rag", {"name": "mcp::docs", "args": {"k": 3}}],
                "client_tools": [{"name": "get_weather", "description": "Weather",
                                  "input_schema": {"type": "object",
                                                   "properties": {"city": {"type": "string"}}}}],
                "sampling_params": {"strategy": {"type": "top_p", "temperature": 0.5, "top_p": 0.9},
                                    "max_tokens": 256}}


@pytest.mark.parametrize("prefix", ["/v1alpha", "/v1"])
async def test_agent_crud_in_the_llama_stack_shape(http, prefix):
    created = await http.post(f"{prefix}/agents", json={"agent_config": AGENT_CONFIG})
    assert created.status_code == 200
    assert list(created.json()) == ["agent_id"]
    agent_id = created.json()["agent_id"]

    got = await http.get(f"{prefix}/agents/{agent_id}")
    assert got.status_code == 200
    agent = got.json()
    assert agent["agent_id"] == agent_id and agent["created_at"].endswith("Z")
    cfg = agent["agent_config"]
    assert json.dumps(cfg["toolgroups"]) == json.dumps(AGENT_CONFIG["toolgroups"])  # 3 stays 3, not 3.0
    assert cfg["client_tools"][0]["input_schema"] == AGENT_CONFIG["client_tools"][0]["input_schema"]
    assert cfg["sampling_params"]["strategy"] == {"type": "top_p", "temperature": 0.5, "top_p": 0.9}
    assert cfg["sampling_params"]["max_tokens"] == 256
    assert cfg["tool_config"] == {"tool_choice": "auto", "tool_prompt_format": None,
                                  "system_message_behavior": "append"}
    assert cfg["max_infer_iters"] == 10

    deleted = await http.delete(f"{prefix}/agents/{agent_id}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    gone = await http.get(f"{prefix}/agents/{agent_id}")
    assert gone.status_code == 404
    assert gone.json() == {"detail": f"Agent '{agent_id}' not found."}


async def test_client_tools_with_python_type_names_get_json_schema_types(http):
    """llama-stack-client 0.2's @client_tool names types by Python annotation: str, int..."""
    kinds = ["str", "int", "float", "bool", "list", "dict", "integer", "Forecast"]
    parameters = [{"name": f"p_{kind}", "parameter_type": kind, "description": kind, "required": True,
                   "default": None} for kind in kinds]
    parameters.append({"name": "unit", "parameter_type": "str", "description": "unit", "required": False,
                       "default": "c"})
    config = {**AGENT_CONFIG, "client_tools": [{"name": "weather", "parameters": parameters}]}
    agent_id = (await http.post("/v1/agents", json={"agent_config": config})).json()["agent_id"]
    [tool] = (await http.get(f"/v1/agents/{agent_id}")).json()["agent_config"]["client_tools"]
    schema = tool["input_schema"]
    assert {name: prop.get("type") for name, prop in schema["properties"].items()} == {
        "p_str": "string", "p_int": "integer", "p_float": "number", "p_bool": "boolean",
        "p_list": "array", "p_dict": "object", "p_integer": "integer", "p_Forecast": None, "unit": "string"}
    assert schema["properties"]["unit"]["default"] == "c"
    assert "default" not in schema["properties"]["p_str"]  # the SDK's None for "no default"
    assert schema["required"] == [f"p_{kind}" for kind in kinds]


async def test_list_agents_with_start_index_and_limit(http):
    ids = [(await http.post("/v1alpha/agents", json={"agent_config": AGENT_CONFIG})).json()["agent_id"]
           for _ in range(5)]
    page = (await http.get("/v1alpha/agents", params={"start_index": 1, "limit": 3})).json()
    assert [a["agent_id"] for a in page["data"]] == ids[1:4]
    assert page["has_more"] is True
    assert "next_page_token" not in page  # gRPC only
    last = (await http.get("/v1alpha/agents", params={"start_index": 3, "limit": 5})).json()
    assert [a["agent_id"] for a in last["data"]] == ids[3:] and last["has_more"] is False
    everything = (await http.get("/v1alpha/agents")).json()
    assert [a["agent_id"] for a in everything["data"]] == ids


async def test_session_routes(http):
    agent_id = (await http.post("/v1alpha/agents", json={"agent_config": AGENT_CONFIG})).json()["agent_id"]
    base = f"/v1alpha/agents/{agent_id}"
    made = await http.post(f"{base}/session", json={"session_name": "first"})
    assert made.status_code == 200 and list(made.json()) == ["session_id"]
    session_id = made.json()["session_id"]
    session = (await http.get(f"{base}/session/{session_id}")).json()
    assert session["session_id"] == session_id and session["session_name"] == "first"
    assert session["turns"] == [] and session["started_at"].endswith("Z")
    listed = (await http.get(f"{base}/sessions")).json()
    assert [s["session_id"] for s in listed["data"]] == [session_id]
    assert (await http.delete(f"{base}/session/{session_id}")).status_code == 204
    missing = await http.get(f"{base}/session/{session_id}")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]


@pytest.mark.parametrize("body, status, needle", [
    ({"agent_config": {"instructions": "x"}}, 400, "agent_config.model"),
    ({"agent_config": {"model": 5, "instructions": "x"}}, 400, "agent_config.model: expected a string"),
    ({"agent_config": {"model": "m", "instructions": "x", "tool_choice": "required",
                       "tool_config": {"tool_choice": "auto"}}}, 400, "tool_choice is deprecated"),
    ({"agent_config": {"model": "m", "instructions": "x",
                       "sampling_params": {"strategy": {"type": "nucleus"}}}}, 400,
                       "unknown value 'nucleus'"),
    ({}, 400, "agent_config: required"),
])
async def test_bad_agent_config_is_400_with_detail(http, body, status, needle):
    response = await http.post("/v1alpha/agents", json=body)
    assert response.status_code == status
    assert needle in response.json()["detail"]


async def test_required_fields_are_checked_for_rest_callers_too(http):
    """The field_behavior validator runs in the shared call pipeline, so REST gets it."""
    agent_id = (await http.post("/v1alpha/agents", json={"agent_config": AGENT_CONFIG})).json()["agent_id"]
    response = await http.post(f"/v1alpha/agents/{agent_id}/session", json={})
    assert response.status_code == 400 and response.json()["detail"] == "session_name: required"
    turn = await http.post(f"/v1alpha/agents/{agent_id}/session/sess_x/turn", json={"stream": False})
    assert turn.status_code == 400 and turn.json()["detail"] == "messages: required"


@pytest.mark.parametrize("body", [b"{not json", b"[" * 100_000 + b"]" * 100_000,
                                  b'{"agent_config": {"model": "m", "instructions": "", '
                                  b'"max_infer_iters": NaN}}',
                                  b'{"agent_config": {"model": "m", "instructions": "", "name": Infinity}}',
                                  b'{"agent_config": {"model": "m", "instructions": "", "sampling_params": '
                                  b'{"strategy": {"type": "top_p", "temperature": 1e309}}}}',
                                  b'{"agent_config": {"model": "m", "instructions": "", '
                                  b'"toolgroups": [{"name": "g", "args": {"k": -1e400}}]}}'])
async def test_invalid_json_body_is_400(http, body):
    response = await http.post("/v1alpha/agents", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]
    assert (await http.get("/v1alpha/agents")).json()["data"] == []


async def test_wrong_method_is_405_with_allow_and_unknown_route_404(http):
    response = await http.put("/v1alpha/agents")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert (await http.get("/v1alpha/nothing-here")).status_code == 404


async def test_bad_legacy_cursor_is_400(http):
    response = await http.get("/v1alpha/agents", params={"start_index": "x"})
    assert response.status_code == 400 and "start_index" in response.json()["detail"]
    response = await http.get("/v1alpha/agents", params={"limit": "-3"})
    # The error names the parameter the client sent, not the gRPC field behind it.
    assert response.status_code == 400 and response.json()["detail"] == "limit: must be >= 0"


@pytest.mark.parametrize("key", [[True, "x"], [10**30, "x"], [-(2**63) - 1, "x"], [1, "x\u0000"]])
async def test_a_forged_page_token_is_400(http, key):
    token = base64.urlsafe_b64encode(json.dumps({"key": key}).encode()).decode()
    for path in ("/v1alpha/agents", "/v1/responses"):
        response = await http.get(path, params={"page_token": token})
        assert response.status_code == 400, (path, response.text)
    assert (await http.get("/v1alpha/agents", params={"page_token": token})).json() == {
        "detail": "page_token: not a page token returned by this service"}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_turn_that_fails_before_its_first_event_gets_the_real_status(http, stream):
    agent_id = (await http.post("/v1alpha/agents", json={"agent_config": AGENT_CONFIG})).json()["agent_id"]
    response = await http.post(f"/v1alpha/agents/{agent_id}/session/sess_nope/turn",
                               json={"messages": [{"role": "user", "content": "hi"}], "stream": stream})
    # A streaming call that fails before its first event gets the real status, not a 200.
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"] == "Session 'sess_nope' not found."


async def test_models_in_both_sdk_shapes(http):
    for path in ("/v1/models", "/v1/openai/v1/models"):
        body = (await http.get(path)).json()
        assert body["object"] == "list"
        first = body["data"][0]
        assert first["identifier"] == first["id"] == "test-model"
        assert first["object"] == "model" and first["type"] == "model"
        assert first["model_type"] == "llm" and first["owned_by"] == "fake"
        assert isinstance(first["created"], int)
    embed = await http.get("/v1/models/org/test-embed")  # ids may contain "/"
    assert embed.status_code == 200
    assert embed.text.count('"embedding_dimension":384') == 1
    missing = await http.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert missing.json()["error"]["type"] == "invalid_request_error"


async def test_request_id_is_forwarded_and_echoed(http):
    given = await http.get("/v1alpha/agents", headers={"x-request-id": "req-123"})
    assert given.headers["x-request-id"] == "req-123"
    generated = await http.get("/v1alpha/agents")
    assert len(generated.headers["x-request-id"]) == 16


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/responses/resp_1"),
    ("GET", "/v1/responses/resp_1?stream=true&starting_after=3"),
    ("GET", "/v1/openai/v1/responses/resp_1/input_items?limit=2&order=asc"),
    ("POST", "/v1/responses/resp_1/cancel"),
    ("DELETE", "/v1/responses/resp_1"),
])
async def test_an_unknown_response_is_404_in_the_openai_shape(http, method, path):
    response = await http.request(method, path)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "response_not_found"


async def test_openai_routes_reject_bad_input_before_calling(http):
    response = await http.post("/v1/responses", json={"model": "m", "input": 42})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input"
    response = await http.get("/v1/responses/resp_1/input_items", params={"order": "sideways"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "order"
    # Every OpenAI list takes 1..100 and refuses more (it does not cap).
    for path in ("/v1/responses/resp_1/input_items", "/v1/responses"):
        response = await http.get(path, params={"limit": 101})
        assert response.status_code == 400 and response.json()["error"]["param"] == "limit", response.text


async def test_body_over_the_message_limit_is_413(database_url, tmp_path):
    server = Agentd(make_settings(database_url, tmp_path, max_message_bytes=4096))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as client:
            config = {"agent_config": {"model": "test-model", "instructions": "x" * 5000}}
            too_big = await client.post("/v1alpha/agents", json=config)
            assert too_big.status_code == 413 and "4096" in too_big.json()["detail"]
            async def chunks():
                yield b"{" + b" " * 5000 + b"}"
            chunked = await client.post("/v1alpha/agents", content=chunks())
            assert chunked.status_code == 413  # no content-length: counted while reading
            small = {"agent_config": {"model": "m", "instructions": "x"}}
            ok = await client.post("/v1alpha/agents", json=small)
            assert ok.status_code == 200
            listed = (await client.get("/v1alpha/agents")).json()["data"]
            assert [a["agent_config"]["instructions"] for a in listed] == ["x"]
    finally:
        await server.stop(0)


async def test_openai_style_errors_name_the_query_parameter_sent(http):
    # The gateway reads `after` into page_token before the call.
    response = await http.get("/v1/conversations/conv_1/items", params={"after": ""})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "after"
    # The servicer's error about page_size names the `limit` the client sent.
    response = await http.get("/v1/conversations/conv_1/items", params={"limit": "101"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "limit" and error["message"].startswith("limit: ")
