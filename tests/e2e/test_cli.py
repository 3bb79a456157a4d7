"""The `agentd` command for people, driven as a subprocess against `agentd serve` (a
subprocess too) whose model is the scripted fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agentd_client import Client
from google.protobuf import json_format

from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import response_resource_pb2 as rt
from tests.e2e.conftest import start_agentd
from tests.fakes.openai_server import Reply, ToolCallSpec
from tests.integration.test_responses import create as create_response

AGENTD_COMMAND = [str(Path(sys.executable).parent / "agentd")]



@pytest.fixture(scope="module")
def server(tmp_path_factory, fake):
    providers = [{"id": "fake", "type": "openai", "base_url": fake.base_url,
                  "models": [{"id": "test-model"}]}]
    handle = start_agentd(tmp_path_factory.mktemp("agentd"), AGENTD_PROVIDERS=json.dumps(providers))
    yield handle
    assert handle.terminate() == 0, handle.log()


def agentd(server, *args: str, stdin: str = "", address_from_env: bool = True) -> subprocess.CompletedProcess:
    """Runs `agentd ARGS`; the address comes from AGENTD_ADDRESS (or --address)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    if address_from_env:
        env["AGENTD_ADDRESS"] = server.grpc_target
    else:
        args = (*args, "--address", server.grpc_target)
    return subprocess.run([*AGENTD_COMMAND, *args], input=stdin, capture_output=True, text=True, env=env,
                          timeout=60)


def test_chat_streams_a_conversation_with_a_new_agent(server, fake):
    fake.script(Reply(text="Hello! How can I help?"), Reply(text="Goodbye."))
    done = agentd(server, "chat", stdin="hi\n\nbye\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("agent agent_") and ", session sess_" in lines[0]
    assert lines[1:] == ["Hello! How can I help?", "Goodbye."]
    assert [r.messages[-1]["content"] for r in fake.chat_requests[-2:]] == ["hi", "bye"]


def test_chat_shows_client_tool_calls_and_asks_for_their_result(server, fake):
    schema = t.AgentToolDef().input_schema
    schema.update({"type": "object", "properties": {"city": {"type": "string"}}})
    with Client(server.grpc_target) as client:
        agent_id = client.agents.CreateAgent(pb.CreateAgentRequest(agent_config=t.AgentConfig(
            model="test-model", instructions="Be brief.",
            client_tools=[t.AgentToolDef(name="get_weather", input_schema=schema)]))).agent_id
    fake.script(Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"})]),
                Reply(text="It is sunny."))
    done = agentd(server, "chat", "--agent", agent_id, stdin="weather in Paris?\nsunny, 21C\n",
                  address_from_env=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        '  → get_weather({"city":"Paris"})', "  ← get_weather: sunny, 21C", "It is sunny."]
    assert fake.chat_requests[-1].messages[-1] == {
        "role": "tool", "tool_call_id": fake.chat_requests[-1].messages[-2]["tool_calls"][0]["id"],
        "content": "sunny, 21C"}


def test_agents_and_sessions_list_show_delete(server):
    with Client(server.grpc_target) as client:
        agent_id = client.agents.CreateAgent(pb.CreateAgentRequest(agent_config=t.AgentConfig(
            model="test-model", instructions="Listed.", name="lister"))).agent_id
        session_id = client.agents.CreateSession(
            pb.CreateSessionRequest(agent_id=agent_id, session_name="first")).session_id
    listed = agentd(server, "agents", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith(agent_id) and line.endswith("\ttest-model\tlister")
               for line in listed.stdout.splitlines())
    shown = agentd(server, "agents", "show", agent_id)
    assert json.loads(shown.stdout)["agent_config"]["instructions"] == "Listed."
    sessions = agentd(server, "sessions", "list", agent_id)
    assert [line.split("\t")[::2] for line in sessions.stdout.splitlines()] == [[session_id, "first"]]
    shown_session = agentd(server, "sessions", "show", agent_id, session_id)
    assert json.loads(shown_session.stdout)["session_name"] == "first"
    assert agentd(server, "sessions", "delete", agent_id, session_id).stdout == f"deleted {session_id}\n"
    assert agentd(server, "agents", "delete", agent_id).stdout == f"deleted {agent_id}\n"
    gone = agentd(server, "agents", "show", agent_id)
    assert gone.returncode == 1
    assert gone.stderr.startswith("agentd: NOT_FOUND AGENT_NOT_FOUND: ") and agent_id in gone.stderr


def test_responses_list_show_delete(server, fake):
    fake.script(Reply(text="Listed."))
    with Client(server.grpc_target) as client:
        response = client.responses.CreateResponse(create_response()).response
    listed = agentd(server, "responses", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"{response.id}\t{response.created_at}\ttest-model\tcompleted" in listed.stdout.splitlines()
    shown = agentd(server, "responses", "show", response.id).stdout
    assert json_format.Parse(shown, rt.Response()) == response
    assert agentd(server, "responses", "delete", response.id).stdout == f"deleted {response.id}\n"
    assert response.id not in agentd(server, "responses", "list").stdout


def test_an_unreachable_server_is_a_clear_error(server):
    done = subprocess.run([*AGENTD_COMMAND, "agents", "list", "--address", "127.0.0.1:9", "--timeout", "5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("agentd: UNAVAILABLE: ")


def test_serve_still_runs_the_server_through_the_same_command():
    done = subprocess.run([*AGENTD_COMMAND, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--config" in done.stdout


def test_version():
    done = subprocess.run([*AGENTD_COMMAND, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("agentd-client ")


def test_chat_goes_on_after_a_failed_turn(server, fake):
    fake.script(Reply(error_status=400, error_message="context too long"), Reply(text="Back again."))
    done = agentd(server, "chat", stdin="first\nsecond\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("agentd: the turn failed: ")
    assert done.stdout.splitlines()[1:] == ["Back again."]
