"""Run by tests/e2e/test_turns_sdk_0_3.py under Python >= 3.12 with llama-stack-client 0.3.0
(client.alpha.agents): a streamed and a non-streamed turn, then a client tool call paused and
resumed, streamed and not. The test scripts the fake model's six replies in that order; this
prints what the SDK saw as one JSON line.
Usage: python turns_0_3.py BASE_URL"""

import json
import sys

import llama_stack_client
from llama_stack_client import LlamaStackClient

client = LlamaStackClient(base_url=sys.argv[1], max_retries=0)
agents = client.alpha.agents
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
agent_id = agents.create(agent_config={"model": "test-model", "instructions": "Be brief.",
                                       "client_tools": [WEATHER]}).agent_id
summary = {"version": llama_stack_client.__version__}


def session() -> str:
    return agents.session.create(agent_id=agent_id, session_name="s").session_id


def events(chunks) -> list:
    return [[c.event.payload.event_type, getattr(c.event, "sequence_number", None)] for c in chunks]


def hi(text="hi"):
    return [{"role": "user", "content": text}]


# 1. streamed text turn
sid = session()
chunks = list(agents.turn.create(session_id=sid, agent_id=agent_id, stream=True, messages=hi()))
turn = chunks[-1].event.payload.turn
summary["stream"] = {
    "events": events(chunks),
    "text": "".join(c.event.payload.delta.text for c in chunks
                    if c.event.payload.event_type == "step_progress"
                    and c.event.payload.delta.type == "text"),
    "output": turn.output_message.content,
    "steps": [s.step_type for s in turn.steps],
    "retrieved": agents.turn.retrieve(turn.turn_id, agent_id=agent_id, session_id=sid).output_message.content,
}

# 2. non-streamed text turn
turn = agents.turn.create(session_id=sid, agent_id=agent_id, stream=False, messages=hi("again"))
stored = agents.session.retrieve(sid, agent_id=agent_id)
summary["unary"] = {"output": turn.output_message.content, "turn_id": turn.turn_id,
                    "session_turns": [t.turn_id for t in stored.turns]}

# 3. client tool call, streamed: paused, then resumed streamed
sid = session()
chunks = list(agents.turn.create(session_id=sid, agent_id=agent_id, stream=True, messages=hi("Weather?")))
paused = chunks[-1].event.payload.turn
call = paused.output_message.tool_calls[0]
resumed = list(agents.turn.resume(paused.turn_id, agent_id=agent_id, session_id=sid, stream=True,
                                  tool_responses=[{"call_id": call.call_id, "tool_name": call.tool_name,
                                                   "content": "sunny"}]))
done = resumed[-1].event.payload.turn
summary["tool_stream"] = {
    "paused": events(chunks), "status": paused.output_message.stop_reason,
    "call": [call.call_id, call.tool_name, call.arguments],
    "resumed": events(resumed), "same_turn": done.turn_id == paused.turn_id,
    "output": done.output_message.content, "steps": [s.step_type for s in done.steps],
}

# 4. client tool call, not streamed: paused, then resumed not streamed
sid = session()
paused = agents.turn.create(session_id=sid, agent_id=agent_id, stream=False, messages=hi("Weather?"))
call = paused.output_message.tool_calls[0]
done = agents.turn.resume(paused.turn_id, agent_id=agent_id, session_id=sid, stream=False,
                          tool_responses=[{"call_id": call.call_id, "tool_name": call.tool_name,
                                           "content": "rainy"}])
summary["tool_unary"] = {
    "call": [call.call_id, call.tool_name, call.arguments],
    "same_turn": done.turn_id == paused.turn_id, "output": done.output_message.content,
    "steps": [s.step_type for s in done.steps],
}
print(json.dumps(summary, default=str))
