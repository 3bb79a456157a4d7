"""llama-stack-client 0.3.0 (client.alpha.agents, /v1alpha routes) against a real
`agentd serve`. The SDK needs Python >= 3.12, so it runs in the second venv that
`make setup` builds (.venv312), driving scenarios/llama_stack_client_0_3.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON312 = ROOT / ".venv312" / "bin" / "python"
SCENARIO = Path(__file__).parent / "scenarios" / "llama_stack_client_0_3.py"


def _python312_available() -> bool:
    found = subprocess.run([str(ROOT / "scripts" / "find_python312.sh")], capture_output=True, text=True)
    return bool(found.stdout.strip())


@pytest.fixture(scope="module")
def python312():
    if PYTHON312.exists():
        return PYTHON312
    if _python312_available():
        pytest.fail("Python 3.12 is on this machine but .venv312 is missing: run `make setup`")
    pytest.skip("no Python >= 3.12 on this machine: llama-stack-client 0.3 cannot be installed")


def test_agents_crud_with_the_new_sdk(python312, agentd_process):
    run = subprocess.run([str(python312), str(SCENARIO), agentd_process.base_url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["version"] == "0.3.0"
    assert summary["errors"]["missing_agent"] == [404, {"detail": "Agent 'agent_missing' not found."}]
    status, body = summary["errors"]["conflict"]
    assert status == 400 and "tool_choice is deprecated" in body["detail"]
    assert summary["errors"]["cascaded"][0] == 404
    assert not set(summary["agents"]) & set(summary["remaining"])
