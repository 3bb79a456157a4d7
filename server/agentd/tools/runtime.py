"""ConfiguredToolRuntime: the ToolRuntime over the tool groups configuration declares.

Which groups exist (`toolgroups_of`, what ToolGroupsService lists too): the configured
`toolgroups` in their order, and `builtin::websearch` when web search has an API key (where
`toolgroups` declares it, or last). Which ones agentd runs: only `builtin::websearch` so far;
a group of another provider (MCP is a later issue) is listed but resolving it is
FAILED_PRECONDITION TOOLGROUP_UNAVAILABLE naming that provider, as is web search without a key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from agentd.config import WEBSEARCH_GROUP, Settings, ToolGroupConfig
from agentd.errors import FailedPrecondition, InvalidArgument, NotFound
from agentd.tools.base import ResolvedTool, ServerTool
from agentd.tools.websearch import DEFAULT_PROVIDER_IDS, DEFAULT_TOOL, WebSearchTool

__all__ = ["ConfiguredToolRuntime", "toolgroups_of"]


def _websearch_group(settings: Settings) -> ToolGroupConfig:
    """builtin::websearch as configured, or the default declaration of the provider's tool."""
    for group in settings.toolgroups:
        if group.id == WEBSEARCH_GROUP:
            return group if group.tools else group.model_copy(update={"tools": [DEFAULT_TOOL]})
    return ToolGroupConfig(id=WEBSEARCH_GROUP, provider_id=DEFAULT_PROVIDER_IDS[settings.websearch.provider],
                           tools=[DEFAULT_TOOL])


def toolgroups_of(settings: Settings) -> list[ToolGroupConfig]:
    """The tool groups that exist here, in configuration order: builtin::websearch only with an
    API key (then with its web_search tool even when `toolgroups` does not declare it)."""
    groups = [g for g in settings.toolgroups if g.id != WEBSEARCH_GROUP]
    if settings.websearch.enabled:
        position = next((i for i, g in enumerate(settings.toolgroups) if g.id == WEBSEARCH_GROUP),
                        len(groups))
        groups.insert(position, _websearch_group(settings))
    return groups


class ConfiguredToolRuntime:
    """Resolves references to the configured tool groups into the tools agentd runs.

    `http_client_factory` makes the one httpx.AsyncClient the web search shares (created at the
    first search; `aclose()` closes it); the search's timeout is set per request.
    """

    def __init__(self, settings: Settings,
                 http_client_factory: Callable[[], httpx.AsyncClient] | None = None):
        self._http_client_factory = http_client_factory or httpx.AsyncClient
        self._http_client: httpx.AsyncClient | None = None
        self._groups = {g.id: g for g in toolgroups_of(settings)}
        # Why a group cannot be used here, by id; the others have their tools in _tools.
        self._unavailable: dict[str, str] = {}
        self._tools: dict[str, dict[str, ServerTool]] = {}
        websearch = settings.websearch
        if not websearch.enabled:
            self._groups.setdefault(WEBSEARCH_GROUP, _websearch_group(settings))
            self._unavailable[WEBSEARCH_GROUP] = (
                f"{WEBSEARCH_GROUP} needs a search API key: set AGENTD_WEBSEARCH_API_KEY "
                f"(or websearch.api_key; provider {websearch.provider}, see AGENTD_WEBSEARCH_PROVIDER)")
        for group in self._groups.values():
            if group.id in self._unavailable:
                continue
            if group.id == WEBSEARCH_GROUP:
                self._tools[group.id] = {tool.name: WebSearchTool(websearch, self._client, tool, group.id)
                                         for tool in group.tools}
            else:
                self._unavailable[group.id] = (
                    f"Tool group '{group.id}' is run by provider '{group.provider_id}', "
                    "which this agentd does not run yet")

    def resolve(self, references: list[tuple[str, dict[str, Any]]]) -> list[ResolvedTool]:
        """See ToolRuntime.resolve. A reference "group/tool" names one tool; the group's
        configured `args` and then the reference's are merged over the model's arguments. A
        tool named twice (say "g" and "g/t") is INVALID_ARGUMENT, as is the same tool name
        from two groups."""
        resolved: list[ResolvedTool] = []
        named_by: dict[str, str] = {}
        for reference, args in references:
            group, tools = self._lookup(reference)
            if group.id in self._unavailable:
                raise FailedPrecondition(
                    self._unavailable[group.id], reason="TOOLGROUP_UNAVAILABLE",
                    metadata={"toolgroup_id": group.id, "provider_id": group.provider_id})
            for name in tools:
                if name in named_by:
                    raise InvalidArgument("toolgroups", f"tool '{name}' is named twice "
                                          f"(by '{named_by[name]}' and '{reference}')")
                named_by[name] = reference
                resolved.append(ResolvedTool(self._tools[group.id][name], {**group.args, **args}))
        return resolved

    def _lookup(self, reference: str) -> tuple[ToolGroupConfig, list[str]]:
        """The group a reference names and the names of the tools it takes from it."""
        group = self._groups.get(reference)
        if group is not None:
            return group, [tool.name for tool in group.tools]
        group_id, slash, tool_name = reference.rpartition("/")
        group = self._groups.get(group_id) if slash else None
        if group is None:
            raise NotFound("toolgroup", group_id if slash else reference)
        if tool_name not in {tool.name for tool in group.tools}:
            raise NotFound("tool", reference)
        return group, [tool_name]

    def _client(self) -> httpx.AsyncClient:
        if self._http_client is None:
            self._http_client = self._http_client_factory()
        return self._http_client

    async def aclose(self) -> None:
        """Closes the HTTP client, if a search opened one."""
        client, self._http_client = self._http_client, None
        if client is not None:
            await client.aclose()
