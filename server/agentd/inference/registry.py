"""The model registry: model id -> the provider that serves it, built once at start.

Providers come from `providers` plus the simple AGENTD_OPENAI_* and AGENTD_LOCAL_* variables
(Settings.inference_providers). An openai provider with no model list is asked for its
/models at start; if it cannot be reached agentd starts anyway, without its models, and says
so. A local provider loads its model at start: a configured file that does not load stops the
start; the packaged default, when its package is missing, is left out with a warning. A model
id served by two providers stops the start: which one answers must never be an accident of
ordering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError, NotFound
from agentd.inference.base import InferenceProvider
from agentd.inference.local_provider import LocalModelError, LocalModelProvider
from agentd.inference.openai_provider import OpenAIProvider

if TYPE_CHECKING:  # settings are read, never imported at run time: inference stays a leaf
    from agentd.config import ModelConfig, ProviderConfig, Settings

log = logging.getLogger("agentd.inference")

# How long start waits for an endpoint's /models before going on without its models.
DISCOVERY_TIMEOUT_S = 5.0


class RegistryError(Exception):
    """The providers cannot be served together (e.g. a model id served twice)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A served model, as ModelsService lists it."""

    id: str
    provider_id: str
    provider_model_id: str
    model_type: str = "llm"  # "llm" or "embedding"
    metadata: dict[str, Any] = field(default_factory=dict)
    created: int = 0


class ModelRegistry:
    """Built from the provider configs (no I/O); `await start()` asks the endpoints without a
    model list for theirs; `close()` closes every client."""

    def __init__(self, providers: Sequence[ProviderConfig], *,
                 discovery_timeout_s: float = DISCOVERY_TIMEOUT_S):
        self._created = int(time.time())
        self._discovery_timeout_s = discovery_timeout_s
        self._providers: dict[str, InferenceProvider] = {}
        self._models: dict[str, ModelInfo] = {}
        self._to_discover: list[tuple[str, OpenAIProvider]] = []
        self._to_load: list[tuple[ProviderConfig, LocalModelProvider]] = []
        self._problems: list[str] = []
        for config in providers:
            if config.type == "local":
                local = LocalModelProvider(config.id, config.model_path, context_size=config.context_size,
                                           threads=config.threads)
                self._to_load.append((config, local))
                continue
            if not config.base_url:
                self._problems.append(f"provider {config.id!r} of type openai needs a base_url")
                continue
            provider = OpenAIProvider(config.id, config.base_url, config.api_key)
            self._providers[config.id] = provider
            if not config.models:
                self._to_discover.append((config.id, provider))
            for model in config.models:
                self._add(self._configured(config.id, model))

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ModelRegistry:
        return cls(settings.inference_providers, **kwargs)

    async def start(self) -> None:
        """Asks each openai provider configured without models for its /models and loads the
        local models, all at once. Raises RegistryError if a provider cannot be served or a
        model id is served twice."""
        if self._problems:
            raise RegistryError("; ".join(self._problems))
        loading = asyncio.gather(*(self._load(config, local) for config, local in self._to_load))
        found = await asyncio.gather(*(self._discover(pid, p) for pid, p in self._to_discover))
        loaded = await loading
        for (provider_id, _), names in zip(self._to_discover, found, strict=True):
            for name in names:
                self._add(ModelInfo(id=name, provider_id=provider_id, provider_model_id=name,
                                    created=self._created))
        for (config, local), ok in zip(self._to_load, loaded, strict=True):
            if not ok:
                continue
            self._providers[config.id] = local
            for model in config.models:
                self._add(self._configured(config.id, model))
            if not config.models:
                self._add(ModelInfo(id=local.default_model_id, provider_id=config.id,
                                    provider_model_id=local.default_model_id, created=self._created))
        self._to_discover, self._to_load = [], []

    def _configured(self, provider_id: str, model: ModelConfig) -> ModelInfo:
        return ModelInfo(id=model.id, provider_id=provider_id,
                         provider_model_id=model.provider_model_id or model.id,
                         model_type=model.model_type, metadata=dict(model.metadata), created=self._created)

    async def _load(self, config: ProviderConfig, local: LocalModelProvider) -> bool:
        """Loads a local model; False (with a warning) if the packaged default is not installed."""
        try:
            await local.start()
        except LocalModelError as e:
            if config.model_path is not None:
                raise RegistryError(f"provider {config.id!r}: {e}") from None
            log.warning("provider %r: %s; starting without it", config.id, e)
            return False
        return True

    async def _discover(self, provider_id: str, provider: OpenAIProvider) -> list[str]:
        try:
            names = await provider.list_models(timeout_s=self._discovery_timeout_s)
        except AgentdError as e:
            log.warning("provider %r: cannot list the models of %s (%s); starting without its models",
                        provider_id, provider.base_url, e.message)
            return []
        log.info("provider %r serves %d model(s) from %s: %s", provider_id, len(names), provider.base_url,
                 ", ".join(names) or "none")
        return names

    def _add(self, model: ModelInfo) -> None:
        other = self._models.get(model.id)
        if other is not None:
            raise RegistryError(f"model id {model.id!r} is served by two providers "
                                f"({other.provider_id!r} and {model.provider_id!r})")
        self._models[model.id] = model
        provider = self._providers[model.provider_id]
        if isinstance(provider, OpenAIProvider):
            provider.serve(model.id, model.provider_model_id)

    def models(self) -> list[ModelInfo]:
        """Every served model, in configuration order."""
        return list(self._models.values())

    def model(self, model_id: str) -> ModelInfo:
        """The model; NOT_FOUND (MODEL_NOT_FOUND) if no provider serves it."""
        model = self._models.get(model_id)
        if model is None:
            raise NotFound("model", model_id)
        return model

    def provider_for(self, model_id: str) -> InferenceProvider:
        """The provider serving the model; NOT_FOUND (MODEL_NOT_FOUND) for unknown ids."""
        return self._providers[self.model(model_id).provider_id]

    async def close(self) -> None:
        # Local models whose start was cut short (a failed start) are freed too.
        providers = {*self._providers.values(), *(local for _, local in self._to_load)}
        await asyncio.gather(*(p.close() for p in providers), return_exceptions=True)
