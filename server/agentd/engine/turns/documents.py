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

An http(s) URL is fetched with a GET (redirects followed) within `fetch_timeout_s` in all and
at most `max_bytes` of body (settings `documents`, config.DocumentsConfig: 10 s and 1 MiB by
default). Unless `allow_private_urls`, only public addresses are fetched: a host
that is, or resolves to, a loopback, private, link-local, multicast or unspecified address
is refused, for every redirect too, and the connection goes to the very address checked
(tools/public_http.py), so the caller cannot reach agentd's own network through a document.
Every failure is INVALID_ARGUMENT naming the document's
field, with the URL in the message (reason INVALID_ARGUMENT: the errors.proto catalogue has no
finer one yet): the request names a document the service cannot read, which the caller
fixes by changing the request, not the service's state, so not FAILED_PRECONDITION. That
covers a refused address, a body (or a data: URL's text) over the size limit, a non-2xx
status, an unreachable host, a timeout and a bad redirect.

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

from agentd.config import DocumentsConfig
from agentd.engine.turns.history import text_of
from agentd.errors import InvalidArgument
from agentd.tools.public_http import RefusedAddress, http_client
from agentd.v1 import agent_messages_pb2 as msg

TEXT_MIME_TYPES = ("application/json", "application/yaml", "application/x-yaml")
DEFAULT_FETCHING = DocumentsConfig()


def is_text_type(mime: str) -> bool:
    base = mime.split(";", 1)[0].strip().lower()
    return (base.startswith("text/") and len(base) > len("text/")) or base in TEXT_MIME_TYPES


async def with_documents(
    messages: Sequence[msg.TurnInputMessage],
    documents: Sequence[msg.AgentDocument],
    fetching: DocumentsConfig = DEFAULT_FETCHING,
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
    reads = (_text(i, d, fetching) for i, d in enumerate(documents))
    texts = await asyncio.gather(*reads, return_exceptions=True)
    for text in texts:  # the first failing document, by index
        if isinstance(text, BaseException):
            raise text
    added = "\n" + "\n".join(texts)
    last = users[-1]
    kind = last.content.WhichOneof("content")
    if kind == "items":
        last.content.items.items.add().text.text = added
    elif kind == "item":  # the item, then the text, as Llama Stack shapes it
        items = [last.content.item, msg.InterleavedContentItem(text=msg.TextContentItem(text=added))]
        last.content.CopyFrom(msg.InterleavedContent(items=msg.InterleavedContentItemList(items=items)))
    else:
        last.content.CopyFrom(msg.InterleavedContent(text=text_of(last.content) + added))
    return result


async def _text(i: int, document: msg.AgentDocument, fetching: DocumentsConfig) -> str:
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
        return await _read_url(f"{where}.url", content.url.uri, fetching)
    raise InvalidArgument(where, "required: text, item, items or url")


def _item_text(where: str, item: msg.InterleavedContentItem) -> str:
    if not item.HasField("text"):
        raise InvalidArgument(where, "only text items can be documents")
    return item.text.text


async def _read_url(where: str, uri: str, fetching: DocumentsConfig) -> str:
    try:
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
    except ValueError as e:  # e.g. "http://[::1"
        raise _not_a_url(where, uri, e) from None
    if scheme == "data":
        return _data_url(where, uri, fetching.max_bytes)
    if scheme not in ("http", "https"):
        raise InvalidArgument(where, f"unsupported URL {uri!r}: http(s) or a text data: URL")
    try:
        async with asyncio.timeout(fetching.fetch_timeout_s):
            return await _fetch(where, uri, fetching)
    except TimeoutError:
        raise InvalidArgument(where, f"fetching {uri!r} took over {fetching.fetch_timeout_s:g} s") from None
    except RefusedAddress as e:
        raise InvalidArgument(
            where,
            f"{uri!r} is not fetched: {e}; documents are fetched from public addresses only "
            "(setting documents.allow_private_urls)",
        ) from None
    except httpx.HTTPError as e:
        raise InvalidArgument(where, f"fetching {uri!r} failed: {type(e).__name__}: {e}") from None
    except (httpx.InvalidURL, ValueError) as e:  # a bad port; a host name IDNA refuses (UnicodeError)
        raise _not_a_url(where, uri, e) from None


def _not_a_url(where: str, uri: str, error: Exception) -> InvalidArgument:
    return InvalidArgument(where, f"{uri!r} is not a valid URL: {error}")


async def _fetch(where: str, uri: str, fetching: DocumentsConfig) -> str:
    client = http_client(
        allow_private=fetching.allow_private_urls, timeout=fetching.fetch_timeout_s, follow_redirects=True
    )
    async with client, client.stream("GET", uri) as response:
        if not response.is_success:
            raise InvalidArgument(where, f"fetching {uri!r} failed: HTTP {response.status_code}")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > fetching.max_bytes:
            raise _too_large(where, uri, fetching.max_bytes)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > fetching.max_bytes:
                raise _too_large(where, uri, fetching.max_bytes)
        return bytes(body).decode(response.charset_encoding or "utf-8", errors="replace")


def _data_url(where: str, uri: str, max_bytes: int) -> str:
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
    if len(raw) > max_bytes:
        raise _too_large(where, "data: URL", max_bytes)
    return raw.decode("utf-8", errors="replace")


def _too_large(where: str, what: str, max_bytes: int) -> InvalidArgument:
    return InvalidArgument(where, f"{what!r} is over {max_bytes} bytes (setting documents.max_bytes)")
