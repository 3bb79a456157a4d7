"""agentd-client installs on its own, in a fresh venv, with none of the server's
dependencies, and works there against a live agentd."""

from __future__ import annotations

import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What only the server needs: none of it may come with the client.
SERVER_ONLY = {"sqlalchemy", "alembic", "asyncpg", "pydantic", "pyyaml", "starlette", "uvicorn", "openai",
               "httpx", "grpcio-health-checking", "grpcio-reflection", "grpcio-status", "agentd"}

SCRIPT = textwrap.dedent('''
    import sys
    from agentd_client import Client, NotFoundError
    from agentd.v1 import agents_pb2, models_pb2

    with Client(sys.argv[1], timeout=10) as client:
        print([m.id for m in client.models.ListModels(models_pb2.ListModelsRequest()).data])
        try:
            client.agents.GetAgent(agents_pb2.GetAgentRequest(agent_id="agent_missing"))
        except NotFoundError as e:
            print(e.reason)
''')


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("client-venv")
    venv.create(path, with_pip=True)
    python = path / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(ROOT / "clients/python")],
                               capture_output=True, text=True, timeout=600)
    if installed.returncode != 0:
        pytest.fail(f"pip install clients/python failed:\n{installed.stderr}")
    return path


def test_it_installs_without_the_server_dependencies(client_venv):
    listed = subprocess.run([str(client_venv / "bin/python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True)
    names = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert {"agentd-client", "grpcio", "protobuf", "googleapis-common-protos"} <= names
    assert not names & SERVER_ONLY


def test_it_works_there_against_a_live_agentd(client_venv, agentd_process):
    done = subprocess.run([str(client_venv / "bin/python"), "-c", SCRIPT, agentd_process.grpc_target],
                          capture_output=True, text=True, timeout=60, cwd=client_venv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['test-model']", "AGENT_NOT_FOUND"]
    listed = subprocess.run([str(client_venv / "bin/agentd"), "agents", "list", "--address",
                             agentd_process.grpc_target], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr


def test_its_agentd_command_says_serve_needs_the_server(client_venv):
    done = subprocess.run([str(client_venv / "bin/agentd"), "serve"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "not installed here" in done.stderr
