"""Run by tests/e2e/test_sdk_streams.py under Python >= 3.12 with llama-stack-client 0.3.0:
streams the scripted turns (heartbeats and id: lines included) and prints a JSON summary.
Usage: python llama_stack_client_0_3_stream.py BASE_URL"""

import json
import sys

import llama_stack_client
from llama_stack_client import LlamaStackClient

client = LlamaStackClient(base_url=sys.argv[1], max_retries=0)
turn = client.alpha.agents.turn
summary = {"version": llama_stack_client.__version__}
chunks = list(turn.create(session_id="sess_heartbeat", agent_id="agent_1", stream=True,
                          messages=[{"role": "user", "content": "hi"}]))
summary["events"] = [[c.event.sequence_number, c.event.payload.event_type] for c in chunks]
failed = list(turn.create(session_id="sess_turn_failed", agent_id="agent_1", stream=True,
                          messages=[{"role": "user", "content": "hi"}]))
summary["failed"] = [getattr(c, "error", None) or c.event.payload.event_type for c in failed]
print(json.dumps(summary))
