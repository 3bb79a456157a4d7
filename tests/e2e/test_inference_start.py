"""`agentd serve` with the simple AGENTD_OPENAI_* variables, as an operator would start it:
models asked from the endpoint, or a clear warning and a start without them."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import free_port, start_agentd
from tests.fakes.openai_server import FakeOpenAIServer


def test_models_are_asked_from_the_endpoint_at_start(tmp_path):
    with FakeOpenAIServer(models=["served-1", "served-2"]) as fake:
        handle = start_agentd(tmp_path, AGENTD_OPENAI_BASE_URL=fake.base_url)
        try:
            ids = [m["id"] for m in httpx.get(f"{handle.base_url}/v1/models").json()["data"]]
            assert ids == ["test-model", "served-1", "served-2"]
        finally:
            assert handle.terminate() == 0, handle.log()


def test_an_unreachable_endpoint_is_a_warning_not_a_failed_start(tmp_path):
    handle = start_agentd(tmp_path, AGENTD_OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    try:
        ids = [m["id"] for m in httpx.get(f"{handle.base_url}/v1/models").json()["data"]]
        assert ids == ["test-model"]
        assert "provider 'openai': cannot list the models" in handle.log()
    finally:
        assert handle.terminate() == 0, handle.log()
