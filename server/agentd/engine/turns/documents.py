"""A turn's documents (CreateTurnRequest.documents), inlined into its last user message.

Each document is text: its mime_type must be text/*, application/json, application/yaml or
application/x-yaml (parameters such as `; charset=utf-8` allowed); anything else is
INVALID_ARGUMENT naming `documents[i].mime_type`. Its content (AgentDocumentContent) is one of

    text    the text itself
    item    a text item (an image item: INVALID_ARGUMENT)
    items   text items, concatenated (any image item: INVALID_ARGUMENT)
    url     http(s): fetched (below); data: with a text media type (or none: text/plain),
            plain or base64; any other scheme (file:, ftp:, ...) or a non-text data: URL
            is INVALID_ARGUMENT naming `documents[i].content.url`

An http(s) URL is fetched with a GET (redirects followed) within FETCH_TIMEOUT_S in all and
at most MAX_DOCUMENT_BYTES of body. Every failure is INVALID_ARGUMENT naming the document's
field, with the URL in the message (reason INVALID_ARGUMENT: the errors.proto catalogue has no
finer one yet): the request names a document the service cannot read, which the caller
fixes by changing the request, not the service's state, so not FAILED_PRECONDITION. That
covers a body (or a data: URL's text) over MAX_DOCUMENT_BYTES, a non-2xx status, an
unreachable host, a timeout and a bad redirect.

All documents are read (concurrently) before the turn is stored or started, so a failure
ends the call before its first event. Their texts are joined with newlines and appended,
after a newline, to the last user message of the turn's input (as text; to a list of items
as one more text item); a turn with documents and no user message is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
from collections.abc import Sequence

import httpx

from agentd.engine.turns.history import text_of
from agentd.errors import InvalidArgument
from agentd.v1 import agent_messages_pb2 as msg

TEXT_MIME_TYPES = ("application/json", "application/yaml", "application/x-yaml")
FETCH_TIMEOUT_S = 10.0
MAX_DOCUMENT_BYTES = 1024 * 1024


def is_text_type(mime: str) -> bool:
    base = mime.split(";", 1)[0].strip().lower()
    return (base.startswith("text/") and len(base) > len("text/")) or base in TEXT_MIME_TYPES


async def with_documents(
    messages: Sequence[msg.TurnInputMessage], documents: Sequence[msg.AgentDocument]
) -> list[msg.TurnInputMessage]:
    """Copies of `messages` with the documents' texts appended to the last user message."""
    result = [msg.TurnInputMessage() for _ in messages]
    for copy, original in zip(result, messages, strict=True):
        copy.CopyFrom(original)
    if not documents:
        return result
    for i, document in enumerate(documents):  # cheap checks first: nothing fetched for a bad request
        if not is_text_type(document.mime_type):
            raise InvalidArgument(
                f"documents[{i}].mime_type",
                f"unsupported document type {document.mime_type!r}: text/*, application/json or "
                "application/yaml",
            )
    users = [m.user for m in result if m.HasField("user")]
    if not users:
        raise InvalidArgument("documents", "documents need a user message to be added to")
    texts = await asyncio.gather(*(_text(i, d) for i, d in enumerate(documents)), return_exceptions=True)
    for text in texts:  # the first failing document, by index
        if isinstance(text, BaseException):
            raise text
    added = "\n" + "\n".join(texts)
    last = users[-1]
    if last.content.WhichOneof("content") == "items":
        last.content.items.items.add().text.text = added
    else:
        last.content.CopyFrom(msg.InterleavedContent(text=text_of(last.content) + added))
    return result


async def _text(i: int, document: msg.AgentDocument) -> str:
    where = f"documents[{i}].content"
    content = document.content
    kind = content.WhichOneof("content")
    if kind == "text":
        return content.text
    if kind == "item":
        return _item_text(f"{where}.item", content.item)
    if kind == "items":
        return "".join(_item_text(f"{where}.items[{j}]", it) for j, it in enumerate(content.items.items))
    if kind == "url":
        return await _read_url(f"{where}.url", content.url.uri)
    raise InvalidArgument(where, "required: text, item, items or url")


def _item_text(where: str, item: msg.InterleavedContentItem) -> str:
    if not item.HasField("text"):
        raise InvalidArgument(where, "only text items can be documents")
    return item.text.text


async def _read_url(where: str, uri: str) -> str:
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme == "data":
        return _data_url(where, uri)
    if scheme not in ("http", "https"):
        raise InvalidArgument(where, f"unsupported URL {uri!r}: http(s) or a text data: URL")
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            return await _fetch(where, uri)
    except TimeoutError:
        raise InvalidArgument(
            where, f"fetching {uri!r} took over {FETCH_TIMEOUT_S:g} s"
        ) from None
    except httpx.HTTPError as e:
        raise InvalidArgument(
            where, f"fetching {uri!r} failed: {type(e).__name__}: {e}"
        ) from None


async def _fetch(where: str, uri: str) -> str:
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True) as client:
        async with client.stream("GET", uri) as response:
            if not response.is_success:
                raise InvalidArgument(
                    where, f"fetching {uri!r} failed: HTTP {response.status_code}"
                )
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_DOCUMENT_BYTES:
                raise _too_large(where, uri)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise _too_large(where, uri)
            return bytes(body).decode(response.charset_encoding or "utf-8", errors="replace")


def _data_url(where: str, uri: str) -> str:
    header, comma, data = uri[len("data:"):].partition(",")
    if not comma:
        raise InvalidArgument(where, "malformed data: URL")
    params = [p.strip() for p in header.split(";")]
    encoded = "base64" in (p.lower() for p in params[1:])
    mime = ";".join(p for p in params if p.lower() != "base64") or "text/plain"
    if mime.startswith(";"):  # data:;charset=...,text
        mime = "text/plain" + mime
    if not is_text_type(mime):
        raise InvalidArgument(where, f"unsupported data: URL type {mime!r}: text only")
    try:
        raw = base64.b64decode(data, validate=True) if encoded else urllib.parse.unquote_to_bytes(data)
    except (binascii.Error, ValueError):
        raise InvalidArgument(where, "malformed base64 in data: URL") from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise _too_large(where, "data: URL")
    return raw.decode("utf-8", errors="replace")


def _too_large(where: str, what: str) -> InvalidArgument:
    return InvalidArgument(
        where, f"{what!r} is over {MAX_DOCUMENT_BYTES} bytes (the documents limit)"
    )
