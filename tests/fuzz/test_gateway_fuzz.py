"""Fuzzing the HTTP gateway: for every route it serves, hostile requests (wrong types, nulls,
huge and deeply nested values, lone surrogates, bad escapes in the path and the query, random
bytes as the body) never get a 5xx (501 aside: RPCs in the contract that are not built yet),
are always answered in JSON in the route's error style, and leave the server serving.

The gateway runs in-process (httpx's ASGI transport) with the real servicers on a real SQLite
database, as agentd builds them; the test owns its event loop because hypothesis drives the
examples synchronously.
"""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.app import SERVICES, Agentd
from agentd.gateway.app import Gateway
from agentd.gateway.routes import routes_of
from agentd.v1.options_pb2 import ERROR_STYLE_LLAMA_STACK
from tests.conftest import make_settings
from tests.fuzz.strategies import ANY_JSON, DEEP, SURROGATES, TEXT, budget, message_json

MAX_BODY = 64 * 1024


class Served:
    """agentd's servicers behind an in-process gateway, on a loop of the test's own."""

    def __init__(self, tmp_path):
        self.loop = asyncio.new_event_loop()
        self.agentd = Agentd(make_settings(f"sqlite:///{tmp_path / 'fuzz.db'}", tmp_path))
        self.run(self.agentd.db.migrate())
        self.gateway = Gateway(routes_of(SERVICES), self.agentd.servicers, MAX_BODY)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.gateway),
                                        base_url="http://agentd")
        self.agent_id = self.session_id = ""
        self.fresh()

    def fresh(self) -> None:
        """An agent and a session for the paths to name (the fuzz of a delete route deletes them)."""
        config = {"model": "m", "instructions": "x"}
        agent = self.request("POST", "/v1alpha/agents", json={"agent_config": config})
        assert agent.status_code == 200, agent.text
        self.agent_id = agent.json()["agent_id"]
        session = self.request("POST", f"/v1alpha/agents/{self.agent_id}/session", json={"session_name": "s"})
        self.session_id = session.json()["session_id"]

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        return self.run(self.client.request(method, url, **kwargs))

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.agentd.db.close())
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("fuzz"))
    yield served
    served.close()


def _endpoints(gateway: Gateway):
    """One endpoint per (verb, template): a unary RPC and its streaming twin share a route."""
    seen = {}
    for endpoint in gateway.endpoints:
        seen.setdefault((endpoint.route.verb, endpoint.route.template), endpoint)
    return seen


ROUTES = sorted({(r.verb, r.template) for r in routes_of(SERVICES)})


def _quote(text: str) -> str:
    # Lone surrogates become the invalid UTF-8 bytes a hostile client would send (%ED%A0%80).
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


SEGMENT_TEXT = st.one_of(TEXT, SURROGATES).filter(lambda s: s not in ("", ".", ".."))
RAW_ESCAPES = st.sampled_from(["%ZZ", "%", "%e9", "%ED%A0%80", "%C0%80", "%00", "%FF%FE", "a%2Fb", "%25"])
BAD_BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b'{"a": "\\x"}', b'"\\ud800"', b'{"\\ud800": 1}', b"{", b"[]", b"null", b"1e999",
                     b'{"a": NaN}', b"\xff\xfe{\x00}\x00", b'{"agent_config": {"model": "\\udfff"}}',
                     b"[" * 5000 + b"]" * 5000, b'{"stream": true}', b'{"stream": "yes"}']),
)


@st.composite
def requests(draw, endpoint, served):
    """(url, body) for one route: its path with real, missing and hostile ids, its query
    parameters (and made-up ones) with hostile values, and a body of any kind."""
    route = endpoint.route
    path = route.template
    for name in route.variables:
        real = {"agent_id": [served.agent_id], "session_id": [served.session_id]}.get(name, [f"{name}_1"])
        value = draw(st.one_of(st.sampled_from(real), SEGMENT_TEXT.map(_quote), RAW_ESCAPES))
        path = re.sub(r"\{" + name + r"(=[^}]*)?\}", lambda _, value=value: value, path)
    names = sorted({*(endpoint.query.fields if endpoint.query else ()),
                    *(endpoint.query.cursors if endpoint.query else ()), "stream"})
    query = draw(st.lists(st.tuples(st.one_of(st.sampled_from(names), TEXT.map(_quote)),
                                    st.one_of(st.sampled_from(["1", "-1", "0", "true", "asc", "x"]),
                                              TEXT.map(_quote), RAW_ESCAPES)), max_size=3))
    url = path + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
    content = None
    if route.body:
        desc = endpoint.request_type.DESCRIPTOR
        shaped = st.one_of(message_json(desc, 0), message_json(desc, 1), message_json(desc, 2)).map(
            lambda v: json.dumps(v, ensure_ascii=True).encode())
        content = draw(st.one_of(shaped, ANY_JSON.map(lambda v: json.dumps(v).encode()),
                                 DEEP.map(lambda v: json.dumps(v).encode()), BAD_BODIES, st.none()))
    elif draw(st.booleans()):
        content = draw(BAD_BODIES)
    return url, content


def _check(response: httpx.Response, style: int) -> None:
    status = response.status_code
    assert status < 500 or status == 501, (status, response.text[:500])
    if status == 204:
        assert response.content == b""
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data: "):
                json.loads(line[6:])
        return
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    if status >= 400:
        if style == ERROR_STYLE_LLAMA_STACK:
            assert set(body) == {"detail"} and isinstance(body["detail"], str), body
        else:
            assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("verb, template", ROUTES, ids=[f"{v} {t}" for v, t in ROUTES])
def test_hostile_requests_never_get_a_5xx(served, verb, template):
    endpoint = _endpoints(served.gateway)[(verb, template)]
    served.fresh()

    @settings(max_examples=budget(50 if endpoint.route.body else 20))
    @given(request=requests(endpoint, served))
    def fuzz(request):
        url, content = request
        headers = {"content-type": "application/json"} if content is not None else {}
        _check(served.request(verb, url, content=content, headers=headers), endpoint.route.error_style)

    fuzz()
    served.fresh()  # still serving: well-formed calls work after the barrage


def test_lone_surrogates_are_400_naming_the_field(served):
    agent = served.request("POST", "/v1alpha/agents",
                           content=b'{"agent_config": {"model": "m", "instructions": "\\ud800"}}')
    assert agent.status_code == 400
    assert agent.json()["detail"].startswith("agent_config.instructions: invalid Unicode")
    session = served.request("POST", f"/v1alpha/agents/{served.agent_id}/session",
                             content=b'{"session_name": "a\\udfffb"}')
    assert session.status_code == 400 and session.json()["detail"].startswith("session_name: invalid Unicode")
    schema = served.request("POST", "/v1alpha/agents", content=json.dumps({"agent_config": {
        "model": "m", "instructions": "x",
        "client_tools": [{"name": "t", "input_schema": {"properties": {"\ud800": {}}}}]}}).encode())
    assert schema.status_code == 400
    assert schema.json()["detail"].startswith(
        "agent_config.client_tools[0].input_schema.properties.\\ud800: invalid Unicode")
    items = served.request("POST", "/v1/conversations/conv_1/items", content=json.dumps({"items": [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "\udc00"}]}]}).encode())
    assert items.status_code == 400
    assert items.json()["error"]["param"] == "items[0].content[0].text"
    metadata = served.request("POST", "/v1/conversations",
                              content=json.dumps({"metadata": {"\ud800": "v"}}).encode())
    assert metadata.status_code == 400 and metadata.json()["error"]["param"] == "metadata.\\ud800"
    value = served.request("POST", "/v1/conversations",
                           content=json.dumps({"metadata": {"k": "\ud800"}}).encode())
    assert value.status_code == 400 and value.json()["error"]["param"] == "metadata.k"
