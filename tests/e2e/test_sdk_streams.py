"""The real SDKs read agentd's SSE streams: heartbeats (": keep-alive") and "id:" lines never
surface as events, and a turn that fails shows as the SDK's error. Scripted servicers
(tests/fakes/scripted.py) behind the real gateway (uvicorn on an ephemeral port); the
synchronous SDKs run on a worker thread."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import llama_stack_client
import openai
import pytest
import pytest_asyncio
from llama_stack_client import LlamaStackClient
from llama_stack_client.lib.agents.agent import Agent

from agentd.app import SERVICES
from agentd.gateway.server import GatewayServer
from tests.fakes.scripted import FAILURE, servicers

USER = [{"role": "user", "content": "hi"}]


@pytest_asyncio.fixture
async def base_url():
    server = GatewayServer("127.0.0.1:0", SERVICES, servicers())
    port = await server.start()
    yield f"http://127.0.0.1:{port}"
    await server.stop(0)


def _turn_chunks(base_url: str, session_id: str) -> list:
    with LlamaStackClient(base_url=base_url, max_retries=0) as client:
        stream = client.agents.turn.create(agent_id="agent_1", session_id=session_id, messages=USER,
                                           stream=True)
        return list(stream)


async def test_llama_stack_client_sees_exactly_the_events_without_heartbeats(base_url):
    assert llama_stack_client.__version__ == "0.2.12"
    chunks = await asyncio.to_thread(_turn_chunks, base_url, "sess_heartbeat")
    assert [(c.event.sequence_number, c.event.payload.event_type) for c in chunks] == [
        (0, "turn_start"), (1, "step_progress"), (2, "step_progress"), (3, "turn_complete")]
    assert [c.event.payload.delta.text for c in chunks[1:3]] == ["word1 ", "word2 "]
    turn = chunks[-1].event.payload.turn  # the scripted turn is partial: the SDK keeps a dict
    assert (turn["turn_id"] if isinstance(turn, dict) else turn.turn_id) == "turn_1"


async def test_llama_stack_client_chunks_end_with_the_turn_failure(base_url):
    chunks = await asyncio.to_thread(_turn_chunks, base_url, "sess_turn_failed")
    assert [c.event.payload.event_type for c in chunks[:-1]] == ["turn_start", "step_progress"]
    assert chunks[-1].error == {"message": f"503: {FAILURE.message}"}


def _agent_turn(base_url: str):
    with LlamaStackClient(base_url=base_url, max_retries=0) as client:
        agent = Agent(client, model="m", instructions="Be brief.")
        session_id = agent.create_session("s")  # the scripted session whose turn fails
        return agent.create_turn(messages=USER, session_id=session_id, stream=False)


async def test_llama_stack_agent_helper_raises_the_turn_failure(base_url):
    with pytest.raises(RuntimeError) as caught:
        await asyncio.to_thread(_agent_turn, base_url)
    assert str(caught.value) == f"Turn did not complete. Error: 503: {FAILURE.message}"


def _response_events(base_url: str, retrieve_after: int | None = None) -> list:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    try:
        if retrieve_after is None:
            return list(client.responses.create(model="m", input="hi", stream=True))
        return list(client.responses.retrieve("resp_1", stream=True, starting_after=retrieve_after))
    finally:
        client.close()


async def test_openai_sdk_sees_exactly_the_response_events_without_heartbeats(base_url):
    events = await asyncio.to_thread(_response_events, base_url)
    assert [(e.type, e.sequence_number) for e in events] == [
        ("response.created", 0), ("response.in_progress", 1), ("response.output_text.delta", 2),
        ("response.completed", 3)]
    assert type(events[-1]).__name__ == "ResponseCompletedEvent"
    assert events[-1].response.status == "completed"


async def test_openai_sdk_reattaches_after_an_event(base_url):
    events = await asyncio.to_thread(_response_events, base_url, 1)
    assert [e.type for e in events] == ["response.output_text.delta", "response.completed"]


async def test_llama_stack_client_0_3_sees_exactly_the_events(base_url):
    """0.3.0 needs Python >= 3.12: it runs in .venv312 (see test_llama_stack_client_0_3.py)."""
    from tests.e2e.test_llama_stack_client_0_3 import PYTHON312, _python312_available
    if not PYTHON312.exists():
        if _python312_available():
            pytest.fail("Python 3.12 is on this machine but .venv312 is missing: run `make setup`")
        pytest.skip("no Python >= 3.12 on this machine: llama-stack-client 0.3 cannot be installed")
    scenario = Path(__file__).parent / "scenarios" / "llama_stack_client_0_3_stream.py"
    run = await asyncio.create_subprocess_exec(str(PYTHON312), str(scenario), base_url,
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(run.communicate(), 120)
    assert run.returncode == 0, (err + out).decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["version"] == "0.3.0"
    assert summary["events"] == [[0, "turn_start"], [1, "step_progress"], [2, "step_progress"],
                                 [3, "turn_complete"]]
    assert summary["failed"] == ["turn_start", "step_progress", {"message": f"503: {FAILURE.message}"}]
