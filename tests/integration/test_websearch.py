"""builtin::websearch against a local fake of the Tavily and Brave HTTP APIs (never the
internet), and how ToolGroupsService lists it with and without an API key."""

from __future__ import annotations

import json
import logging
import socket
import time

import grpc
import httpx
import pytest
import pytest_asyncio

from agentd.app import Agentd
from agentd.config import Settings, load_settings
from agentd.tools.runtime import ConfiguredToolRuntime
from agentd.v1 import tool_groups_pb2 as tg
from agentd.v1 import tool_groups_pb2_grpc
from tests.conftest import error_of, make_settings
from tests.fakes.search_server import FakeSearchServer, Hit, SearchReply, fake_search  # noqa: F401

HITS = [Hit("Agentd", "https://a.example/", "agentd runs agents", 0.9),
        Hit("gRPC", "https://b.example/", "a <strong>fast</strong> RPC &amp; more", 0.8),
        Hit("Third", "https://c.example/", "third", 0.1)]


@pytest_asyncio.fixture
async def search_tool(request, fake_search):  # noqa: F811
    """The resolved web_search tool of a runtime pointed at the fake; parametrize `websearch`."""
    overrides = getattr(request, "param", {})
    settings = Settings.model_validate({"websearch": {
        "api_key": "sk-search", "base_url": fake_search.base_url, "timeout_s": 2, **overrides}})
    runtime = ConfiguredToolRuntime(settings)
    [resolved] = runtime.resolve([("builtin::websearch", {})])
    yield resolved
    await runtime.aclose()


def provider(name, **more):
    return pytest.mark.parametrize("search_tool", [{"provider": name, **more}], indirect=True)


# ------------------------------------------------------------------ requests and results

@provider("tavily", max_results=2)
async def test_tavily_request_shape_and_formatted_results(search_tool, fake_search):  # noqa: F811
    fake_search.script(SearchReply(results=HITS))
    result = await search_tool.invoke({"query": "what is agentd"}, session_id="sess_1")
    [request] = fake_search.requests
    assert (request.method, request.path) == ("POST", "/search")
    assert request.headers["authorization"] == "Bearer sk-search"
    assert request.body == {"query": "what is agentd", "max_results": 2}
    assert result.error_message is None
    assert result.metadata == {"query": "what is agentd", "provider": "tavily"}
    # Compact JSON of the top results (no more than max_results, whatever the API sends).
    assert result.content == json.dumps([
        {"title": "Agentd", "url": "https://a.example/", "content": "agentd runs agents"},
        {"title": "gRPC", "url": "https://b.example/", "content": "a fast RPC & more"}],
        separators=(",", ":"))


@provider("brave", max_results=3)
async def test_brave_request_shape_and_formatted_results(search_tool, fake_search):  # noqa: F811
    fake_search.script(SearchReply(results=HITS))
    result = await search_tool.invoke({"query": "grpc é"}, session_id="sess_1")
    [request] = fake_search.requests
    assert (request.method, request.path, request.body) == ("GET", "/res/v1/web/search", None)
    assert request.query == {"q": ["grpc é"], "count": ["3"]}
    assert request.headers["x-subscription-token"] == "sk-search" and "authorization" not in request.headers
    assert result.metadata == {"query": "grpc é", "provider": "brave"}
    assert [r["content"] for r in json.loads(result.content)] == [
        "agentd runs agents", "a fast RPC & more", "third"]


async def test_group_args_override_the_models_and_may_lower_max_results(fake_search):  # noqa: F811
    settings = Settings.model_validate({
        "websearch": {"api_key": "k", "base_url": fake_search.base_url},
        "toolgroups": [{"id": "builtin::websearch", "provider_id": "tavily-search",
                        "args": {"max_results": 1}}]})
    runtime = ConfiguredToolRuntime(settings)
    [resolved] = runtime.resolve([("builtin::websearch", {"query": "forced"})])
    fake_search.script(SearchReply(results=HITS))
    result = await resolved.invoke({"query": "the model's", "max_results": 9}, session_id="s")
    assert fake_search.requests[0].body == {"query": "forced", "max_results": 1}
    assert len(json.loads(result.content)) == 1
    await runtime.aclose()


async def test_no_results_is_an_empty_list(search_tool, fake_search):  # noqa: F811
    fake_search.script(SearchReply(results=[]))
    result = await search_tool.invoke({"query": "nothing"}, session_id="s")
    assert (result.content, result.error_message) == ("[]", None)


@pytest.mark.parametrize("arguments", [{}, {"query": ""}, {"query": 5}])
async def test_a_missing_query_is_a_failed_result_without_a_request(search_tool, fake_search, arguments):  # noqa: F811
    result = await search_tool.invoke(arguments, session_id="s")
    assert "query" in result.error_message and fake_search.requests == []


# ------------------------------------------------------------------ upstream failures

@pytest.mark.parametrize("search_tool", [{"provider": "tavily"}, {"provider": "brave"}], indirect=True)
@pytest.mark.parametrize("reply, needle", [
    (SearchReply(status=500), "HTTP 500"),
    (SearchReply(status=503), "HTTP 503"),
    (SearchReply(status=429), "HTTP 429"),
    (SearchReply(body=b"<html>oops</html>"), "not the expected JSON"),
    (SearchReply(body=b'{"unexpected": 1}'), "not the expected JSON"),
    (SearchReply(body=b"[1, 2]"), "not the expected JSON"),
    (SearchReply(drop=True), "unreachable"),
])
async def test_upstream_failures_are_failed_results(search_tool, fake_search, reply, needle, caplog):  # noqa: F811
    if reply.body == b'{"unexpected": 1}' and search_tool.tool._config.provider == "brave":
        reply = SearchReply(body=b'{"web": {"results": 3}}')
    fake_search.script(reply)
    result = await search_tool.invoke({"query": "q"}, session_id="s")
    assert needle in result.error_message
    assert result.content.startswith("Web search failed: ") and needle in result.content
    assert result.metadata["query"] == "q"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_key_is_a_failed_result_and_a_warning(search_tool, fake_search, status, caplog):  # noqa: F811
    fake_search.script(SearchReply(status=status))
    with caplog.at_level(logging.WARNING, logger="agentd.tools.websearch"):
        result = await search_tool.invoke({"query": "q"}, session_id="s")
    assert f"rejected agentd's API key (HTTP {status})" in result.error_message
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "API key" in warning.getMessage() and "sk-search" not in warning.getMessage()


async def test_a_refused_connection_is_a_failed_result():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    settings = Settings.model_validate({"websearch": {"api_key": "k", "base_url": f"http://127.0.0.1:{port}"}})
    runtime = ConfiguredToolRuntime(settings)
    [resolved] = runtime.resolve([("builtin::websearch", {})])
    result = await resolved.invoke({"query": "q"}, session_id="s")
    assert "unreachable" in result.error_message
    await runtime.aclose()


@pytest.mark.parametrize("search_tool", [{"timeout_s": 0.3}], indirect=True)
async def test_the_timeout_is_honoured(search_tool, fake_search):  # noqa: F811
    fake_search.script(SearchReply(results=HITS, delay=5))
    started = time.monotonic()
    result = await search_tool.invoke({"query": "slow"}, session_id="s")
    assert time.monotonic() - started < 2
    assert result.error_message == "the search provider did not answer within 0.3s"


async def test_the_http_client_factory_is_used_once_and_closed(fake_search):  # noqa: F811
    made: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        made.append(httpx.AsyncClient(headers={"x-made-by": "factory"}))
        return made[-1]

    settings = Settings.model_validate({"websearch": {"api_key": "k", "base_url": fake_search.base_url}})
    runtime = ConfiguredToolRuntime(settings, http_client_factory=factory)
    [resolved] = runtime.resolve([("builtin::websearch", {})])
    await resolved.invoke({"query": "one"}, session_id="s")
    await resolved.invoke({"query": "two"}, session_id="s")
    assert len(made) == 1 and [r.headers["x-made-by"] for r in fake_search.requests] == ["factory"] * 2
    await runtime.aclose()
    assert made[0].is_closed


async def test_configured_from_the_environment(fake_search):  # noqa: F811
    settings = load_settings(environ={"AGENTD_WEBSEARCH_API_KEY": "env-key",
                                      "AGENTD_WEBSEARCH_PROVIDER": "brave",
                                      "AGENTD_WEBSEARCH_BASE_URL": fake_search.base_url + "/"})
    runtime = ConfiguredToolRuntime(settings)
    [resolved] = runtime.resolve([("builtin::websearch/web_search", {})])
    result = await resolved.invoke({"query": "env"}, session_id="s")
    [request] = fake_search.requests
    assert (request.path, request.headers["x-subscription-token"]) == ("/res/v1/web/search", "env-key")
    assert json.loads(result.content)[0]["title"] == "About env"
    await runtime.aclose()


# ------------------------------------------------------------------ listed over gRPC

async def _listing(tmp_path, **settings):
    """ListToolGroups, ListTools, and ListTools/GetToolGroup of builtin::websearch (each an
    answer or the error's code and reason) from a real agentd."""
    server = Agentd(make_settings(f"sqlite:///{tmp_path / 'agentd.db'}", tmp_path, **settings))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = tool_groups_pb2_grpc.ToolGroupsServiceStub(channel)
            groups = (await stub.ListToolGroups(tg.ListToolGroupsRequest())).data
            tools = (await stub.ListTools(tg.ListToolsRequest())).data
            lookups = []
            for call in (stub.ListTools(tg.ListToolsRequest(toolgroup_id="builtin::websearch")),
                         stub.GetToolGroup(tg.GetToolGroupRequest(toolgroup_id="builtin::websearch"))):
                try:
                    lookups.append(await call)
                except grpc.aio.AioRpcError:
                    lookups.append((await error_of(call))[:2])
            return groups, tools, lookups
    finally:
        await server.stop(0)


async def test_the_websearch_group_is_listed_with_a_key_even_if_not_configured(tmp_path):
    mcp = {"id": "mcp::files", "provider_id": "model-context-protocol", "tools": [{"name": "read_file"}]}
    groups, tools, (own_tools, group) = await _listing(tmp_path, toolgroups=[mcp],
                                                       websearch={"api_key": "k", "provider": "brave"})
    assert [(g.identifier, g.provider_id) for g in groups] == [
        ("mcp::files", "model-context-protocol"), ("builtin::websearch", "brave-search")]
    assert [(t.name, t.toolgroup_id) for t in tools] == [
        ("read_file", "mcp::files"), ("web_search", "builtin::websearch")]
    search = tools[1]
    assert [(p.name, p.parameter_type, p.required) for p in search.parameters] == [("query", "string", True)]
    assert dict(search.input_schema)["required"] == ["query"]
    assert list(own_tools.data) == [search] and group.toolgroup == groups[1]


async def test_the_websearch_group_is_absent_without_a_key(tmp_path):
    configured = {"id": "builtin::websearch", "provider_id": "tavily-search"}
    groups, tools, lookups = await _listing(tmp_path, toolgroups=[configured])
    assert (list(groups), list(tools)) == ([], [])
    assert lookups == [(grpc.StatusCode.NOT_FOUND, "TOOLGROUP_NOT_FOUND")] * 2
