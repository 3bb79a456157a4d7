"""The interface between the loops and server-side tools.

A tool group declared in configuration (`toolgroups`, listed by ToolGroupsService) is run by a
provider (web search, later MCP). The turn loop asks the ToolRuntime to resolve the tool groups
an agent and a turn name (`"group"`, `"group/tool"` or `{name, args}`) into ServerTools, shows
the model their specs, and invokes the ones it calls, one `tool_execution` step per call.
Client tools (AgentConfig.client_tools) never come here: a call to one pauses the turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returns: text for the model, metadata kept with the step, and an error
    message when it failed (content then says so to the model)."""

    content: str
    metadata: dict[str, Any] = field(default_factory=dict)
    error_message: str | None = None


class ServerTool(Protocol):
    """One tool agentd runs. `name` is what the model calls; `description` and `parameters`
    (a JSON schema of the arguments object) are what the model is shown."""

    name: str
    description: str
    parameters: dict[str, Any]
    toolgroup_id: str

    async def invoke(self, arguments: dict[str, Any], *, session_id: str) -> ToolResult:
        """Runs the tool. `arguments` are the model's, with the tool group's `args` merged over
        them (the group's win, as Llama Stack documents and does not do); `session_id` is the
        calling turn's session, for tools that keep per-session state. Raises agentd errors
        (errors.py) only for failures the turn cannot continue from; a tool that merely failed
        returns a ToolResult with error_message."""
        ...


@dataclass(frozen=True, slots=True)
class ResolvedTool:
    """A server tool as one turn uses it: the tool and the group args to merge into calls (the
    group's configured `args`, then those of the turn's or agent's `{name, args}` reference)."""

    tool: ServerTool
    args: dict[str, Any] = field(default_factory=dict)

    async def invoke(self, arguments: dict[str, Any], *, session_id: str) -> ToolResult:
        """Calls the tool with the model's `arguments` and `args` merged over them (args win)."""
        return await self.tool.invoke({**arguments, **self.args}, session_id=session_id)


class ToolRuntime(Protocol):
    """Resolves tool group references into the tools a turn may call."""

    def resolve(self, references: list[tuple[str, dict[str, Any]]]) -> list[ResolvedTool]:
        """`references` are (name, args) pairs: "group" (every tool of the group) or
        "group/tool" (one), with the args of an {name, args} reference (else {}); the
        result is in reference order, each tool once. A tool reached twice (by "g" and "g/t",
        or by two groups) is InvalidArgument.
        Raises NotFound (TOOLGROUP_NOT_FOUND, TOOL_NOT_FOUND) for what configuration does not
        declare, and FailedPrecondition (reason TOOLGROUP_UNAVAILABLE) for a group whose
        provider is not usable here (e.g. web search without an API key)."""
        ...
