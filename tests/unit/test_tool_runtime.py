"""ConfiguredToolRuntime.resolve over configured tool groups, and the websearch settings."""

from __future__ import annotations

import pytest

from agentd.config import ConfigError, Settings, load_settings
from agentd.errors import AgentdError, status_of
from agentd.tools.base import ResolvedTool, ToolResult
from agentd.tools.runtime import ConfiguredToolRuntime, toolgroups_of
from agentd.tools.websearch import WebSearchTool

MCP = {"id": "mcp::files", "provider_id": "model-context-protocol", "mcp_endpoint": "http://127.0.0.1:9/sse",
       "args": {"root": "/srv", "depth": 1},
       "tools": [{"name": "read_file"}, {"name": "list_dir"}]}
WEBSEARCH = {"id": "builtin::websearch", "provider_id": "tavily-search", "args": {"max_results": 3},
             "tools": [{"name": "web_search", "description": "Search the web",
                        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]}


def runtime(**settings) -> ConfiguredToolRuntime:
    return ConfiguredToolRuntime(Settings.model_validate(settings))


def error(call) -> tuple[str, str, str]:
    with pytest.raises(AgentdError) as caught:
        call()
    status = status_of(caught.value)
    return caught.value.code.name, caught.value.reason, status.message


def names(resolved: list[ResolvedTool]) -> list[tuple[str, str]]:
    return [(r.tool.toolgroup_id, r.tool.name) for r in resolved]


def test_a_group_resolves_to_all_its_tools_and_a_group_slash_tool_to_one():
    tools = runtime(websearch={"api_key": "k"})
    [search] = tools.resolve([("builtin::websearch", {})])
    assert isinstance(search.tool, WebSearchTool) and search.args == {}
    assert search.tool.name == "web_search" and search.tool.toolgroup_id == "builtin::websearch"
    assert search.tool.parameters == {"type": "object", "required": ["query"], "properties": {
        "query": {"type": "string", "description": "What to search for."}}}
    assert names(tools.resolve([("builtin::websearch/web_search", {})])) == [
        ("builtin::websearch", "web_search")]
    assert tools.resolve([]) == []


def test_a_configured_websearch_group_keeps_its_tool_text_and_args_and_reference_args_win():
    tools = runtime(websearch={"api_key": "k"}, toolgroups=[WEBSEARCH])
    [search] = tools.resolve([("builtin::websearch", {"max_results": 2, "extra": True})])
    assert (search.tool.description, search.tool.parameters) == (
        "Search the web", WEBSEARCH["tools"][0]["input_schema"])
    assert search.args == {"max_results": 2, "extra": True}
    [search] = tools.resolve([("builtin::websearch/web_search", {})])
    assert search.args == {"max_results": 3}


async def test_resolved_args_are_merged_over_the_models_arguments():
    seen = []

    class Recorder:
        name, description, parameters, toolgroup_id = "t", "", {}, "g"

        async def invoke(self, arguments, *, session_id):
            seen.append((arguments, session_id))
            return ToolResult(content="ok")

    resolved = ResolvedTool(Recorder(), {"k": "group", "only_group": 1})
    await resolved.invoke({"k": "model", "q": "x"}, session_id="sess_1")
    assert seen == [({"k": "group", "q": "x", "only_group": 1}, "sess_1")]


def test_unknown_groups_and_tools_are_not_found():
    tools = runtime(websearch={"api_key": "k"}, toolgroups=[MCP])
    assert error(lambda: tools.resolve([("nope", {})]))[:2] == ("NOT_FOUND", "TOOLGROUP_NOT_FOUND")
    code, reason, message = error(lambda: tools.resolve([("nope/web_search", {})]))
    assert (code, reason, message) == ("NOT_FOUND", "TOOLGROUP_NOT_FOUND", "Toolgroup 'nope' not found.")
    code, reason, message = error(lambda: tools.resolve([("builtin::websearch/nope", {})]))
    assert (code, reason) == ("NOT_FOUND", "TOOL_NOT_FOUND") and "builtin::websearch/nope" in message
    assert error(lambda: tools.resolve([("mcp::files/nope", {})]))[:2] == ("NOT_FOUND", "TOOL_NOT_FOUND")


@pytest.mark.parametrize("configured", [[], [WEBSEARCH]])
def test_websearch_without_a_key_is_unavailable_and_says_what_to_set(configured):
    tools = runtime(toolgroups=configured)
    for reference in ("builtin::websearch", "builtin::websearch/web_search"):
        code, reason, message = error(lambda r=reference: tools.resolve([(r, {})]))
        assert (code, reason) == ("FAILED_PRECONDITION", "TOOLGROUP_UNAVAILABLE")
        assert "builtin::websearch needs a search API key: set AGENTD_WEBSEARCH_API_KEY" in message
    assert error(lambda: tools.resolve([("builtin::websearch/nope", {})]))[1] == "TOOL_NOT_FOUND"


def test_a_group_of_a_provider_agentd_does_not_run_is_unavailable_naming_it():
    tools = runtime(toolgroups=[MCP])
    for reference in ("mcp::files", "mcp::files/read_file"):
        code, reason, message = error(lambda r=reference: tools.resolve([(r, {})]))
        assert (code, reason) == ("FAILED_PRECONDITION", "TOOLGROUP_UNAVAILABLE")
        assert "'mcp::files'" in message and "'model-context-protocol'" in message


@pytest.mark.parametrize("references", [
    [("builtin::websearch", {}), ("builtin::websearch/web_search", {})],
    [("builtin::websearch", {}), ("builtin::websearch", {})],
])
def test_a_tool_reached_twice_is_invalid(references):
    tools = runtime(websearch={"api_key": "k"})
    code, reason, message = error(lambda: tools.resolve(references))
    assert (code, reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "'web_search' is named twice" in message


def test_the_listed_groups_have_websearch_only_with_a_key_in_configured_order():
    other = {"id": "mcp::other", "provider_id": "model-context-protocol"}
    without = Settings.model_validate({"toolgroups": [MCP, WEBSEARCH, other]})
    assert [g.id for g in toolgroups_of(without)] == ["mcp::files", "mcp::other"]
    keyed = without.model_copy(update={"websearch": load_settings(environ={
        "AGENTD_WEBSEARCH_API_KEY": "k"}).websearch})
    assert [g.id for g in toolgroups_of(keyed)] == ["mcp::files", "builtin::websearch", "mcp::other"]
    alone = load_settings(environ={"AGENTD_WEBSEARCH_API_KEY": "k", "AGENTD_WEBSEARCH_PROVIDER": "brave"})
    [group] = toolgroups_of(alone)
    assert (group.id, group.provider_id, [t.name for t in group.tools]) == (
        "builtin::websearch", "brave-search", ["web_search"])


# ------------------------------------------------------------------ settings

def test_websearch_settings_from_the_environment_win_field_by_field(tmp_path):
    path = tmp_path / "agentd.yaml"
    path.write_text("websearch:\n  provider: brave\n  timeout_s: 3\n  api_key: from-file\n")
    settings = load_settings(path, environ={"AGENTD_WEBSEARCH_API_KEY": "from-env",
                                            "AGENTD_WEBSEARCH_BASE_URL": "http://127.0.0.1:1",
                                            "AGENTD_WEBSEARCH_MAX_RESULTS": "7"})
    ws = settings.websearch
    assert (ws.provider, ws.timeout_s, ws.base_url, ws.max_results) == ("brave", 3, "http://127.0.0.1:1", 7)
    assert ws.api_key.get_secret_value() == "from-env" and "from-env" not in repr(settings)
    json_env = load_settings(environ={"AGENTD_WEBSEARCH": '{"provider": "brave", "api_key": "j"}',
                                      "AGENTD_WEBSEARCH_PROVIDER": "tavily"}).websearch
    assert (json_env.provider, json_env.api_key.get_secret_value()) == ("tavily", "j")


def test_websearch_is_off_by_default_and_with_a_blank_key():
    assert not load_settings(environ={}).websearch.enabled
    assert not load_settings(environ={"AGENTD_WEBSEARCH_API_KEY": " "}).websearch.enabled


@pytest.mark.parametrize("environ, needle", [
    ({"AGENTD_WEBSEARCH_PROVIDER": "bing"}, "websearch.provider"),
    ({"AGENTD_WEBSEARCH_BASE_URL": "api.tavily.com"}, "websearch.base_url"),
    ({"AGENTD_WEBSEARCH_TIMEOUT_S": "0"}, "websearch.timeout_s"),
    ({"AGENTD_WEBSEARCH_MAX_RESULT": "3"}, "AGENTD_WEBSEARCH_MAX_RESULTS"),  # the known list
    ({"AGENTD_WEBSEARCH": "{"}, "AGENTD_WEBSEARCH must be JSON"),
    ({"AGENTD_TOOLGROUPS": '[{"id": "builtin::websearch", "provider_id": "p", "tools": [{"name": "x"}]}]'},
     "has one tool, 'web_search'"),
    ({"AGENTD_WEBSEARCH_API_KEY": "k",
      "AGENTD_TOOLGROUPS": '[{"id": "g", "provider_id": "p", "tools": [{"name": "web_search"}]}]'},
     "belongs to builtin::websearch"),
])
def test_bad_websearch_settings_are_named(environ, needle):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert needle in str(caught.value)


def test_a_web_search_tool_name_elsewhere_is_fine_while_web_search_is_off():
    settings = load_settings(environ={
        "AGENTD_TOOLGROUPS": '[{"id": "g", "provider_id": "p", "tools": [{"name": "web_search"}]}]'})
    assert [g.id for g in toolgroups_of(settings)] == ["g"]
