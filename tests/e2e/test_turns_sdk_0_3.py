"""Turns with llama-stack-client 0.3.0 (client.alpha.agents, /v1alpha routes) against a real
`agentd serve` and the fake model, as test_turns_sdk.py does for 0.2.12. The SDK needs
Python >= 3.12: scenarios/turns_0_3.py runs in .venv312 (`make setup`) and prints what it saw."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import start_agentd
from tests.e2e.test_llama_stack_client_0_3 import python312  # noqa: F401 (fixture)
from tests.fakes.openai_server import Reply, ToolCallSpec

SCENARIO = Path(__file__).parent / "scenarios" / "turns_0_3.py"



@pytest.fixture(scope="module")
def agentd(tmp_path_factory, fake):
    providers = [
        {"id": "fake", "type": "openai", "base_url": fake.base_url, "models": [{"id": "test-model"}]}
    ]
    handle = start_agentd(tmp_path_factory.mktemp("agentd"), AGENTD_PROVIDERS=json.dumps(providers))
    yield handle
    assert handle.terminate() == 0, handle.log()


def _sequential(events) -> bool:
    numbers = [n for _, n in events]
    return numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_turns_streamed_unary_and_resumed_with_the_new_sdk(python312, agentd, fake):  # noqa: F811
    fake.reset()
    fake.script(
        Reply(text="Hello from agentd", chunk_size=5),
        Reply(text="Unary"),
        Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Paris"}, id="call_s")]),
        Reply(text="It is sunny."),
        Reply(tool_calls=[ToolCallSpec("get_weather", {"city": "Oslo"}, id="call_u")]),
        Reply(text="It is rainy."),
    )
    run = subprocess.run([str(python312), str(SCENARIO), agentd.base_url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout + agentd.log()
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["version"] == "0.3.0"

    stream = summary["stream"]
    kinds = [k for k, _ in stream["events"]]
    assert kinds[0] == "turn_start" and kinds[-1] == "turn_complete"
    assert kinds[1] == "step_start" and "step_progress" in kinds and "step_complete" in kinds
    assert kinds.count("turn_complete") == 1
    assert _sequential(stream["events"])
    assert stream["text"] == stream["output"] == stream["retrieved"] == "Hello from agentd"
    assert stream["steps"] == ["inference"]

    unary = summary["unary"]
    assert unary["output"] == "Unary"
    assert unary["session_turns"][-1] == unary["turn_id"] and len(unary["session_turns"]) == 2

    tool = summary["tool_stream"]
    assert tool["paused"][0][0] == "turn_start" and tool["paused"][-1][0] == "turn_awaiting_input"
    # (0.3.0's ToolCall.arguments is a JSON string.)
    assert tool["call"] == ["call_s", "get_weather", json.dumps({"city": "Paris"}, separators=(",", ":"))]
    resumed = [k for k, _ in tool["resumed"]]
    assert resumed[-1] == "turn_complete" and "turn_start" not in resumed
    assert _sequential(tool["paused"] + tool["resumed"])  # numbered on from the pause
    assert tool["same_turn"] and tool["output"] == "It is sunny."
    assert tool["steps"] == ["inference", "tool_execution", "inference"]

    tool = summary["tool_unary"]
    assert tool["call"][:2] == ["call_u", "get_weather"] and json.loads(tool["call"][2]) == {"city": "Oslo"}
    assert tool["same_turn"] and tool["output"] == "It is rainy."
    assert tool["steps"] == ["inference", "tool_execution", "inference"]

    # What the model saw: the client results as tool messages, after the calls.
    tools = [r.body["messages"][-1] for r in fake.chat_requests if r.body["messages"][-1]["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tools] == [("call_s", "sunny"), ("call_u", "rainy")]
    assert len(fake.chat_requests) == 6
