"""ModelsService: the models configured under `providers`."""

from __future__ import annotations

import time

from google.protobuf import struct_pb2

from agentd.config import Settings
from agentd.errors import NotFound
from agentd.v1 import models_pb2 as pb
from agentd.v1 import models_pb2_grpc

_MODEL_TYPES = {"llm": pb.MODEL_TYPE_LLM, "embedding": pb.MODEL_TYPE_EMBEDDING}


class ModelsServicer(models_pb2_grpc.ModelsServiceServicer):
    def __init__(self, settings: Settings):
        created = int(time.time())
        self._models: dict[str, pb.Model] = {}
        for provider in settings.providers:
            for model in provider.models:
                metadata = struct_pb2.Struct()
                metadata.update(model.metadata)
                self._models[model.id] = pb.Model(
                    identifier=model.id, id=model.id, provider_id=provider.id,
                    provider_resource_id=model.provider_model_id or model.id,
                    model_type=_MODEL_TYPES[model.model_type], metadata=metadata,
                    created=created, owned_by=provider.id)

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(data=list(self._models.values()))

    async def GetModel(self, request, context):
        model = self._models.get(request.model_id)
        if model is None:
            raise NotFound("model", request.model_id)
        return pb.GetModelResponse(model=model)
