"""OpenAI wire documents (tests/unit/fixtures/openai, shaped after the openai SDK's types)
go through the codec and come back unchanged: the Responses/Conversations contract can
express the OpenAI JSON exactly."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pydantic
import pytest
from google.protobuf import symbol_database

import agentd.v1.conversations_pb2  # registers the messages
import agentd.v1.responses_pb2  # noqa: F401
from agentd import codec
from agentd.v1 import options_pb2, response_events_pb2

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
INDEX = json.loads((FIXTURES / "index.json").read_text())


def _documents():
    for name, message in sorted(INDEX.items()):
        value = json.loads((FIXTURES / name).read_text())
        for i, document in enumerate(value if isinstance(value, list) else [value]):
            yield pytest.param(message, document, id=f"{name}[{i}]")


# agentd's own request fields that OpenAI's wire documents do not carry; unset, the codec
# writes them as null (as every optional field), which an OpenAI client never sees.
AGENTD_EXTENSIONS = {"agentd.v1.CreateConversationRequest": {"request_id"},
                     "agentd.v1.CreateConversationItemsRequest": {"request_id"}}


# The MCP tool's secrets are `sensitive`: read on input, never written (null on output).
SENSITIVE = {"mcp": ("headers", "authorization")}


def _without_secrets(value):
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    if not isinstance(value, dict):
        return value
    secret = SENSITIVE.get(value.get("type"), ())
    return {k: None if k in secret else _without_secrets(v) for k, v in value.items()}


@pytest.mark.parametrize("message_name, document", list(_documents()))
def test_round_trip(message_name, document):
    message_type = symbol_database.Default().GetSymbol(message_name)
    message = message_type()
    codec.from_json(document, message, strict=True)
    written = codec.to_json(message)
    for name in AGENTD_EXTENSIONS.get(message_name, ()):
        if name not in document:
            assert written.pop(name) is None
    assert written == _without_secrets(document)


def test_every_stream_event_type_is_covered():
    events = json.loads((FIXTURES / "response_stream_events.json").read_text())
    union = response_events_pb2.ResponseStreamEvent.DESCRIPTOR.oneofs_by_name["event"]
    tags = {f.GetOptions().Extensions[options_pb2.union_tag] or f.name for f in union.fields}
    assert tags == {e["type"] for e in events}


# The fixtures against the openai SDK's own models (pydantic, strict about types): the check
# that is not circular. The agentd-only heartbeat event is left out.
SDK_TYPES = {
    "agentd.v1.Response": "openai.types.responses:Response",
    "agentd.v1.ResponseStreamEvent": "openai.types.responses:ResponseStreamEvent",
    "agentd.v1.ListResponseInputItemsResponse": "openai.types.responses:ResponseItemList",
    "agentd.v1.Conversation": "openai.types.conversations:Conversation",
    "agentd.v1.DeleteConversationResponse": "openai.types.conversations:ConversationDeletedResource",
    "agentd.v1.ListConversationItemsResponse": "openai.types.conversations:ConversationItemList",
    "agentd.v1.CreateConversationItemsResponse": "openai.types.conversations:ConversationItemList",
    "agentd.v1.ResponseItem": "openai.types.conversations:ConversationItem",
}


def _sdk_documents():
    for name, document in (p.values for p in _documents()):
        if name in SDK_TYPES and document.get("type") != "response.heartbeat":
            yield pytest.param(SDK_TYPES[name], document, id=f"{name}:{document.get('type', '')}")


@pytest.mark.parametrize("sdk_type, document", list(_sdk_documents()))
def test_fixture_is_valid_for_the_openai_sdk(sdk_type, document):
    module, _, name = sdk_type.partition(":")
    adapter = pydantic.TypeAdapter(getattr(importlib.import_module(module), name))
    adapter.validate_python(document, strict=False)
