"""A turn's documents (engine/turns/documents.py) against a real agentd, the scripted fake
model, and a real local HTTP server for URL documents: what reaches the model, and every
refusal (INVALID_ARGUMENT naming the field, before the turn's first event)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import pytest_asyncio
from grpc_status import rpc_status

from agentd.app import Agentd
from agentd.config import DocumentsConfig
from agentd.v1 import agent_messages_pb2 as m
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import agents_pb2_grpc
from tests.conftest import details_of, make_settings
from tests.fakes.openai_server import Reply

IMAGE_ITEM = m.InterleavedContentItem(image=m.ImageContentItem())
BIG = b"x" * (DocumentsConfig().max_bytes + 1)
PAGES: dict[str, tuple[int, str, bytes]] = {  # path -> status, content type, body
    "/notes.txt": (200, "text/plain; charset=utf-8", "Notes: caf\u00e9.".encode()),
    "/data.json": (200, "application/json", b'{"answer": 42}'),
    "/missing": (404, "text/plain", b"not here"),
    "/big": (200, "text/plain", BIG),
}


# Every path the local page server was asked for, in order.
FETCHED: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        FETCHED.append(self.path)
        if self.path == "/slow":
            time.sleep(2)
            status, kind, body = 200, "text/plain", b"late"
        elif self.path == "/big-chunked":  # no Content-Length: the cap applies while reading
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(len(BIG) // 65536 + 1):
                try:
                    self.wfile.write(b"y" * 65536)
                except OSError:
                    return
            return
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/notes.txt")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            status, kind, body = PAGES.get(self.path, (404, "text/plain", b"no"))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()



@pytest.fixture
def documents_settings() -> dict:
    """The `documents` settings of the agentd under test: the local page server is on
    loopback, so most tests allow private addresses (off by default)."""
    return {"allow_private_urls": True}


@pytest_asyncio.fixture
async def agents(database_url, tmp_path, fake, documents_settings):
    settings = make_settings(
        database_url,
        tmp_path,
        providers=[
            {"id": "fake", "type": "openai", "base_url": fake.base_url, "models": [{"id": "test-model"}]}
        ],
        documents=documents_settings,
    )
    agentd = Agentd(settings)
    await agentd.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{agentd.grpc_port}") as channel:
            yield agents_pb2_grpc.AgentsServiceStub(channel)
    finally:
        await agentd.stop(0)


@pytest_asyncio.fixture
async def session(agents) -> tuple[str, str]:
    agent = await agents.CreateAgent(
        pb.CreateAgentRequest(agent_config=t.AgentConfig(model="test-model", instructions="Be brief."))
    )
    created = await agents.CreateSession(pb.CreateSessionRequest(agent_id=agent.agent_id, session_name="s"))
    return agent.agent_id, created.session_id


def user(text: str) -> m.TurnInputMessage:
    return m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(text=text)))


def doc(mime: str = "text/plain", **content) -> m.AgentDocument:
    return m.AgentDocument(content=m.AgentDocumentContent(**content), mime_type=mime)


def url(uri: str, mime: str = "text/plain") -> m.AgentDocument:
    return doc(mime, url=m.AgentURL(uri=uri))


def text_item(text: str) -> m.InterleavedContentItem:
    return m.InterleavedContentItem(text=m.TextContentItem(text=text))


async def turn_with(agents, session, *docs, messages=None) -> t.Turn:
    agent_id, session_id = session
    request = pb.CreateTurnRequest(
        agent_id=agent_id, session_id=session_id, messages=messages or [user("Read:")], documents=list(docs)
    )
    return (await agents.CreateTurn(request)).turn


async def refused(agents, session, *docs) -> tuple[grpc.StatusCode, list[str], str]:
    """The error of a streamed turn with these documents; asserts no event came first."""
    agent_id, session_id = session
    call = agents.StreamTurn(
        pb.StreamTurnRequest(
            agent_id=agent_id, session_id=session_id, messages=[user("x")], documents=list(docs)
        )
    )
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in call:
            events.append(response.event)
    assert events == []
    _, fields = details_of(rpc_status.from_call(caught.value))
    return caught.value.code(), fields, caught.value.details()


async def test_text_item_and_items_documents_reach_the_model(agents, session, fake):
    fake.script(Reply(text="ok"))
    turn = await turn_with(
        agents,
        session,
        doc(text="The sky is green."),
        doc("text/markdown", item=text_item("# Title")),
        doc("text/csv", items=m.InterleavedContentItemList(items=[text_item("a,b\n"), text_item("1,2")])),
    )
    expected = "Read:\nThe sky is green.\n# Title\na,b\n1,2"
    assert fake.chat_requests[0].body["messages"][-1] == {"role": "user", "content": expected}
    assert turn.input_messages[0].user.content.text == expected


@pytest.mark.parametrize("content, kept", [
    (m.InterleavedContent(text="Q"), m.InterleavedContent(text="Q\nD")),
    # One item or a list: the shape the client sent, the text added as an item (Llama Stack's).
    (m.InterleavedContent(item=text_item("Q")),
     m.InterleavedContent(items=m.InterleavedContentItemList(items=[text_item("Q"), text_item("\nD")]))),
    (m.InterleavedContent(items=m.InterleavedContentItemList(items=[text_item("Q")])),
     m.InterleavedContent(items=m.InterleavedContentItemList(items=[text_item("Q"), text_item("\nD")]))),
])
async def test_documents_keep_the_shape_of_the_message_they_join(agents, session, fake, content, kept):
    fake.script(Reply(text="ok"))
    message = m.TurnInputMessage(user=m.UserMessage(content=content))
    turn = await turn_with(agents, session, doc(text="D"), messages=[message])
    assert turn.input_messages[0].user.content == kept
    sent = fake.chat_requests[0].body["messages"][-1]["content"]
    assert sent == "Q\nD" or [part["text"] for part in sent] == ["Q", "\nD"]


async def test_json_and_yaml_documents(agents, session, fake):
    fake.script(Reply(text="ok"))
    await turn_with(
        agents,
        session,
        doc("application/json", text='{"a": 1}'),
        doc("application/yaml", text="b: 2"),
        doc("application/x-yaml; charset=utf-8", text="c: 3"),
    )
    assert fake.chat_requests[0].body["messages"][-1]["content"] == 'Read:\n{"a": 1}\nb: 2\nc: 3'


async def test_documents_go_to_the_last_user_message(agents, session, fake):
    fake.script(Reply(text="ok"))
    await turn_with(agents, session, doc(text="D"), messages=[user("first"), user("second")])
    sent = fake.chat_requests[0].body["messages"]
    assert [x["content"] for x in sent[-2:]] == ["first", "second\nD"]


async def test_url_documents_are_fetched(agents, session, fake, pages):
    fake.script(Reply(text="ok"))
    turn = await turn_with(
        agents,
        session,
        url(f"{pages}/notes.txt"),
        url(f"{pages}/data.json", "application/json"),
        url(f"{pages}/redirect"),
        url("data:text/plain;base64,aW5saW5l"),
        url("data:,plain%20data"),
    )
    expected = 'Read:\nNotes: caf\u00e9.\n{"answer": 42}\nNotes: caf\u00e9.\ninline\nplain data'
    assert fake.chat_requests[0].body["messages"][-1]["content"] == expected
    assert turn.input_messages[0].user.content.text == expected


@pytest.mark.parametrize(
    ("path", "words"),
    [("/missing", "HTTP 404"), ("/big", "over 1048576 bytes"), ("/big-chunked", "over 1048576 bytes")],
)
async def test_a_url_that_cannot_be_read_is_refused_before_the_turn(
    agents, session, fake, pages, path, words
):
    code, fields, details = await refused(agents, session, doc(text="fine"), url(pages + path))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents[1].content.url"])
    assert pages + path in details and words in details
    assert fake.chat_requests == []


@pytest.mark.parametrize("documents_settings", [{"allow_private_urls": True, "fetch_timeout_s": 0.3}])
async def test_a_slow_or_unreachable_url_is_refused(agents, session, fake, pages):
    started = time.monotonic()
    code, fields, details = await refused(agents, session, url(f"{pages}/slow"))
    assert time.monotonic() - started < 1.5  # cut at the setting, not when the page answers (2 s)
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents[0].content.url"])
    assert "took over 0.3 s" in details
    code, fields, details = await refused(agents, session, url(f"http://127.0.0.1:{unused_port()}/x"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents[0].content.url"])
    assert "ConnectError" in details
    assert fake.chat_requests == []


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (doc("application/pdf", text="x"), "documents[0].mime_type"),
        (doc("image/png", url=m.AgentURL(uri="http://127.0.0.1:1/x.png")), "documents[0].mime_type"),
        (doc("text/", text="x"), "documents[0].mime_type"),
        (url("file:///etc/passwd"), "documents[0].content.url"),
        (url("ftp://127.0.0.1/x"), "documents[0].content.url"),
        (url("data:image/png;base64,AAAA"), "documents[0].content.url"),
        (url("data:text/plain;base64,!!"), "documents[0].content.url"),
        (doc(item=IMAGE_ITEM), "documents[0].content.item"),
        (
            doc(items=m.InterleavedContentItemList(items=[text_item("a"), IMAGE_ITEM])),
            "documents[0].content.items[1]",
        ),
        (m.AgentDocument(mime_type="text/plain"), "documents[0].content"),
    ],
)
async def test_bad_documents_are_refused(agents, session, fake, document, field):
    code, fields, _ = await refused(agents, session, document)
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    assert fake.chat_requests == []


@pytest.mark.parametrize("documents_settings", [{}, {"allow_private_urls": True}])
@pytest.mark.parametrize("where", ["http://[::1", "http://example.com:abc/", "http://a..b/",
                                   f"http://{'a' * 64}.example/"])
async def test_a_malformed_url_is_refused(agents, session, fake, where):
    code, fields, details = await refused(agents, session, url(where))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents[0].content.url"])
    assert repr(where) in details
    assert fake.chat_requests == []


@pytest.mark.parametrize("documents_settings", [{}])
@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("10.1.2.3", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
    ],
)
async def test_by_default_a_url_to_a_non_public_address_is_refused_unfetched(
    agents, session, fake, pages, host, kind
):
    port = pages.rsplit(":", 1)[1]
    FETCHED.clear()
    where = f"http://{host}:{port}/notes.txt"
    code, fields, details = await refused(agents, session, doc(text="fine"), url(where))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents[1].content.url"])
    assert where in details and f"a {kind} address" in details and "documents.allow_private_urls" in details
    assert FETCHED == [] and fake.chat_requests == []


@pytest.mark.parametrize("documents_settings", [{"max_bytes": 10}])
async def test_the_size_limit_is_a_setting(agents, session, fake):
    code, fields, details = await refused(agents, session, url("data:," + "x" * 11))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["documents[0].content.url"])
    assert "over 10 bytes (setting documents.max_bytes)" in details
