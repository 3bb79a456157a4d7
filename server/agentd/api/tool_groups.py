"""ToolGroupsService: the server-side tool groups configured under `toolgroups` and their
tools, in configuration order, with `builtin::websearch` only while web search has an API key
(tools/runtime.py: toolgroups_of)."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from agentd.config import Settings, ToolConfig, ToolGroupConfig
from agentd.errors import NotFound
from agentd.tools.runtime import toolgroups_of
from agentd.v1 import agent_messages_pb2, agent_resources_pb2, tool_groups_pb2_grpc
from agentd.v1 import tool_groups_pb2 as pb


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _parameter_type(schema: dict[str, Any]) -> str:
    """A JSON schema's type as one name ("string", ...); the first non-null of a list."""
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    return kind if isinstance(kind, str) else "string"


def parameters_of(input_schema: dict[str, Any] | None) -> list[agent_resources_pb2.AgentToolParameter]:
    """llama-stack-client 0.2's parameter list, derived from the JSON schema 0.3 reads, so
    one configured schema serves both generations."""
    if not input_schema:
        return []
    required = set(input_schema.get("required") or ())
    parameters = []
    for name, schema in (input_schema.get("properties") or {}).items():
        schema = schema if isinstance(schema, dict) else {}
        parameter = agent_resources_pb2.AgentToolParameter(
            name=name, parameter_type=_parameter_type(schema),
            description=schema.get("description", ""), required=name in required)
        if "default" in schema:
            parameter.default.MergeFrom(_value(schema["default"]))
        parameters.append(parameter)
    return parameters


def _value(value: Any) -> struct_pb2.Value:
    holder = _struct({"v": value})
    return holder.fields["v"]


def _tool(group: ToolGroupConfig, tool: ToolConfig) -> pb.Tool:
    message = pb.Tool(identifier=tool.name, name=tool.name, description=tool.description,
                      toolgroup_id=group.id, provider_id=group.provider_id,
                      provider_resource_id=tool.name, parameters=parameters_of(tool.input_schema),
                      metadata=_struct(tool.metadata))
    if tool.input_schema is not None:
        message.input_schema.CopyFrom(_struct(tool.input_schema))
    return message


def _group(group: ToolGroupConfig) -> pb.ToolGroup:
    message = pb.ToolGroup(identifier=group.id, provider_id=group.provider_id,
                           provider_resource_id=group.id, args=_struct(group.args))
    if group.mcp_endpoint:
        message.mcp_endpoint.CopyFrom(agent_messages_pb2.AgentURL(uri=group.mcp_endpoint))
    return message


class ToolGroupsServicer(tool_groups_pb2_grpc.ToolGroupsServiceServicer):
    def __init__(self, settings: Settings):
        # Built once: configuration does not change while the server runs.
        groups = toolgroups_of(settings)
        self._groups = {group.id: _group(group) for group in groups}
        self._tools_of = {group.id: [_tool(group, tool) for tool in group.tools] for group in groups}
        self._tools = {tool.name: tool for tools in self._tools_of.values() for tool in tools}

    async def ListToolGroups(self, request, context):
        return pb.ListToolGroupsResponse(data=list(self._groups.values()))

    async def GetToolGroup(self, request, context):
        group = self._groups.get(request.toolgroup_id)
        if group is None:
            raise NotFound("toolgroup", request.toolgroup_id)
        return pb.GetToolGroupResponse(toolgroup=group)

    async def ListTools(self, request, context):
        if not request.HasField("toolgroup_id") or not request.toolgroup_id:
            return pb.ListToolsResponse(data=list(self._tools.values()))
        tools = self._tools_of.get(request.toolgroup_id)
        if tools is None:
            raise NotFound("toolgroup", request.toolgroup_id)
        return pb.ListToolsResponse(data=tools)

    async def GetTool(self, request, context):
        tool = self._tools.get(request.tool_name)
        if tool is None:
            raise NotFound("tool", request.tool_name)
        return pb.GetToolResponse(tool=tool)
