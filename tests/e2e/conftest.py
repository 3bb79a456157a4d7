"""e2e fixtures: `agentd serve` as a subprocess on free ports, as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentd.testing import AGENTD, AgentdProcess, free_port
from agentd.testing import start_agentd as _start
from tests.fakes.openai_server import FakeOpenAIServer

__all__ = ["AGENTD", "free_port", "start_agentd"]

PROVIDERS = [{"id": "fake", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
              "models": [{"id": "test-model"}]}]


def start_agentd(tmp_path: Path, **env: str) -> AgentdProcess:
    """A SERVING agentd with the fake provider's model listed; `env` overrides settings."""
    handle = _start(tmp_path, {"AGENTD_PROVIDERS": json.dumps(PROVIDERS), "AGENTD_GRACE_PERIOD_S": "5",
                               **env})
    try:
        handle.wait_serving()
    except Exception:
        handle.process.kill()
        raise
    return handle


def start_agentd_with_fake_model(tmp_path: Path, fake) -> AgentdProcess:
    """A SERVING agentd whose model "test-model" is the fake model server `fake`."""
    providers = [{"id": "fake", "type": "openai", "base_url": fake.base_url,
                  "models": [{"id": "test-model"}]}]
    return start_agentd(tmp_path, AGENTD_PROVIDERS=json.dumps(providers))


@pytest.fixture(scope="module")
def fake():
    """One fake model server per module: the e2e modules share one `agentd serve` each."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def agentd_process(tmp_path_factory):
    handle = start_agentd(tmp_path_factory.mktemp("agentd"))
    yield handle
    code = handle.terminate()
    assert code == 0, handle.log()
