"""Shields and tool groups (what configuration declares) over gRPC and REST, and the
contract's services that are not built yet (vector stores, files) answering UNIMPLEMENTED."""

from __future__ import annotations

import grpc
import httpx
import pytest
import pytest_asyncio

from agentd.app import Agentd
from agentd.v1 import (
    files_pb2,
    files_pb2_grpc,
    shields_pb2,
    shields_pb2_grpc,
    tool_groups_pb2_grpc,
    vector_stores_pb2,
    vector_stores_pb2_grpc,
)
from agentd.v1 import tool_groups_pb2 as tg
from tests.conftest import error_of, make_settings

SEARCH_SCHEMA = {"type": "object", "required": ["query"], "properties": {
    "query": {"type": "string", "description": "What to look for"},
    "limit": {"type": ["integer", "null"], "description": "How many", "default": 5}}}
SHIELDS = [{"id": "llama-guard", "provider_id": "llama-guard",
            "provider_shield_id": "meta-llama/Llama-Guard-3-1B", "params": {"threshold": 0.5}},
           {"id": "code-scanner", "provider_id": "code-scanner"}]
TOOLGROUPS = [
    {"id": "builtin::websearch", "provider_id": "tavily-search",
     "tools": [{"name": "web_search", "description": "Search the web", "input_schema": SEARCH_SCHEMA}]},
    {"id": "mcp::files", "provider_id": "model-context-protocol", "mcp_endpoint": "http://127.0.0.1:9/sse",
     "args": {"root": "/srv"}, "tools": [{"name": "read_file", "metadata": {"origin": "mcp"}}]},
]


async def _serve(tmp_path, **settings):
    server = Agentd(make_settings(f"sqlite:///{tmp_path / 'agentd.db'}", tmp_path, **settings))
    await server.start()
    return server


@pytest_asyncio.fixture
async def server(tmp_path):
    # builtin::websearch is listed only while web search has a key (nothing is searched here).
    server = await _serve(tmp_path, shields=SHIELDS, toolgroups=TOOLGROUPS,
                          websearch={"api_key": "sk-unused", "base_url": "http://127.0.0.1:9"})
    yield server
    await server.stop(0)


@pytest_asyncio.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


@pytest_asyncio.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as client:
        yield client




# ------------------------------------------------------------------ shields

async def test_shields_are_listed_in_configuration_order_over_grpc(channel):
    shields = shields_pb2_grpc.ShieldsServiceStub(channel)
    listed = (await shields.ListShields(shields_pb2.ListShieldsRequest())).data
    assert [(s.identifier, s.provider_id, s.provider_resource_id) for s in listed] == [
        ("llama-guard", "llama-guard", "meta-llama/Llama-Guard-3-1B"),
        ("code-scanner", "code-scanner", "code-scanner")]
    got = await shields.GetShield(shields_pb2.GetShieldRequest(identifier="llama-guard"))
    assert got.shield == listed[0] and dict(got.shield.params) == {"threshold": 0.5}


async def test_an_unknown_shield_is_not_found(channel):
    shields = shields_pb2_grpc.ShieldsServiceStub(channel)
    code, reason, _ = await error_of(shields.GetShield(shields_pb2.GetShieldRequest(identifier="nope")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SHIELD_NOT_FOUND")
    code, _, fields = await error_of(shields.GetShield(shields_pb2.GetShieldRequest()))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["identifier"])


async def test_shields_over_rest(http):
    listed = (await http.get("/v1/shields")).json()["data"]
    assert listed[0] == {"identifier": "llama-guard", "provider_id": "llama-guard",
                         "provider_resource_id": "meta-llama/Llama-Guard-3-1B",
                         "params": {"threshold": 0.5}, "type": "shield"}
    assert (await http.get("/v1/shields/code-scanner")).json()["identifier"] == "code-scanner"
    missing = await http.get("/v1/shields/nope")
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]


# -------------------------------------------------------------- tool groups

async def test_toolgroups_and_tools_over_grpc(channel):
    stub = tool_groups_pb2_grpc.ToolGroupsServiceStub(channel)
    groups = (await stub.ListToolGroups(tg.ListToolGroupsRequest())).data
    assert [g.identifier for g in groups] == ["builtin::websearch", "mcp::files"]
    assert not groups[0].HasField("mcp_endpoint")
    mcp = (await stub.GetToolGroup(tg.GetToolGroupRequest(toolgroup_id="mcp::files"))).toolgroup
    assert (mcp.mcp_endpoint.uri, dict(mcp.args)) == ("http://127.0.0.1:9/sse", {"root": "/srv"})
    every = (await stub.ListTools(tg.ListToolsRequest())).data
    assert [(t.name, t.toolgroup_id) for t in every] == [
        ("web_search", "builtin::websearch"), ("read_file", "mcp::files")]
    [search] = (await stub.ListTools(tg.ListToolsRequest(toolgroup_id="builtin::websearch"))).data
    assert (search.identifier, search.name, search.provider_id) == (
        "web_search", "web_search", "tavily-search")
    got = (await stub.GetTool(tg.GetToolRequest(tool_name="read_file"))).tool
    assert got == every[1] and dict(got.metadata) == {"origin": "mcp"}


@pytest.mark.parametrize("call, reason", [
    (lambda s: s.GetToolGroup(tg.GetToolGroupRequest(toolgroup_id="nope")), "TOOLGROUP_NOT_FOUND"),
    (lambda s: s.ListTools(tg.ListToolsRequest(toolgroup_id="nope")), "TOOLGROUP_NOT_FOUND"),
    (lambda s: s.GetTool(tg.GetToolRequest(tool_name="nope")), "TOOL_NOT_FOUND"),
])
async def test_unknown_toolgroups_and_tools_are_not_found(channel, call, reason):
    stub = tool_groups_pb2_grpc.ToolGroupsServiceStub(channel)
    code, got, _ = await error_of(call(stub))
    assert (code, got) == (grpc.StatusCode.NOT_FOUND, reason)


async def test_a_tool_reads_as_both_sdk_generations_over_rest(http):
    """0.2 reads identifier + parameters, 0.3 reads name + input_schema: both are there."""
    [tool] = (await http.get("/v1/tools", params={"toolgroup_id": "builtin::websearch"})).json()["data"]
    assert tool["identifier"] == tool["name"] == "web_search"
    assert tool["input_schema"] == SEARCH_SCHEMA
    assert tool["parameters"] == [
        {"name": "query", "parameter_type": "string", "description": "What to look for", "required": True,
         "default": None},
        {"name": "limit", "parameter_type": "integer", "description": "How many", "required": False,
         "default": 5}]
    assert (await http.get("/v1/tools/web_search")).json()["toolgroup_id"] == "builtin::websearch"
    groups = (await http.get("/v1/toolgroups")).json()["data"]
    assert [g["identifier"] for g in groups] == ["builtin::websearch", "mcp::files"]
    assert (await http.get("/v1/toolgroups/mcp::files")).json()["mcp_endpoint"] == {"uri": "http://127.0.0.1:9/sse"}


@pytest.mark.parametrize("path", ["/v1/toolgroups/nope", "/v1/tools?toolgroup_id=nope", "/v1/tools/nope"])
async def test_unknown_toolgroups_and_tools_are_404_over_rest(http, path):
    response = await http.get(path)
    assert response.status_code == 404 and "not found" in response.json()["detail"]


async def test_an_empty_configuration_lists_none(tmp_path):
    server = await _serve(tmp_path)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
            for path in ("/v1/shields", "/v1/toolgroups", "/v1/tools"):
                response = await http.get(path)
                assert (response.status_code, response.json()) == (200, {"data": []}), path
    finally:
        await server.stop(0)


# ------------------------------------------------- in the contract, not built yet

async def test_vector_stores_and_files_are_not_available_yet_over_grpc(channel):
    vector_stores = vector_stores_pb2_grpc.VectorStoresServiceStub(channel)
    listed = vector_stores.ListVectorStores(vector_stores_pb2.ListVectorStoresRequest())
    code, reason, _ = await error_of(listed)
    assert (code, reason) == (grpc.StatusCode.UNIMPLEMENTED, "NOT_AVAILABLE_YET")
    files = files_pb2_grpc.FilesServiceStub(channel)
    code, reason, _ = await error_of(files.ListFiles(files_pb2.ListFilesRequest()))
    assert (code, reason) == (grpc.StatusCode.UNIMPLEMENTED, "NOT_AVAILABLE_YET")


@pytest.mark.parametrize("path", ["/v1/vector_stores", "/v1/openai/v1/vector_stores", "/v1/files"])
async def test_vector_stores_and_files_are_501_over_rest(http, path):
    response = await http.get(path)
    assert response.status_code == 501, response.text
