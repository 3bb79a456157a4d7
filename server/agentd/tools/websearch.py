"""`builtin::websearch`: the `web_search` tool over Tavily's or Brave's HTTP search API.

Off unless `websearch.api_key` is set (settings or AGENTD_WEBSEARCH_API_KEY). A failed search
(refused, timed out, 4xx/5xx, an answer that is not the expected JSON) is a ToolResult with
error_message, so the model is told and the turn goes on; a rejected key (401/403) is also
logged as a warning, since only the operator can fix it.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import httpx

from agentd.config import WEBSEARCH_GROUP, WEBSEARCH_TOOL, ToolConfig, WebSearchConfig
from agentd.tools.base import ToolResult

log = logging.getLogger("agentd.tools.websearch")

DEFAULT_BASE_URLS = {"tavily": "https://api.tavily.com", "brave": "https://api.search.brave.com"}
# How the group is listed when `toolgroups` does not declare it (Llama Stack's provider ids).
DEFAULT_PROVIDER_IDS = {"tavily": "tavily-search", "brave": "brave-search"}
DEFAULT_TOOL = ToolConfig(
    name=WEBSEARCH_TOOL,
    description="Search the web for current information. Returns the top results as JSON: "
                "title, url and content of each.",
    input_schema={"type": "object", "required": ["query"],
                  "properties": {"query": {"type": "string", "description": "What to search for."}}})

_TAGS = re.compile(r"<[^>]+>")


class SearchFailed(Exception):
    """The search did not produce results; the message is what the model is told."""


def _text(value: Any) -> str:
    """A result field as plain text (Brave marks matches with <strong>, and escapes entities)."""
    return html.unescape(_TAGS.sub("", value)) if isinstance(value, str) else ""


class WebSearchTool:
    """The `web_search` tool: one search per call through a shared httpx.AsyncClient."""

    def __init__(self, config: WebSearchConfig, client: Callable[[], httpx.AsyncClient],
                 tool: ToolConfig = DEFAULT_TOOL, toolgroup_id: str = WEBSEARCH_GROUP):
        if config.api_key is None:
            raise ValueError("web search needs an API key")
        self.name = tool.name
        self.description = tool.description or DEFAULT_TOOL.description
        self.parameters = tool.input_schema or DEFAULT_TOOL.input_schema or {}
        self.toolgroup_id = toolgroup_id
        self._config = config
        self._key = config.api_key.get_secret_value()
        self._base_url = (config.base_url or DEFAULT_BASE_URLS[config.provider]).rstrip("/")
        self._client = client

    async def invoke(self, arguments: dict[str, Any], *, session_id: str) -> ToolResult:
        """Searches for arguments["query"]; `max_results` (an integer, e.g. from the group's
        args) may lower the configured number of results. `session_id` is not used."""
        query = arguments.get("query")
        metadata = {"query": query if isinstance(query, str) else "", "provider": self._config.provider}
        if not isinstance(query, str) or not query.strip():
            return _failed("web_search needs a non-empty 'query' string", metadata)
        limit = self._config.max_results
        asked = arguments.get("max_results")
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
            limit = min(limit, asked)
        try:
            results = await self._search(query, limit)
        except SearchFailed as e:
            return _failed(str(e), metadata)
        content = json.dumps(results[:limit], ensure_ascii=False, separators=(",", ":"))
        return ToolResult(content=content, metadata=metadata)

    async def _search(self, query: str, limit: int) -> list[dict[str, str]]:
        client = self._client()
        timeout = httpx.Timeout(self._config.timeout_s)
        if self._config.provider == "tavily":
            request = client.build_request(
                "POST", f"{self._base_url}/search", timeout=timeout,
                headers={"Authorization": f"Bearer {self._key}"},
                json={"query": query, "max_results": limit})
        else:
            request = client.build_request(
                "GET", f"{self._base_url}/res/v1/web/search", timeout=timeout,
                params={"q": query, "count": limit},
                headers={"X-Subscription-Token": self._key, "Accept": "application/json"})
        try:
            response = await client.send(request)
        except httpx.TimeoutException:
            raise SearchFailed(
                f"the search provider did not answer within {self._config.timeout_s:g}s") from None
        except httpx.HTTPError as e:
            raise SearchFailed(f"the search provider is unreachable ({type(e).__name__})") from None
        if response.status_code in (401, 403):
            log.warning("web search: %s rejected the API key (HTTP %d); check websearch.api_key",
                        self._config.provider, response.status_code)
            raise SearchFailed(f"the search provider rejected agentd's API key (HTTP {response.status_code})")
        if response.status_code != 200:
            raise SearchFailed(f"the search provider answered HTTP {response.status_code}")
        try:
            return self._results(response.json())
        except (ValueError, TypeError, AttributeError, KeyError):
            raise SearchFailed("the search provider's answer is not the expected JSON") from None

    def _results(self, answer: Any) -> list[dict[str, str]]:
        if not isinstance(answer, dict):
            raise TypeError("the answer is not an object")
        if self._config.provider == "tavily":
            items = answer["results"]
            content_key = "content"
        else:
            items = answer["web"]["results"] if "web" in answer else []  # no web results: none
            content_key = "description"
        if not isinstance(items, list):
            raise TypeError("results is not a list")
        return [{"title": _text(item.get("title")), "url": _text(item.get("url")),
                 "content": _text(item.get(content_key))} for item in items if isinstance(item, dict)]


def _failed(message: str, metadata: dict[str, Any]) -> ToolResult:
    log.info("web search failed: %s", message)
    return ToolResult(content=f"Web search failed: {message}.", metadata=metadata,
                      error_message=message)
