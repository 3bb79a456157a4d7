"""Shields, tool groups and tools as both llama-stack-client generations read them, from an
`agentd serve` configured through AGENTD_SHIELDS / AGENTD_TOOLGROUPS / AGENTD_WEBSEARCH_*."""

from __future__ import annotations

import json
import subprocess

import llama_stack_client
import pytest
from llama_stack_client import LlamaStackClient

from tests.e2e.conftest import start_agentd
from tests.e2e.test_llama_stack_client_0_3 import (
    SCENARIO,
    python312,  # noqa: F401 - the fixture
)

SHIELDS = [{"id": "llama-guard", "provider_id": "llama-guard",
            "provider_shield_id": "meta-llama/Llama-Guard-3-1B"}]
TOOLGROUPS = [
    {"id": "builtin::websearch", "provider_id": "tavily-search",
     "tools": [{"name": "web_search", "description": "Search the web", "input_schema": {
         "type": "object", "required": ["query"],
         "properties": {"query": {"type": "string", "description": "What to look for"}}}}]},
    {"id": "mcp::files", "provider_id": "model-context-protocol", "mcp_endpoint": "http://127.0.0.1:9/sse",
     "tools": [{"name": "read_file", "description": "Reads a file"}]},
]
REGISTRIES_SCENARIO = SCENARIO.parent / "registries_0_3.py"


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    handle = start_agentd(tmp_path_factory.mktemp("agentd"), AGENTD_SHIELDS=json.dumps(SHIELDS),
                          AGENTD_TOOLGROUPS=json.dumps(TOOLGROUPS),
                          # builtin::websearch is listed only with a key; nothing is searched.
                          AGENTD_WEBSEARCH_API_KEY="sk-unused",
                          AGENTD_WEBSEARCH_BASE_URL="http://127.0.0.1:9")
    yield handle
    assert handle.terminate() == 0, handle.log()


@pytest.fixture
def client(configured):
    with LlamaStackClient(base_url=configured.base_url, max_retries=0) as client:
        yield client


def test_shields_with_0_2(client):
    [shield] = client.shields.list()
    assert (shield.identifier, shield.provider_id, shield.provider_resource_id) == (
        "llama-guard", "llama-guard", "meta-llama/Llama-Guard-3-1B")
    assert client.shields.retrieve("llama-guard").identifier == "llama-guard"
    with pytest.raises(llama_stack_client.NotFoundError):
        client.shields.retrieve("nope")


def test_toolgroups_and_tools_with_0_2(client):
    groups = client.toolgroups.list()
    assert [g.identifier for g in groups] == ["builtin::websearch", "mcp::files"]
    assert groups[1].mcp_endpoint.uri == "http://127.0.0.1:9/sse"
    assert client.toolgroups.get("mcp::files").provider_id == "model-context-protocol"
    [tool] = client.tools.list(toolgroup_id="builtin::websearch")
    assert (tool.identifier, tool.toolgroup_id, tool.description) == (
        "web_search", "builtin::websearch", "Search the web")
    [parameter] = tool.parameters
    assert (parameter.name, parameter.parameter_type, parameter.required) == ("query", "string", True)
    assert [t.identifier for t in client.tools.list()] == ["web_search", "read_file"]
    with pytest.raises(llama_stack_client.NotFoundError):
        client.tools.list(toolgroup_id="nope")
    with pytest.raises(llama_stack_client.NotFoundError):
        client.toolgroups.get("nope")


def test_nothing_configured_lists_nothing_with_0_2(agentd_process):
    with LlamaStackClient(base_url=agentd_process.base_url, max_retries=0) as client:
        assert (client.shields.list(), client.toolgroups.list(), client.tools.list()) == ([], [], [])


def test_registries_with_0_3(python312, configured):  # noqa: F811 - the fixture
    run = subprocess.run([str(python312), str(REGISTRIES_SCENARIO), configured.base_url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary == {
        "version": "0.3.0", "shields": ["llama-guard"], "toolgroups": ["builtin::websearch", "mcp::files"],
        "tools": [["web_search", {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string", "description": "What to look for"}}}]],
        "missing_toolgroup": 404}
