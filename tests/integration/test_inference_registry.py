"""The model registry built from settings (AGENTD_PROVIDERS and the AGENTD_OPENAI_* variables)
against real fake endpoints, and ModelsService listing it over gRPC and REST."""

from __future__ import annotations

import json
import logging
import socket

import grpc
import pytest

from agentd.app import Agentd
from agentd.config import ConfigError, load_settings
from agentd.errors import AgentdError
from agentd.inference import ChatMessage, ChatRequest, ModelRegistry
from agentd.inference.registry import RegistryError
from agentd.v1 import models_pb2, models_pb2_grpc
from tests.conftest import make_settings
from tests.fakes.openai_server import FakeOpenAIServer, Reply

USER = (ChatMessage("user", "hi"),)


@pytest.fixture
def fake_a():
    with FakeOpenAIServer(models=["alpha", "org/beta"]) as fake:
        yield fake


@pytest.fixture
def fake_b():
    with FakeOpenAIServer(models=["gamma"], api_key="sk-b") as fake:
        yield fake


def settings_of(environ: dict[str, str]):
    """The settings of `environ`, with the embedded model off (its tests: test_local_model.py)."""
    return load_settings(environ={"AGENTD_LOCAL_MODEL": "off", **environ})


async def started(environ: dict[str, str]) -> ModelRegistry:
    registry = ModelRegistry.from_settings(settings_of(environ), discovery_timeout_s=2)
    await registry.start()
    return registry


async def answer(registry: ModelRegistry, model: str) -> str:
    provider = registry.provider_for(model)
    return "".join([c.text async for c in provider.stream_chat(ChatRequest(model=model, messages=USER))])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_simple_variables_without_a_model_list_ask_the_endpoint(fake_a):
    registry = await started({"AGENTD_OPENAI_BASE_URL": fake_a.base_url})
    try:
        assert [(m.id, m.provider_id) for m in registry.models()] == [
            ("alpha", "openai"), ("org/beta", "openai")]
        assert await answer(registry, "org/beta") == "echo: hi"
        assert fake_a.chat_requests[0].model == "org/beta"
    finally:
        await registry.close()


async def test_the_simple_variables_with_a_model_list_do_not_ask(fake_a):
    fake_a.script(Reply(text="from alpha"))
    registry = await started({"AGENTD_OPENAI_BASE_URL": fake_a.base_url, "AGENTD_OPENAI_API_KEY": "sk-a",
                              "AGENTD_OPENAI_MODELS": "alpha, extra"})
    try:
        assert [m.id for m in registry.models()] == ["alpha", "extra"]
        assert [r.path for r in fake_a.requests] == []  # no /v1/models at start
        assert await answer(registry, "alpha") == "from alpha"
        assert fake_a.chat_requests[0].headers["authorization"] == "Bearer sk-a"
    finally:
        await registry.close()


async def test_an_unreachable_endpoint_starts_without_its_models_and_says_so(fake_a, caplog):
    providers = [{"id": "up", "type": "openai", "base_url": fake_a.base_url}]
    environ = {"AGENTD_OPENAI_BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1",
               "AGENTD_PROVIDERS": json.dumps(providers)}
    with caplog.at_level(logging.WARNING, logger="agentd.inference"):
        registry = await started(environ)
    try:
        assert [m.id for m in registry.models()] == ["alpha", "org/beta"]
        assert "provider 'openai': cannot list the models" in caplog.text
        assert "starting without its models" in caplog.text
    finally:
        await registry.close()


async def test_an_endpoint_refusing_the_key_starts_without_its_models_and_says_why(fake_a, fake_b, caplog):
    providers = [{"id": "up", "type": "openai", "base_url": fake_a.base_url},
                 {"id": "refusing", "type": "openai", "base_url": fake_b.base_url, "api_key": "sk-wrong"}]
    with caplog.at_level(logging.WARNING, logger="agentd.inference"):
        registry = await started({"AGENTD_PROVIDERS": json.dumps(providers)})
    try:
        assert [m.id for m in registry.models()] == ["alpha", "org/beta"]
        assert "provider 'refusing': cannot list the models" in caplog.text
        assert "Incorrect API key" in caplog.text  # the endpoint's own message (HTTP 401)
    finally:
        await registry.close()


async def test_several_endpoints_route_each_model_to_its_own(fake_a, fake_b):
    fake_a.script(Reply(text="A"))
    fake_b.script(Reply(text="B"))
    providers = [
        {"id": "a", "type": "openai", "base_url": fake_a.base_url,
         "models": [{"id": "fast", "provider_model_id": "alpha"}]},
        {"id": "b", "type": "openai", "base_url": fake_b.base_url, "api_key": "sk-b"},
    ]
    registry = await started({"AGENTD_PROVIDERS": json.dumps(providers)})
    try:
        assert [(m.id, m.provider_id, m.provider_model_id) for m in registry.models()] == [
            ("fast", "a", "alpha"), ("gamma", "b", "gamma")]
        assert await answer(registry, "fast") == "A"
        assert await answer(registry, "gamma") == "B"
        assert fake_a.chat_requests[0].model == "alpha"
        assert fake_b.chat_requests[0].headers["authorization"] == "Bearer sk-b"
        with pytest.raises(AgentdError) as caught:
            registry.provider_for("nope")
        assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    finally:
        await registry.close()


async def test_a_model_served_twice_stops_the_start(fake_a):
    with FakeOpenAIServer(models=["alpha"]) as other:
        providers = [{"id": "one", "type": "openai", "base_url": other.base_url}]
        registry = ModelRegistry.from_settings(settings_of({
            "AGENTD_OPENAI_BASE_URL": fake_a.base_url, "AGENTD_PROVIDERS": json.dumps(providers)}))
        try:
            with pytest.raises(RegistryError, match="'alpha' is served by two providers"):
                await registry.start()
        finally:
            await registry.close()


async def test_an_openai_provider_without_a_url_stops_the_start():
    registry = ModelRegistry.from_settings(settings_of({
        "AGENTD_PROVIDERS": '[{"id": "p", "type": "openai", "models": [{"id": "m"}]}]'}))
    try:
        with pytest.raises(RegistryError, match="provider 'p' of type openai needs a base_url"):
            await registry.start()
    finally:
        await registry.close()


@pytest.mark.parametrize("environ, needle", [
    ({"AGENTD_OPENAI_BASE_URL": "http://h/v1", "AGENTD_OPENAI_MODELS": "m",
      "AGENTD_PROVIDERS": '[{"id": "p", "type": "openai", "base_url": "http://x/v1", '
                          '"models": [{"id": "m"}]}]'},
     "'m' is served by two providers"),
    ({"AGENTD_OPENAI_BASE_URL": "http://h/v1",
      "AGENTD_PROVIDERS": '[{"id": "openai", "type": "openai", "base_url": "http://x/v1"}]'},
     "which `providers` also names"),
    ({"AGENTD_OPENAI_MODELS": "m"}, "need openai_base_url"),
])
def test_conflicting_provider_settings_are_refused_at_load(environ, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(environ=environ)


async def test_models_service_lists_the_registry_over_grpc_and_rest(database_url, tmp_path, fake_a):
    import httpx

    server = Agentd(make_settings(database_url, tmp_path, openai_base_url=fake_a.base_url))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = models_pb2_grpc.ModelsServiceStub(channel)
            listed = await stub.ListModels(models_pb2.ListModelsRequest())
            assert [(m.id, m.provider_id) for m in listed.data] == [
                ("test-model", "fake"), ("org/test-embed", "fake"),
                ("alpha", "openai"), ("org/beta", "openai")]
            got = await stub.GetModel(models_pb2.GetModelRequest(model_id="org/beta"))
            assert got.model.owned_by == "openai" and got.model.provider_resource_id == "org/beta"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
            for path in ("/v1/models", "/v1/openai/v1/models"):
                body = (await http.get(path)).json()
                beta = next(m for m in body["data"] if m["id"] == "org/beta")
                assert beta["identifier"] == "org/beta" and beta["provider_id"] == "openai"
                assert beta["object"] == "model" and beta["model_type"] == "llm"
                assert beta["owned_by"] == "openai" and isinstance(beta["created"], int)
            assert (await http.get("/v1/models/alpha")).status_code == 200
    finally:
        await server.stop(0)
