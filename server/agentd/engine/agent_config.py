"""Validation and normalization of an AgentConfig, applied once when an agent is created.

The stored config is the normalized one, so every later reader sees the same defaults:
tool_config always set (tool_choice "auto", system_message_behavior append), greedy sampling
when none is given, max_infer_iters 10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from agentd.errors import InvalidArgument
from agentd.v1 import agent_resources_pb2 as pb

DEFAULT_MAX_INFER_ITERS = 10
FIELD = "agent_config"


def normalize(config: pb.AgentConfig) -> pb.AgentConfig:
    cfg = pb.AgentConfig()
    cfg.CopyFrom(config)
    if not cfg.model.strip():
        raise InvalidArgument(f"{FIELD}.model", "required: the model the agent runs")
    _normalize_tool_config(cfg)
    _validate_sampling(cfg.sampling_params)
    if not cfg.HasField("max_infer_iters"):
        cfg.max_infer_iters = DEFAULT_MAX_INFER_ITERS
    elif cfg.max_infer_iters < 0:
        # 0 is taken and runs one inference, as in Llama Stack (clients written for it send 0).
        raise InvalidArgument(f"{FIELD}.max_infer_iters", "must be >= 0")
    _validate_tools(cfg)
    for name in ("input_shields", "output_shields"):
        for i, shield in enumerate(getattr(cfg, name)):
            if not shield:
                raise InvalidArgument(f"{FIELD}.{name}[{i}]", "must not be empty")
    return cfg


def _normalize_tool_config(cfg: pb.AgentConfig) -> None:
    deprecated_choice = cfg.tool_choice if cfg.HasField("tool_choice") else None
    deprecated_format = cfg.tool_prompt_format
    if cfg.HasField("tool_config"):
        # The deprecated fields may repeat tool_config, never contradict it.
        current = cfg.tool_config.tool_choice if cfg.tool_config.HasField("tool_choice") else "auto"
        if deprecated_choice and deprecated_choice != current:
            raise InvalidArgument(f"{FIELD}.tool_choice",
                                  "tool_choice is deprecated. Use tool_choice in tool_config instead.")
        if deprecated_format and deprecated_format != cfg.tool_config.tool_prompt_format:
            raise InvalidArgument(
                f"{FIELD}.tool_prompt_format",
                "tool_prompt_format is deprecated. Use tool_prompt_format in tool_config instead.")
    else:
        if deprecated_choice:
            cfg.tool_config.tool_choice = deprecated_choice
        cfg.tool_config.tool_prompt_format = deprecated_format
    if not cfg.tool_config.HasField("tool_choice") or not cfg.tool_config.tool_choice:
        cfg.tool_config.tool_choice = "auto"
    if not cfg.tool_config.system_message_behavior:
        cfg.tool_config.system_message_behavior = pb.SYSTEM_MESSAGE_BEHAVIOR_APPEND


def _validate_sampling(params: pb.SamplingParams) -> None:
    path = f"{FIELD}.sampling_params"
    strategy = params.strategy.WhichOneof("strategy")
    if strategy is None:
        params.strategy.greedy.SetInParent()
    elif strategy == "top_p":
        top_p = params.strategy.top_p
        if top_p.HasField("temperature") and not 0 < top_p.temperature < math.inf:  # nan too
            raise InvalidArgument(f"{path}.strategy.temperature", "must be a finite number > 0 "
                                                                  "(use greedy for 0)")
        if top_p.HasField("top_p") and not 0 < top_p.top_p <= 1:
            raise InvalidArgument(f"{path}.strategy.top_p", "must be in (0, 1]")
    elif strategy == "top_k" and params.strategy.top_k.top_k < 1:
        raise InvalidArgument(f"{path}.strategy.top_k", "must be >= 1")
    if params.HasField("repetition_penalty") and not math.isfinite(params.repetition_penalty):
        raise InvalidArgument(f"{path}.repetition_penalty", "must be a finite number")
    if params.HasField("max_tokens") and params.max_tokens < 0:
        raise InvalidArgument(f"{path}.max_tokens", "must be >= 0 (0: the provider's limit)")


def _validate_tools(cfg: pb.AgentConfig) -> None:
    names: set[str] = set()
    for i, tool in enumerate(cfg.client_tools):
        path = f"{FIELD}.client_tools[{i}]"
        if not tool.name:
            raise InvalidArgument(f"{path}.name", "required")
        if tool.name in names:
            raise InvalidArgument(f"{path}.name", f"duplicate tool name '{tool.name}'")
        names.add(tool.name)
        if tool.HasField("parameters") and not tool.HasField("input_schema"):
            # Either llama-stack-client 0.2's parameter list or an OpenAI-style JSON schema.
            if tool.parameters.WhichOneof("parameters") == "json_schema":
                tool.input_schema.CopyFrom(tool.parameters.json_schema)
            else:
                tool.input_schema.CopyFrom(_schema_from_parameters(tool.parameters.list.parameters))
    check_toolgroup_names(cfg.toolgroups, f"{FIELD}.toolgroups")


def check_toolgroup_names(groups: Sequence[pb.AgentToolGroup], field: str) -> None:
    """An agent's or a turn's tool groups: each names one (INVALID_ARGUMENT `field[i]`)."""
    for i, group in enumerate(groups):
        name = group.name if group.WhichOneof("toolgroup") == "name" else group.with_args.name
        if not name:
            raise InvalidArgument(f"{field}[{i}]", "a tool group needs a name")


# llama-stack-client 0.2's @client_tool names a parameter's type by its Python annotation's
# __name__ ("str", "list", ...); JSON Schema's own names are taken as they are.
_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
               "list": "array", "tuple": "array", "dict": "object", "NoneType": "null",
               **{name: name for name in ("string", "integer", "number", "boolean", "array", "object",
                                          "null")}}


def _schema_from_parameters(parameters) -> struct_pb2.Struct:
    """The JSON schema equivalent of llama-stack-client 0.2's ToolDef.parameters. A type with
    no JSON Schema name (a class of the client's) is left out: the parameter takes any value,
    rather than the model being sent a schema no server accepts."""
    properties: dict = {}
    required: list[str] = []
    for p in parameters:
        prop: dict = {}
        if json_type := _JSON_TYPES.get(p.parameter_type):
            prop["type"] = json_type
        if p.description:
            prop["description"] = p.description
        if p.HasField("default") and p.default.WhichOneof("kind") != "null_value":
            prop["default"] = MessageToDict(p.default)
        properties[p.name] = prop
        if not p.HasField("required") or p.required:
            required.append(p.name)
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": properties, "required": required})
    return schema
