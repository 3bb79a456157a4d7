"""Inference: one provider-neutral chat interface, its OpenAI-compatible provider, and the
registry (model id -> provider) that the turn and response loops and ModelsService share.

Imports only the foundation (errors) and agentd.v1 protos, never engine/, api/ or gateway/.
"""

from agentd.inference.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ImageURL,
    InferenceProvider,
    Sampling,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
    response_format_from,
    sampling_from,
)
from agentd.inference.registry import ModelInfo, ModelRegistry

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ImageURL",
    "InferenceProvider",
    "ModelInfo",
    "ModelRegistry",
    "Sampling",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Usage",
    "response_format_from",
    "sampling_from",
]
