"""Rules of the contract that buf cannot check: they keep the one codec and the one gateway
free of per-endpoint code."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from agentd.app import SERVICES
from agentd.v1 import agents_pb2, options_pb2, responses_pb2

# A streaming RPC and its unary twin take the same request (the HTTP body of their shared
# route), except for fields that only make sense on a stream.
TWINS = [
    (agents_pb2.CreateTurnRequest, agents_pb2.StreamTurnRequest, set()),
    (agents_pb2.ResumeTurnRequest, agents_pb2.StreamResumeTurnRequest, set()),
    (responses_pb2.CreateResponseRequest, responses_pb2.StreamResponseRequest, {"stream_options"}),
]


def _shape(field: FieldDescriptor) -> tuple:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:  # each map has its own entry type
        message_shape = tuple(_shape(f) for f in message.fields)
    else:
        message_shape = message.full_name if message else None
    return (field.number, field.type, field.is_repeated, field.has_presence, message_shape,
            field.enum_type.full_name if field.enum_type else None,
            field.GetOptions().SerializeToString(deterministic=True))


def test_each_create_and_stream_request_pair_is_identical():
    for unary, stream, stream_only in TWINS:
        unary_fields = {f.name: _shape(f) for f in unary.DESCRIPTOR.fields}
        stream_fields = {f.name: _shape(f) for f in stream.DESCRIPTOR.fields if f.name not in stream_only}
        assert unary_fields == stream_fields, unary.DESCRIPTOR.name


def test_every_streaming_rpc_has_a_route_of_its_own():
    """A standard transcoder could serve it: its primary binding is not shared with the unary
    twin (the shared legacy routes are additional bindings, selected by stream_flag)."""
    from google.api import annotations_pb2

    primary: dict[tuple[str, str], list[str]] = {}
    for service in SERVICES:
        for method in service.methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            verb = rule.WhichOneof("pattern")
            primary.setdefault((verb, getattr(rule, verb)), []).append(method.full_name)
            if method.server_streaming:
                shared_legacy = len(rule.additional_bindings) > 1
                flag = method.GetOptions().Extensions[options_pb2.stream_flag]
                assert not shared_legacy or flag, f"{method.full_name} shares routes without a stream_flag"
    assert {route: names for route, names in primary.items() if len(names) > 1} == {}


def test_the_request_ids_of_creates_are_optional_strings():
    """Every create that runs work or makes a resource takes an idempotency request_id."""
    creates = [m for s in SERVICES for m in s.methods
               if m.name.startswith(("Create", "Stream", "Resume", "Upload"))
               and not m.name.startswith(("StreamTurnEvents", "StreamResponseEvents"))]
    assert creates
    for method in creates:
        field = method.input_type.fields_by_name.get("request_id")
        if method.name in ("CreateVectorStoreFile",):
            continue  # adding a file to a store is idempotent by (store, file) already
        assert field is not None and field.type == FieldDescriptor.TYPE_STRING and field.has_presence, \
            method.full_name
