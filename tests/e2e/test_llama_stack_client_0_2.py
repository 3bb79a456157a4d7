"""llama-stack-client 0.2.12 (the newest for Python 3.11; it calls /v1/agents/...) against a
real `agentd serve`."""

from __future__ import annotations

import llama_stack_client
import pytest
from llama_stack_client import LlamaStackClient

AGENT_CONFIG = {
    "model": "test-model",
    "instructions": "You are a helpful assistant.",
    "sampling_params": {"strategy": {"type": "greedy"}, "max_tokens": 512},
    "toolgroups": ["builtin::websearch"],
    "client_tools": [{"name": "get_weather", "description": "Weather for a city", "parameters": [
        {"name": "city", "parameter_type": "string", "description": "The city", "required": True}]}],
    "tool_config": {"tool_choice": "auto"},
    "input_shields": [], "output_shields": [], "enable_session_persistence": True,
}


@pytest.fixture
def client(agentd_process):
    with LlamaStackClient(base_url=agentd_process.base_url, max_retries=0) as client:
        yield client


def test_sdk_version():
    assert llama_stack_client.__version__ == "0.2.12"


def test_agent_and_session_lifecycle(client):
    agent_id = client.agents.create(agent_config=AGENT_CONFIG).agent_id
    assert agent_id.startswith("agent_")

    session_id = client.agents.session.create(agent_id=agent_id, session_name="trip").session_id
    session = client.agents.session.retrieve(session_id=session_id, agent_id=agent_id)
    assert (session.session_id, session.session_name, session.turns) == (session_id, "trip", [])
    assert session.started_at.year >= 2025

    # No typed list/get in 0.2.12: the SDK's generic GET reads the same routes.
    agent = client.get(f"/v1/agents/{agent_id}", cast_to=object)
    assert agent["agent_config"]["client_tools"][0]["input_schema"] == {
        "type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
        "required": ["city"]}
    listed = client.get(f"/v1/agents/{agent_id}/sessions", cast_to=object)
    assert [s["session_id"] for s in listed["data"]] == [session_id]

    client.agents.session.delete(session_id=session_id, agent_id=agent_id)
    with pytest.raises(llama_stack_client.NotFoundError):
        client.agents.session.retrieve(session_id=session_id, agent_id=agent_id)
    client.agents.delete(agent_id)
    with pytest.raises(llama_stack_client.NotFoundError):
        client.agents.session.create(agent_id=agent_id, session_name="again")


def test_invalid_config_is_a_bad_request(client):
    with pytest.raises(llama_stack_client.BadRequestError) as caught:
        client.agents.create(agent_config={"model": "", "instructions": "x"})
    assert "agent_config.model" in str(caught.value)


def test_models_list(client):
    assert [m.identifier for m in client.models.list()] == ["test-model"]


def test_a_turn_naming_an_unusable_toolgroup_fails_before_its_first_event(client):
    # (Turns themselves: tests/e2e/test_turns_sdk.py.) Web search has no key here.
    agent_id = client.agents.create(agent_config=AGENT_CONFIG).agent_id
    session_id = client.agents.session.create(agent_id=agent_id, session_name="s").session_id
    with pytest.raises(llama_stack_client.BadRequestError) as caught:
        client.agents.turn.create(session_id=session_id, agent_id=agent_id, stream=True,
                                  messages=[{"role": "user", "content": "hi"}])
    assert "builtin::websearch" in str(caught.value)
