"""Configuration: one YAML file plus AGENTD_* environment variables, validated by pydantic.

Precedence: built-in defaults < the YAML file named by AGENTD_CONFIG (or --config) < AGENTD_*
variables. Every top-level setting has an environment variable: AGENTD_<NAME> in upper case
(AGENTD_GRPC_ADDR, AGENTD_DATABASE_URL, ...); structured settings (providers, models) take
JSON there (AGENTD_PROVIDERS, AGENTD_SHIELDS, AGENTD_TOOLGROUPS, AGENTD_WEBSEARCH,
AGENTD_DOCUMENTS), and each field of `websearch` and `documents` has its own variable too
(AGENTD_WEBSEARCH_API_KEY, AGENTD_DOCUMENTS_MAX_BYTES, ..., winning over the file and the
setting's JSON variable). An unknown key or variable,
or an invalid value, stops the start with a message
that names it: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agentd.database_url import normalize_url

ENV_PREFIX = "AGENTD_"
CONFIG_ENV = "AGENTD_CONFIG"
# The client commands' variables (`agentd chat`, `agentd agents list`, ...: agentd_client.cli):
# not server settings, but set in the same shells as `agentd serve`, so not unknown either.
CLIENT_ENV = frozenset({"AGENTD_ADDRESS", "AGENTD_TOKEN"})


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The embedded model's context window unless configured: SmolLM2 was trained on 8k; 4k keeps the
# KV cache small (about 90 MB for the 135M model) while holding a long conversation.
LOCAL_CONTEXT_SIZE = 4096


class ModelConfig(_Strict):
    """A model served by a provider."""

    id: str = Field(min_length=1, description="The id clients use (e.g. 'llama3.2:3b').")
    provider_model_id: str | None = Field(None, description="The provider's name; default: id.")
    model_type: Literal["llm", "embedding"] = "llm"
    metadata: dict[str, Any] = Field(default_factory=dict)


class ProviderConfig(_Strict):
    """An inference provider: any OpenAI-compatible endpoint, or the embedded local model."""

    id: str = Field(min_length=1)
    type: Literal["openai", "local"]
    base_url: str | None = Field(None, description="For type openai: e.g. http://127.0.0.1:8000/v1")
    api_key: str | None = None
    models: list[ModelConfig] = Field(
        default_factory=list, description="For type openai: none means ask the endpoint's /models at start. "
                                          "For type local: the ids the model is served under; none means "
                                          "the GGUF file's name.")
    model_path: str | None = Field(
        None, description="For type local: a GGUF file; none means the packaged SmolLM2-135M-Instruct.")
    context_size: int = Field(LOCAL_CONTEXT_SIZE, ge=256, le=131072,
                              description="For type local: the context window in tokens.")
    threads: int = Field(1, ge=1, le=256, description="For type local: CPU threads generating.")

    @model_validator(mode="after")
    def _local_model_file(self) -> ProviderConfig:
        if self.type == "local" and self.model_path is not None and not Path(self.model_path).is_file():
            raise ValueError(f"provider {self.id!r}: model_path {self.model_path!r} is not a file")
        return self


# The id of the provider that AGENTD_LOCAL_MODEL / _CONTEXT_SIZE / _THREADS describe, and the
# value of AGENTD_LOCAL_MODEL that turns it off.
SIMPLE_LOCAL_PROVIDER_ID = "local"
LOCAL_MODEL_OFF = "off"

# The id of the provider that AGENTD_OPENAI_BASE_URL / _API_KEY / _MODELS describe.
SIMPLE_OPENAI_PROVIDER_ID = "openai"


class ShieldConfig(_Strict):
    """A shield (safety check) that agents may name in input_shields / output_shields."""

    id: str = Field(min_length=1, description="The id clients use (e.g. 'llama-guard').")
    provider_id: str = Field(min_length=1, description="The provider that runs it.")
    provider_shield_id: str | None = Field(None, description="The provider's name; default: id.")
    params: dict[str, Any] = Field(default_factory=dict)


class ToolConfig(_Strict):
    """A tool of a tool group, as models see it."""

    name: str = Field(min_length=1)
    description: str = ""
    input_schema: dict[str, Any] | None = Field(
        None, description="JSON schema of the arguments object; default: no arguments.")
    metadata: dict[str, Any] = Field(default_factory=dict)


class ToolGroupConfig(_Strict):
    """A server-side tool group (e.g. 'builtin::websearch', an MCP server)."""

    id: str = Field(min_length=1, description="The id AgentConfig.toolgroups names.")
    provider_id: str = Field(min_length=1, description="The provider that runs its tools.")
    mcp_endpoint: str | None = Field(None, description="The MCP server's URL, for MCP groups.")
    args: dict[str, Any] = Field(default_factory=dict, description="Merged into every call.")
    tools: list[ToolConfig] = Field(default_factory=list)


# The tool group the web search provider runs, and its one tool.
WEBSEARCH_GROUP = "builtin::websearch"
WEBSEARCH_TOOL = "web_search"


class WebSearchConfig(_Strict):
    """The provider of `builtin::websearch`. Off until an API key is set: without one the group
    is not listed and naming it is FAILED_PRECONDITION, so nothing reaches the internet."""

    provider: Literal["tavily", "brave"] = "tavily"
    api_key: SecretStr | None = Field(None, description="The search API's key; none: web search is off.")
    base_url: str | None = Field(
        None, description="Default https://api.tavily.com (tavily), https://api.search.brave.com (brave).")
    timeout_s: float = Field(10.0, gt=0, le=300, description="One search's time limit.")
    max_results: int = Field(5, ge=1, le=20, description="Results asked for and shown to the model.")

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @property
    def enabled(self) -> bool:
        return self.api_key is not None


class DocumentsConfig(_Strict):
    """How a turn's http(s) document URLs are fetched (engine/turns/documents.py)."""

    allow_private_urls: bool = Field(
        False, description="Fetch URLs whose host is loopback, private, link-local, multicast or "
                           "unspecified; off: such a document is INVALID_ARGUMENT.")
    fetch_timeout_s: float = Field(10.0, gt=0, le=300,
                                   description="One document's fetch, redirects included.")
    max_bytes: int = Field(1024 * 1024, gt=0, le=64 * 1024 * 1024, description="One document's size limit.")


class Settings(_Strict):
    grpc_addr: str = Field("127.0.0.1:50051", description="host:port of the gRPC server.")
    http_addr: str = Field("127.0.0.1:8321", description="host:port of the HTTP gateway; '' disables it.")
    data_dir: Path = Field(Path("data"), description="Where the embedded database lives.")
    database_url: str | None = Field(
        None, description="Default sqlite:///<data_dir>/agentd.db; PostgreSQL: "
                          "postgresql://user@host/db (driven by asyncpg).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "asyncio" if sys.platform == "win32" else "uvloop",
        description="The asyncio event loop agentd runs on: uvloop (libuv; about 8 % less CPU per "
                    "turn, measured with bench/run.py) or the standard library's.")
    grace_period_s: float = Field(10.0, ge=0, description="How long SIGTERM lets running calls finish.")
    heartbeat_s: float = Field(
        15.0, gt=0, le=30, description="A stream silent this long gets a heartbeat event (turns and "
                                       "responses), so meshes and proxies keep it open; at most 30.")
    max_message_bytes: int = Field(8 * 1024 * 1024, gt=0, le=2**31 - 1,
                                   description="Largest request (gRPC message); larger REST bodies get "
                                               "413. Answers have no such bound.")
    providers: list[ProviderConfig] = Field(default_factory=list)
    # The simple case of one OpenAI-compatible endpoint, without JSON: it becomes the provider
    # "openai" next to those of `providers`.
    openai_base_url: str | None = Field(None, description="An OpenAI-compatible endpoint, e.g. "
                                                          "http://127.0.0.1:8000/v1.")
    openai_api_key: str | None = Field(None, description="Its API key; default none.")
    openai_models: list[str] | None = Field(
        None, description="Its model ids (comma-separated in the environment); default: ask its /models.")
    # The embedded model (provider "local"), on by default: the packaged SmolLM2-135M-Instruct.
    local_model: str | None = Field(
        None, description="A GGUF file to serve in-process, 'off', or none for the packaged model.")
    local_context_size: int = Field(LOCAL_CONTEXT_SIZE, ge=256, le=131072,
                                    description="The embedded model's context window in tokens.")
    local_threads: int = Field(1, ge=1, le=256, description="CPU threads the embedded model generates with.")
    shields: list[ShieldConfig] = Field(default_factory=list)
    toolgroups: list[ToolGroupConfig] = Field(default_factory=list)
    websearch: WebSearchConfig = Field(default_factory=WebSearchConfig)
    documents: DocumentsConfig = Field(default_factory=DocumentsConfig)
    run_lease_s: float = Field(
        30.0, gt=0, le=600,
        description="A replica renews the lease of the turns and responses it runs every third of "
                    "this; a turn left in_progress whose lease expired (its replica died) is marked "
                    "interrupted, a response failed (store=false: deleted), by any replica, at start and "
                    "while it runs. Longer than any pause of a replica.")
    tool_timeout_s: float = Field(
        60.0, gt=0, le=3600,
        description="A server-side tool call's time limit; one that does not answer in time is an error "
                    "result the model is told of, and the turn goes on.")

    @field_validator("grpc_addr", "http_addr")
    @classmethod
    def _host_port(cls, value: str, info) -> str:
        if value == "" and info.field_name == "http_addr":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected host:port, e.g. 127.0.0.1:50051")
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                normalize_url(value)
            except Exception as e:  # noqa: BLE001 - SQLAlchemy's URL errors are varied
                raise ValueError(str(e)) from None
        return value

    @field_validator("providers")
    @classmethod
    def _unique_ids(cls, providers: list[ProviderConfig]) -> list[ProviderConfig]:
        seen_providers, seen_models = set(), set()
        for provider in providers:
            if provider.id in seen_providers:
                raise ValueError(f"provider id {provider.id!r} is used twice")
            seen_providers.add(provider.id)
            for model in provider.models:
                if model.id in seen_models:
                    raise ValueError(f"model id {model.id!r} is served by two providers")
                seen_models.add(model.id)
        return providers

    @field_validator("openai_models", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",") if name.strip()]
            return names or None
        return value

    @model_validator(mode="after")
    def _simple_openai_provider(self) -> Settings:
        if self.openai_base_url is None:
            if self.openai_api_key is not None or self.openai_models is not None:
                raise ValueError("openai_api_key and openai_models need openai_base_url")
            return self
        if any(p.id == SIMPLE_OPENAI_PROVIDER_ID for p in self.providers):
            raise ValueError(f"openai_base_url describes provider {SIMPLE_OPENAI_PROVIDER_ID!r}, "
                             "which `providers` also names")
        configured = {m.id for p in self.providers for m in p.models}
        _no_duplicates("openai_models entry", self.openai_models or [])
        for model in self.openai_models or []:
            if model in configured:
                raise ValueError(f"model id {model!r} is served by two providers")
        return self

    @field_validator("local_model", mode="before")
    @classmethod
    def _local_model_file(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and value.strip().lower() == LOCAL_MODEL_OFF:
            return LOCAL_MODEL_OFF
        if isinstance(value, str) and not Path(value).is_file():
            raise ValueError(f"{value!r} is not a file (expected a GGUF model file, or 'off')")
        return value

    @model_validator(mode="after")
    def _local_provider_id(self) -> Settings:
        if self.local_provider is not None and any(p.id == SIMPLE_LOCAL_PROVIDER_ID for p in self.providers):
            raise ValueError(f"the embedded model is served as provider {SIMPLE_LOCAL_PROVIDER_ID!r}, which "
                             "`providers` also names; rename it or set local_model to 'off'")
        return self

    @property
    def local_provider(self) -> ProviderConfig | None:
        """The embedded model the local_* settings describe; None when it is off or when
        `providers` configures a local provider itself."""
        if self.local_model == LOCAL_MODEL_OFF or any(p.type == "local" for p in self.providers):
            return None
        return ProviderConfig(id=SIMPLE_LOCAL_PROVIDER_ID, type="local", model_path=self.local_model,
                              context_size=self.local_context_size, threads=self.local_threads)

    @property
    def inference_providers(self) -> list[ProviderConfig]:
        """`providers`, plus the one described by openai_base_url / _api_key / _models, plus the
        embedded model unless it is off."""
        providers = list(self.providers)
        if self.openai_base_url is not None:
            providers.append(ProviderConfig(
                id=SIMPLE_OPENAI_PROVIDER_ID, type="openai", base_url=self.openai_base_url,
                api_key=self.openai_api_key, models=[ModelConfig(id=m) for m in self.openai_models or []]))
        if (local := self.local_provider) is not None:
            providers.append(local)
        return providers

    @field_validator("shields")
    @classmethod
    def _unique_shields(cls, shields: list[ShieldConfig]) -> list[ShieldConfig]:
        _no_duplicates("shield id", [s.id for s in shields])
        return shields

    @field_validator("toolgroups")
    @classmethod
    def _unique_toolgroups(cls, groups: list[ToolGroupConfig]) -> list[ToolGroupConfig]:
        # Tools are looked up by name alone (GetTool), so a name may be in one group only.
        _no_duplicates("toolgroup id", [g.id for g in groups])
        _no_duplicates("tool name", [t.name for g in groups for t in g.tools])
        return groups

    @model_validator(mode="after")
    def _websearch_tools(self) -> Settings:
        # builtin::websearch is run by the web search provider: it has one tool, web_search, and
        # while it is on no other group may take that name (tools are looked up by name alone).
        for group in self.toolgroups:
            for tool in group.tools:
                if group.id == WEBSEARCH_GROUP and tool.name != WEBSEARCH_TOOL:
                    raise ValueError(f"toolgroups: {WEBSEARCH_GROUP} has one tool, {WEBSEARCH_TOOL!r}, "
                                     f"not {tool.name!r}")
                if group.id != WEBSEARCH_GROUP and tool.name == WEBSEARCH_TOOL and self.websearch.enabled:
                    raise ValueError(f"toolgroups: tool name {WEBSEARCH_TOOL!r} belongs to "
                                     f"{WEBSEARCH_GROUP}, not to {group.id!r}")
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'agentd.db'}"


def _no_duplicates(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} is used twice")
        seen.add(value)


# Structured settings: their environment variables hold JSON.
_JSON_SETTINGS = {"providers": "a list of providers", "shields": "a list of shields",
                  "toolgroups": "a list of tool groups", "websearch": "a web search object",
                  "documents": "a documents object"}
# Nested settings whose fields have variables of their own: AGENTD_WEBSEARCH_API_KEY, ...
_NESTED_SETTINGS: dict[str, type[BaseModel]] = {"websearch": WebSearchConfig, "documents": DocumentsConfig}


def _nested_field(key: str) -> tuple[str, str] | None:
    """("websearch", "api_key") for "websearch_api_key"; None for anything else."""
    for setting, model in _NESTED_SETTINGS.items():
        prefix = setting + "_"
        if key.startswith(prefix) and key[len(prefix):] in model.model_fields:
            return setting, key[len(prefix):]
    return None


def _known_variables() -> list[str]:
    names = [ENV_PREFIX + k.upper() for k in Settings.model_fields]
    names += [f"{ENV_PREFIX}{setting}_{f}".upper()
              for setting, model in _NESTED_SETTINGS.items() for f in model.model_fields]
    return names


def load_settings(config_path: str | os.PathLike | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Builds the settings from the YAML file and the environment. Raises ConfigError."""
    env = os.environ if environ is None else environ
    path = config_path or env.get(CONFIG_ENV)
    raw: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        raw.update(loaded or {})
    fields = Settings.model_fields
    nested: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or name in CLIENT_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in fields and (target := _nested_field(key)):
            nested.setdefault(target[0], {})[target[1]] = value
            continue
        if key not in fields:
            raise ConfigError(f"unknown setting {name} (known: {', '.join(_known_variables())})")
        if key in _JSON_SETTINGS:
            try:
                raw[key] = json.loads(value)
            except ValueError:
                raise ConfigError(f"{name} must be JSON ({_JSON_SETTINGS[key]})") from None
        else:
            raw[key] = value
    for setting, values in nested.items():
        # Field variables win over the file and the setting's JSON variable, field by field.
        base = raw.get(setting)
        raw[setting] = {**base, **values} if isinstance(base, dict) else values if base is None else base
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
