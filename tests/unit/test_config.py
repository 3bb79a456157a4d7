"""Configuration: YAML + AGENTD_* env, env wins, and anything unknown or invalid is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentd.config import ConfigError, Settings, load_settings


def test_defaults_need_nothing():
    settings = load_settings(environ={})
    assert settings.grpc_addr == "127.0.0.1:50051"
    assert settings.http_addr == "127.0.0.1:8321"
    assert settings.effective_database_url == "sqlite:///data/agentd.db"


def test_env_wins_over_the_yaml_file(tmp_path: Path):
    config = tmp_path / "agentd.yaml"
    config.write_text("grpc_addr: 0.0.0.0:6000\nlog_level: debug\n"
                      "providers:\n"
                      "  - {id: vllm, type: openai, base_url: 'http://h:8000/v1', models: [{id: m}]}\n")
    settings = load_settings(environ={"AGENTD_CONFIG": str(config), "AGENTD_GRPC_ADDR": "127.0.0.1:7000",
                                      "AGENTD_DATA_DIR": str(tmp_path)})
    assert settings.grpc_addr == "127.0.0.1:7000"
    assert settings.log_level == "debug"
    assert settings.providers[0].models[0].id == "m"
    assert settings.effective_database_url.endswith(f"{tmp_path}/agentd.db")


def test_database_url_from_env():
    url = "postgresql+asyncpg://u@h/db"
    assert load_settings(environ={"AGENTD_DATABASE_URL": url}).effective_database_url == url


@pytest.mark.parametrize("environ, needle", [
    ({"AGENTD_GRPC_ADRR": "x"}, "unknown setting AGENTD_GRPC_ADRR"),
    ({"AGENTD_GRPC_ADDR": "nonsense"}, "grpc_addr: Value error, expected host:port"),
    ({"AGENTD_LOG_LEVEL": "loud"}, "log_level"),
    ({"AGENTD_DATABASE_URL": "mysql://u@h/db"}, "database_url: Value error, unsupported database"),
    ({"AGENTD_GRACE_PERIOD_S": "-1"}, "grace_period_s"),
    ({"AGENTD_PROVIDERS": "not json"}, "AGENTD_PROVIDERS must be JSON"),
    ({"AGENTD_PROVIDERS": '[{"id": "p", "type": "magic"}]'}, "providers.0.type"),
    ({"AGENTD_CONFIG": "/nonexistent/agentd.yaml"}, "cannot read config file"),
])
def test_bad_settings_stop_the_start_with_their_name(environ, needle):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert needle in str(caught.value)


def test_unknown_yaml_key_is_named(tmp_path: Path):
    config = tmp_path / "agentd.yaml"
    config.write_text("grpc_addr: 127.0.0.1:1\ndatabse_url: x\n")
    with pytest.raises(ConfigError, match="databse_url: Extra inputs are not permitted"):
        load_settings(config, environ={})


def test_yaml_must_be_a_mapping(tmp_path: Path):
    config = tmp_path / "agentd.yaml"
    config.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(config, environ={})


@pytest.mark.parametrize("environ, needle", [
    ({"AGENTD_DATABASE_URL": "sqlite:///:memory:"}, "in-memory SQLite database is not supported"),
    ({"AGENTD_MAX_MESSAGE_BYTES": str(2**32)}, "max_message_bytes"),
    ({"AGENTD_PROVIDERS": '[{"id": "a", "type": "openai", "models": [{"id": "m"}]},'
                          ' {"id": "b", "type": "openai", "models": [{"id": "m"}]}]'},
     "model id 'm' is served by two providers"),
    ({"AGENTD_PROVIDERS": '[{"id": "a", "type": "openai"}, {"id": "a", "type": "local"}]'},
     "provider id 'a' is used twice"),
])
def test_settings_that_could_not_work_are_refused_at_load(environ, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(environ=environ)


def test_libpq_sslmode_is_translated_for_asyncpg():
    from agentd.database_url import normalize_url
    url = normalize_url("postgresql://u@db.example/agentd?sslmode=require")
    assert url.drivername == "postgresql+asyncpg" and dict(url.query) == {"ssl": "require"}


def test_ipv6_addresses_are_accepted():
    settings = load_settings(environ={"AGENTD_HTTP_ADDR": "[::1]:8321", "AGENTD_GRPC_ADDR": "[::1]:50051"})
    assert (settings.http_addr, settings.grpc_addr) == ("[::1]:8321", "[::1]:50051")


def test_shields_and_toolgroups_from_yaml_and_env(tmp_path: Path):
    config = tmp_path / "agentd.yaml"
    config.write_text("shields:\n  - {id: llama-guard, provider_id: llama-guard, params: {t: 1}}\n"
                      "toolgroups:\n  - id: mcp::files\n    provider_id: model-context-protocol\n"
                      "    mcp_endpoint: http://h/sse\n"
                      "    tools: [{name: read_file, input_schema: {type: object}}]\n")
    from_yaml = load_settings(environ={"AGENTD_CONFIG": str(config)})
    assert from_yaml.shields[0].params == {"t": 1} and from_yaml.shields[0].provider_shield_id is None
    assert from_yaml.toolgroups[0].tools[0].input_schema == {"type": "object"}
    from_env = load_settings(environ={
        "AGENTD_CONFIG": str(config),
        "AGENTD_SHIELDS": '[{"id": "s", "provider_id": "p", "provider_shield_id": "ps"}]',
        "AGENTD_TOOLGROUPS": '[{"id": "builtin::websearch", "provider_id": "tavily"}]'})
    assert [s.provider_shield_id for s in from_env.shields] == ["ps"]
    assert [(g.id, g.tools) for g in from_env.toolgroups] == [("builtin::websearch", [])]
    assert load_settings(environ={}).shields == [] and load_settings(environ={}).toolgroups == []


@pytest.mark.parametrize("environ, needle", [
    ({"AGENTD_SHIELDS": "nope"}, "AGENTD_SHIELDS must be JSON (a list of shields)"),
    ({"AGENTD_TOOLGROUPS": "nope"}, "AGENTD_TOOLGROUPS must be JSON (a list of tool groups)"),
    ({"AGENTD_SHIELDS": '[{"id": "s"}]'}, "shields.0.provider_id"),
    ({"AGENTD_SHIELDS": '[{"id": "s", "provider_id": "p"}, {"id": "s", "provider_id": "q"}]'},
     "shield id 's' is used twice"),
    ({"AGENTD_TOOLGROUPS": '[{"id": "g", "provider_id": "p"}, {"id": "g", "provider_id": "p"}]'},
     "toolgroup id 'g' is used twice"),
    ({"AGENTD_TOOLGROUPS": '[{"id": "a", "provider_id": "p", "tools": [{"name": "t"}]},'
                           ' {"id": "b", "provider_id": "p", "tools": [{"name": "t"}]}]'},
     "tool name 't' is used twice"),
    ({"AGENTD_TOOLGROUPS": '[{"id": "g", "provider_id": "p", "tools": [{"name": "t", "typo": 1}]}]'},
     "toolgroups.0.tools.0.typo"),
])
def test_bad_shields_and_toolgroups_are_named(environ, needle):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert needle in str(caught.value)


def test_the_client_commands_variables_are_not_unknown_settings():
    settings = load_settings(environ={"AGENTD_ADDRESS": "127.0.0.1:1", "AGENTD_TOKEN": "t"})
    assert settings.grpc_addr == Settings().grpc_addr


def test_the_embedded_model_is_on_by_default_and_off_when_asked(tmp_path: Path):
    [local] = load_settings(environ={}).inference_providers
    assert (local.id, local.type, local.model_path, local.context_size, local.threads) == (
        "local", "local", None, 4096, 1)  # None: the packaged model
    for off in ("off", "OFF", " off "):
        assert load_settings(environ={"AGENTD_LOCAL_MODEL": off}).inference_providers == []
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    [local] = load_settings(environ={"AGENTD_LOCAL_MODEL": str(gguf), "AGENTD_LOCAL_CONTEXT_SIZE": "1024",
                                     "AGENTD_LOCAL_THREADS": "2"}).inference_providers
    assert (local.model_path, local.context_size, local.threads) == (str(gguf), 1024, 2)
    # A local provider configured in `providers` replaces the one the local_* settings describe.
    configured = load_settings(environ={"AGENTD_PROVIDERS": json.dumps(
        [{"id": "mine", "type": "local", "model_path": str(gguf), "models": [{"id": "tiny"}]}])})
    assert [p.id for p in configured.inference_providers] == ["mine"]


@pytest.mark.parametrize("environ, needle", [
    ({"AGENTD_LOCAL_MODEL": "/no/such/model.gguf"}, r"local_model: .*'/no/such/model.gguf' is not a file"),
    ({"AGENTD_LOCAL_CONTEXT_SIZE": "16"}, "local_context_size"),
    ({"AGENTD_LOCAL_THREADS": "0"}, "local_threads"),
    ({"AGENTD_PROVIDERS": '[{"id": "local", "type": "openai", "base_url": "http://h/v1"}]'},
     "served as provider 'local', which `providers` also names"),
    ({"AGENTD_PROVIDERS": '[{"id": "p", "type": "local", "model_path": "/no/such.gguf"}]'},
     "provider 'p': model_path '/no/such.gguf' is not a file"),
])
def test_embedded_model_settings_that_could_not_work_are_refused(environ, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(environ=environ)


def test_document_fetching_is_safe_by_default_and_each_field_has_a_variable(tmp_path: Path):
    defaults = load_settings(environ={}).documents
    assert (defaults.allow_private_urls, defaults.fetch_timeout_s) == (False, 10.0)
    assert defaults.max_bytes == 1048576
    config = tmp_path / "agentd.yaml"
    config.write_text("documents: {max_bytes: 2048, fetch_timeout_s: 3}\n")
    loaded = load_settings(config, environ={"AGENTD_DOCUMENTS_ALLOW_PRIVATE_URLS": "true"}).documents
    assert (loaded.allow_private_urls, loaded.fetch_timeout_s, loaded.max_bytes) == (True, 3.0, 2048)
    with pytest.raises(ConfigError, match=r"documents\.max_bytes"):
        load_settings(environ={"AGENTD_DOCUMENTS_MAX_BYTES": "0"})


def test_tool_deadline_and_run_lease_settings():
    defaults = load_settings(environ={})
    assert (defaults.tool_timeout_s, defaults.run_lease_s) == (60.0, 30.0)
    loaded = load_settings(environ={"AGENTD_TOOL_TIMEOUT_S": "5", "AGENTD_RUN_LEASE_S": "12"})
    assert (loaded.tool_timeout_s, loaded.run_lease_s) == (5.0, 12.0)
    for name in ("AGENTD_TOOL_TIMEOUT_S", "AGENTD_RUN_LEASE_S"):
        with pytest.raises(ConfigError, match=name.removeprefix("AGENTD_").lower()):
            load_settings(environ={name: "0"})
