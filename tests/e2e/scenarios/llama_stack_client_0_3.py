"""Run by tests/e2e/test_llama_stack_client_0_3.py under Python >= 3.12 with
llama-stack-client 0.3.0 (client.alpha.agents, /v1alpha routes). Asserts as it goes and
prints a JSON summary for the test to check. Usage: python llama_stack_client_0_3.py BASE_URL"""

import json
import sys

import llama_stack_client
from llama_stack_client import LlamaStackClient

client = LlamaStackClient(base_url=sys.argv[1], max_retries=0)
agents = client.alpha.agents
config = {"model": "test-model", "instructions": "Be brief.",
          "toolgroups": [{"name": "builtin::rag/knowledge_search", "args": {"vector_db_ids": ["vs_1"]}}],
          "client_tools": [{"name": "lookup", "description": "Looks up",
                            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]}

first = agents.create(agent_config=config).agent_id
second = agents.create(agent_config={**config, "name": "second"}).agent_id
got = agents.retrieve(first)
assert got.agent_id == first and got.agent_config.model == "test-model", got
assert got.agent_config.toolgroups[0].args == {"vector_db_ids": ["vs_1"]}, got.agent_config.toolgroups
page = agents.list(start_index=0, limit=1)
assert [a["agent_id"] for a in page.data] == [first] and page.has_more, page
rest = agents.list(start_index=1, limit=10)
assert [a["agent_id"] for a in rest.data] == [second] and not rest.has_more, rest

sessions = [agents.session.create(agent_id=first, session_name=f"s{i}").session_id for i in range(2)]
session = agents.session.retrieve(session_id=sessions[0], agent_id=first)
assert session.session_name == "s0" and session.turns == [], session
listed = agents.session.list(agent_id=first)
assert [s["session_id"] for s in listed.data] == sessions, listed
agents.session.delete(session_id=sessions[0], agent_id=first)
assert [s["session_id"] for s in agents.session.list(agent_id=first).data] == sessions[1:]

errors = {}
try:
    agents.retrieve("agent_missing")
except llama_stack_client.NotFoundError as e:
    errors["missing_agent"] = [e.status_code, e.body]
try:
    agents.create(agent_config={"model": "m", "instructions": "x", "tool_choice": "required",
                                "tool_config": {"tool_choice": "auto"}})
except llama_stack_client.BadRequestError as e:
    errors["conflict"] = [e.status_code, e.body]

agents.delete(first)
agents.delete(second)
try:
    agents.session.retrieve(session_id=sessions[1], agent_id=first)
except llama_stack_client.NotFoundError as e:
    errors["cascaded"] = [e.status_code, e.body]

print(json.dumps({"version": llama_stack_client.__version__, "agents": [first, second],
                  "remaining": [a["agent_id"] for a in agents.list().data], "errors": errors}))
