"""ModelsService: the models of the inference registry (configured, or listed by the
endpoints at start), in both the Llama Stack and the OpenAI shape."""

from __future__ import annotations

from google.protobuf import struct_pb2

from agentd.inference import ModelInfo, ModelRegistry
from agentd.v1 import models_pb2 as pb
from agentd.v1 import models_pb2_grpc

_MODEL_TYPES = {"llm": pb.MODEL_TYPE_LLM, "embedding": pb.MODEL_TYPE_EMBEDDING}


def _model(info: ModelInfo) -> pb.Model:
    metadata = struct_pb2.Struct()
    metadata.update(info.metadata)
    return pb.Model(identifier=info.id, id=info.id, provider_id=info.provider_id,
                    provider_resource_id=info.provider_model_id,
                    model_type=_MODEL_TYPES.get(info.model_type, pb.MODEL_TYPE_LLM), metadata=metadata,
                    created=info.created, owned_by=info.provider_id)


class ModelsServicer(models_pb2_grpc.ModelsServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    async def ListModels(self, request, context):
        # Read at each call: the registry completes its list at start (discovery).
        return pb.ListModelsResponse(data=[_model(m) for m in self._registry.models()])

    async def GetModel(self, request, context):
        return pb.GetModelResponse(model=_model(self._registry.model(request.model_id)))
