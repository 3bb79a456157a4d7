"""Run by tests/e2e/test_registries.py under Python >= 3.12 with llama-stack-client 0.3.0:
reads shields, tool groups and tools (ToolDef: name + input_schema) and prints a JSON
summary for the test to check. Usage: python registries_0_3.py BASE_URL"""

import json
import sys

import llama_stack_client
from llama_stack_client import LlamaStackClient

client = LlamaStackClient(base_url=sys.argv[1], max_retries=0)
summary = {"version": llama_stack_client.__version__,
           "shields": [s.identifier for s in client.shields.list()],
           "toolgroups": [g.identifier for g in client.toolgroups.list()],
           "tools": [[t.name, t.input_schema] for t in client.tools.list(toolgroup_id="builtin::websearch")]}
try:
    client.tools.list(toolgroup_id="nope")
except llama_stack_client.NotFoundError as e:
    summary["missing_toolgroup"] = e.status_code
print(json.dumps(summary))
