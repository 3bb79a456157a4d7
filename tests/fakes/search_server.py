"""A fake web search API (Tavily's POST /search and Brave's GET /res/v1/web/search), scripted
per test, so agentd's own HTTP client and error handling run for real against the wire.

    with FakeSearchServer() as fake:                 # or the ``fake_search`` fixture
        fake.script(SearchReply(results=[Hit("T", "https://t.example", "text")]))
        ... agentd configured with websearch.base_url = fake.base_url ...
        assert fake.requests[0].body["query"] == "agentd"

Each search consumes the next scripted reply; with none left, one hit echoing the query
answers. It is a stdlib ThreadingHTTPServer on a background thread, like openai_server.py.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = ["FakeSearchServer", "Hit", "SearchReply", "SearchRequest", "fake_search"]

TAVILY_PATH = "/search"
BRAVE_PATH = "/res/v1/web/search"


@dataclass(frozen=True)
class Hit:
    title: str
    url: str
    content: str  # Tavily's "content", Brave's "description"
    score: float = 0.5


@dataclass(frozen=True)
class SearchReply:
    """One answer: the hits in the provider's shape, or an HTTP error status, or a raw body
    (e.g. not JSON), after `delay` seconds."""

    results: tuple[Hit, ...] | list[Hit] = ()
    status: int = 200
    body: bytes | None = None  # sent as is, in place of the results
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass
class SearchRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON or None


@dataclass
class FakeSearchServer:
    replies: deque[SearchReply] = field(default_factory=deque)
    requests: list[SearchRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def start(self) -> FakeSearchServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeSearchServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *replies: SearchReply) -> None:
        self.replies.extend(replies)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = SearchRequest(handler.command, url.path, parse_qs(url.query),
                                {k.lower(): v for k, v in handler.headers.items()}, body)
        self.requests.append(request)
        if (handler.command, url.path) not in (("POST", TAVILY_PATH), ("GET", BRAVE_PATH)):
            return self._send(handler, 404, b'{"detail": "not found"}')
        reply = self.replies.popleft() if self.replies else None
        if reply is None:
            query = (body or {}).get("query") if url.path == TAVILY_PATH else request.query.get("q", [""])[0]
            reply = SearchReply(results=[Hit(f"About {query}", "https://example.org/", f"{query} explained")])
        if reply.delay:
            self._stop.wait(reply.delay)
        if reply.drop:
            handler.close_connection = True
            handler.connection.close()
            return
        if reply.body is not None:
            return self._send(handler, reply.status, reply.body)
        if reply.status != 200:
            return self._send(handler, reply.status, json.dumps({"detail": {"error": "scripted"}}).encode())
        if url.path == TAVILY_PATH:
            answer: dict[str, Any] = {
                "query": body.get("query") if isinstance(body, dict) else None, "answer": None, "images": [],
                "response_time": 0.01, "results": [
                    {"title": h.title, "url": h.url, "content": h.content, "score": h.score,
                     "raw_content": None} for h in reply.results]}
        else:
            answer = {"type": "search", "query": {"original": request.query.get("q", [""])[0]}, "web": {
                "type": "search", "results": [
                    {"title": h.title, "url": h.url, "description": h.content, "type": "search_result"}
                    for h in reply.results]}}
        self._send(handler, 200, json.dumps(answer).encode())

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the client gave up (e.g. its timeout)


@pytest.fixture
def fake_search() -> Iterator[FakeSearchServer]:
    with FakeSearchServer() as fake:
        yield fake
