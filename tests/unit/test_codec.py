"""The generic codec: legacy JSON shapes in and out, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest

from agentd import codec
from agentd.v1 import agent_messages_pb2 as messages
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import models_pb2, responses_pb2
from agentd.v1 import turn_events_pb2 as events

TURN = {
    "turn_id": "turn_1", "session_id": "sess_1",
    "input_messages": [
        {"role": "user", "content": "hello", "context": None},
        {"role": "tool", "call_id": "c1", "content": [{"type": "text", "text": "42"},
                                                      {"type": "image", "image": {"url": {"uri": "http://x/i.png"},
                                                                                  "data": None}}]},
    ],
    "steps": [
        {"step_type": "inference", "turn_id": "turn_1", "step_id": "step_1",
         "started_at": "2025-10-26T12:00:00.123456Z", "completed_at": "2025-10-26T12:00:01Z",
         "model_response": {"role": "assistant", "content": "",
                            "stop_reason": "end_of_message",
                            "tool_calls": [{"call_id": "c1", "tool_name": "calc",
                                            "arguments": "{\"x\": 1}"}]},
         "model": "m1", "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}},
        {"step_type": "tool_execution", "turn_id": "turn_1", "step_id": "step_2",
         "started_at": None, "completed_at": None,
         "tool_calls": [{"call_id": "c1", "tool_name": "calc", "arguments": "{}"}],
         "tool_responses": [{"call_id": "c1", "tool_name": "calc", "content": {"type": "text", "text": "1"},
                             "metadata": {"source": "https://example.com", "n": 2},
                             "error_message": None}]},
        {"step_type": "shield_call", "turn_id": "turn_1", "step_id": "step_3", "started_at": None,
         "completed_at": None,
         "violation": {"violation_level": "error", "user_message": "no", "metadata": {}},
         "touchpoint": "user-input", "shield_id": "llama-guard"},
    ],
    "output_message": {"role": "assistant", "content": "done", "stop_reason": "end_of_turn",
                       "tool_calls": []},
    "output_attachments": [{"content": {"uri": "http://x/a.txt"}, "mime_type": "text/plain"}],
    "started_at": "2025-10-26T12:00:00Z", "completed_at": None,
    "status": "completed", "stop_reason": "end_of_turn", "background": False,
}


def test_turn_round_trips_exactly():
    turn = codec.parse(TURN, t.Turn)
    assert turn.steps[1].tool_execution.tool_responses[0].metadata["n"] == 2
    assert turn.output_attachments[0].content.WhichOneof("content") == "url"
    assert turn.input_messages[1].tool.content.WhichOneof("content") == "items"
    assert codec.to_json(turn) == TURN


@pytest.mark.parametrize("content, member", [
    ("text", "text"),
    ({"type": "text", "text": "x"}, "item"),
    ([{"type": "text", "text": "x"}], "items"),
    ([], "items"),
])
def test_string_or_list_content_picks_the_member_by_json_kind(content, member):
    message = codec.parse({"role": "user", "content": content}, messages.TurnInputMessage)
    assert message.user.content.WhichOneof("content") == member
    assert codec.to_json(message)["content"] == content


def test_object_members_of_an_untagged_union_are_tried_in_order():
    url = codec.parse({"uri": "http://x"}, messages.AgentDocumentContent)
    item = codec.parse({"type": "text", "text": "x"}, messages.AgentDocumentContent)
    assert (url.WhichOneof("content"), item.WhichOneof("content")) == ("url", "item")


def test_stream_chunk_has_the_llama_stack_shape():
    event = events.TurnEvent(sequence_number=7, turn_id="turn_1", payload=events.TurnEventPayload(
        step_progress=events.StepProgressPayload(
            step_type=t.AGENT_STEP_TYPE_INFERENCE, step_id="s",
            delta=events.ContentDelta(tool_call=events.ToolCallDelta(
                tool_call=events.ToolCallOrString(
                    call=messages.AgentToolCall(call_id="c", tool_name="f", arguments="{}")),
                parse_status=events.TOOL_CALL_PARSE_STATUS_SUCCEEDED)))))
    assert codec.to_json(pb.StreamTurnResponse(event=event)) == {"event": {
        "payload": {"event_type": "step_progress", "step_type": "inference", "step_id": "s",
                    "delta": {"type": "tool_call", "parse_status": "succeeded",
                              "tool_call": {"call_id": "c", "tool_name": "f", "arguments": "{}"}}},
        "sequence_number": 7, "turn_id": "turn_1"}}


def test_empty_union_member_is_written_with_its_tag():
    strategy = t.SamplingStrategy(greedy=t.GreedySamplingStrategy())
    assert codec.to_json(strategy) == {"type": "greedy"}
    assert codec.parse({"type": "greedy"}, t.SamplingStrategy).WhichOneof("strategy") == "greedy"


def test_constants_grpc_only_int64_and_enums():
    model = models_pb2.Model(identifier="m", id="m", created=1_700_000_000_000,
                             model_type=models_pb2.MODEL_TYPE_LLM)
    out = codec.to_json(model)
    assert out["object"] == "model" and out["type"] == "model"
    assert out["created"] == 1_700_000_000_000  # a number, not proto3 JSON's string
    assert out["model_type"] == "llm"
    created = codec.to_json(pb.CreateAgentResponse(agent_id="a", agent=t.Agent(agent_id="a")))
    assert created == {"agent_id": "a"}
    assert codec.parse({"object": "model", "id": "x"}, models_pb2.Model).id == "x"  # constants ignored


def test_unset_optional_and_message_fields_are_null_and_read_back_as_unset():
    cfg = codec.parse({"model": "m", "instructions": "", "name": None, "response_format": None},
                      t.AgentConfig)
    assert not cfg.HasField("name") and not cfg.HasField("response_format")
    out = codec.to_json(cfg)
    assert out["name"] is None and out["response_format"] is None and out["max_infer_iters"] is None
    assert out["input_shields"] == []


def test_unknown_keys_are_ignored_like_fastapi_does():
    assert codec.parse({"model": "m", "instructions": "", "whatever": 1}, t.AgentConfig).model == "m"


def test_camel_case_keys_are_accepted_for_grpc_json_clients():
    assert codec.parse({"model": "m", "maxInferIters": 3}, t.AgentConfig).max_infer_iters == 3


@pytest.mark.parametrize("value, message_type, path, needle", [
    ({"model": 1}, t.AgentConfig, "model", "expected a string, got a number"),
    ({"max_infer_iters": "ten"}, t.AgentConfig, "max_infer_iters", "expected an integer"),
    ({"max_infer_iters": 2**40}, t.AgentConfig, "max_infer_iters", "out of range"),
    ({"input_shields": "x"}, t.AgentConfig, "input_shields", "expected an array"),
    ({"input_shields": [None]}, t.AgentConfig, "input_shields[0]", "null is not allowed"),
    ({"toolgroups": [5]}, t.AgentConfig, "toolgroups[0]", "expected a string or an object"),
    ({"tool_prompt_format": "yaml"}, t.AgentConfig, "tool_prompt_format", "expected one of"),
    ({"sampling_params": {"strategy": {}}}, t.AgentConfig, "sampling_params.strategy.type", "required"),
    ({"messages": [{"content": "x"}]}, pb.CreateTurnRequest, "messages[0].role", "required"),
    ({"started_at": "yesterday"}, t.Turn, "started_at", "RFC 3339"),
    ({"tool_calls": [{"call_id": 1}]}, messages.CompletionMessage, "tool_calls[0].call_id",
     "expected a string"),
    ({"image": "%%%"}, events.ImageDelta, "image", "base64"),
    ("x", t.AgentConfig, "", "expected an object"),
])
def test_bad_input_names_the_field(value, message_type, path, needle):
    with pytest.raises(codec.CodecError) as caught:
        codec.parse(value, message_type)
    assert caught.value.field == path
    assert needle in caught.value.description


def test_query_string_scalars():
    request = pb.GetSessionRequest()
    codec.read_scalar_field(request, "turn_ids", "t1", "turn_ids")
    codec.read_scalar_field(request, "turn_ids", "t2", "turn_ids")
    assert list(request.turn_ids) == ["t1", "t2"]
    page = pb.ListAgentsRequest()
    codec.read_scalar_field(page, "page_size", "20", "limit")
    assert page.page_size == 20
    with pytest.raises(codec.CodecError):
        codec.read_scalar_field(page, "page_size", "", "limit")


def test_free_form_json_keeps_whole_numbers_whole():
    args = {"k": 3, "ratio": 0.5, "big": 2**40, "nested": {"list": [1, 2.5, None, True, "x"]}}
    group = codec.parse({"name": "g", "args": args}, t.AgentToolGroupWithArgs)
    assert json.dumps(codec.to_json(group)["args"], sort_keys=True) == json.dumps(args, sort_keys=True)


@pytest.mark.parametrize("item, member", [
    ({"id": "msg_1"}, "item_reference"),
    ({"role": "user", "content": "hi"}, "message"),
    ({"role": "user", "id": "msg_1", "content": "hi"}, "message"),  # fallbacks are tried in order
    ({"content": "hi"}, "message"),  # no fallback key: union_default
    ({"type": "item_reference", "id": "msg_1"}, "item_reference"),
])
def test_union_fallbacks_pick_the_member_when_the_discriminator_is_absent(item, member):
    from agentd.v1 import response_items_pb2
    assert codec.parse(item, response_items_pb2.ResponseItem).WhichOneof("item") == member


def _mcp_tool():
    from agentd.v1 import response_tools_pb2
    return codec.parse({"server_label": "docs", "server_url": "http://mcp", "authorization": "tok",
                        "headers": {"X-Key": "secret"}}, response_tools_pb2.ResponseMcpTool)


def test_sensitive_fields_are_read_but_never_written():
    tool = _mcp_tool()
    assert tool.authorization == "tok" and dict(tool.headers) == {"X-Key": "secret"}
    out = codec.to_json(tool)
    assert out["authorization"] is None and out["headers"] is None
    assert out["server_label"] == "docs"
    assert "secret" not in json.dumps(out) and "tok" not in json.dumps(out)


def test_a_tool_call_in_llama_stack_0_2_json_has_its_arguments_as_an_object():
    call = messages.AgentToolCall(call_id="c1", tool_name="get_weather", arguments='{"city":"Paris"}')
    turn = t.Turn(turn_id="turn_1", output_message=messages.CompletionMessage(tool_calls=[call]))
    assert codec.to_json(call) == {"call_id": "c1", "tool_name": "get_weather",
                                   "arguments": '{"city":"Paris"}'}
    older = codec.to_json(turn, "llama_stack_0_2")["output_message"]["tool_calls"][0]
    assert older == {"call_id": "c1", "tool_name": "get_weather", "arguments": {"city": "Paris"},
                     "arguments_json": '{"city":"Paris"}'}
    # The rest of the message is the same JSON in either dialect.
    current, written = codec.to_json(turn), codec.to_json(turn, "llama_stack_0_2")
    for json_of in (current, written):
        del json_of["output_message"]["tool_calls"]
    assert written == current


@pytest.mark.parametrize("arguments", ["", "not json", "[1, 2]", '"text"'])
def test_arguments_that_are_not_an_object_stay_a_string_in_the_older_json(arguments):
    call = messages.AgentToolCall(call_id="c1", tool_name="t", arguments=arguments)
    written = codec.to_json(call, "llama_stack_0_2")
    assert written["arguments"] == arguments and written["arguments_json"] == arguments


@pytest.mark.parametrize("proto_path, wire", [
    ("model", "model"),
    # A tagged union's member is flattened beside its discriminator.
    ("tools[0].function.name", "tools[0].name"),
    ("text.format.json_schema.schema", "text.format.schema"),
    # An untagged union is its member's value; a list wrapper is its list.
    ("input.items.items[2].message.content.parts.parts[1].input_image.image_url",
     "input[2].content[1].image_url"),
    ("input.text", "input"),
    # Keys inside free-form JSON and maps, and paths already in the JSON's terms, stay as given.
    ("tools[0].function.parameters.properties.x", "tools[0].parameters.properties.x"),
    ("metadata.k1", "metadata.k1"),
    ("input[0].content[1]", "input[0].content[1]"),
    ("", ""),
])
def test_wire_path_names_a_field_as_the_json_spells_it(proto_path, wire):
    assert codec.wire_path(responses_pb2.CreateResponseRequest.DESCRIPTOR, proto_path) == wire


@pytest.mark.parametrize("value, expected", [("x", "an object, got a string"),
                                             ([1], "an object, got an array")])
def test_free_form_object_fields_name_what_was_given_instead(value, expected):
    with pytest.raises(codec.CodecError) as caught:
        codec.from_json({"agent_config": {"model": "m", "response_format": {
            "type": "json_schema", "json_schema": value}}}, pb.CreateAgentRequest())
    assert caught.value.field == "agent_config.response_format.json_schema"
    assert caught.value.description == f"expected {expected}"
