"""Secrets (the `sensitive` option) never reach storage or logs: redact() makes the copy."""

from __future__ import annotations

from agentd import codec
from agentd.sensitive import redact
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import responses_pb2
from tests.unit.test_codec import TURN


def test_redact_clears_sensitive_fields_at_any_depth_in_a_copy():
    request = codec.parse({"model": "m", "input": "hi", "tools": [
        {"type": "mcp", "server_label": "docs", "server_url": "http://mcp", "authorization": "tok",
         "headers": {"X-Key": "secret"}}]}, responses_pb2.CreateResponseRequest)
    redacted = redact(request)
    mcp = redacted.tools[0].mcp
    assert (mcp.server_label, mcp.HasField("authorization"), dict(mcp.headers)) == ("docs", False, {})
    assert request.tools[0].mcp.authorization == "tok"  # the original keeps its secrets
    assert b"secret" not in redacted.SerializeToString() and b"tok" not in redacted.SerializeToString()

    turn = codec.parse({"messages": [{"role": "user", "content": "hi"}],
                        "provider_data": {"mcp_headers": {"http://mcp": {"Authorization": "Bearer x"}}}},
                       pb.CreateTurnRequest)
    assert dict(redact(turn).provider_data.mcp_headers) == {}
    assert redact(turn).messages[0].user.content.text == "hi"
    # A message with nothing sensitive in it is copied unchanged.
    assert redact(codec.parse(TURN, t.Turn)) == codec.parse(TURN, t.Turn)
