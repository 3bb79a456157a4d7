"""The HTTP/JSON gateway: legacy REST routes in, servicer calls out.

Routes come from the google.api.http annotations (routes.py); messages are converted by the
one codec (agentd.codec). Calls are dispatched in-process to the same servicer objects the
gRPC server runs, through the same call pipeline (api/calls.py: request id, logging, the one
error mapping), so REST callers are treated exactly as gRPC ones without paying a loopback
gRPC hop (client and server serialization, two trips through grpc's event machinery).
No handler is written per endpoint.

Generic rules beyond google.api.http, all read from the descriptors' options
(protos/agentd/v1/options.proto) and cached per route or descriptor:
- A unary and a server-streaming RPC may share a route; the streaming one is chosen when the
  request flag named by its `stream_flag` is true (the JSON body key on routes with a body,
  the query parameter on GET). A route bound only by the streaming RPC (its canonical
  ".../turn:stream", ".../events") always streams.
- Streams are Server-Sent Events, framed per service by `sse_framing`: DATA_ONLY writes
  "data: <json>"; EVENT_AND_DATA writes "event: <tag>" first, the tag being the discriminator
  value of the union found in the event (e.g. response.created). When the event holds a field
  marked `sse_event_id` (directly or one message down), it is written as the "id:" line.
  A request field marked `from_last_event_id` is read from the Last-Event-ID header when the
  query did not give it.
- An event whose union member is marked `sse_keepalive` is the single comment line
  ": keep-alive" with no blank line after it: a blank line would make SSE decoders dispatch an
  empty event carrying the last id, which the SDKs fail to parse. A member marked `sse_error`
  is written as the route's stream error body, made from its `error` field (google.rpc.Status),
  and ends the stream.
- A request field marked `from_header` is read from that HTTP header (case-insensitive),
  whose value is JSON read by the codec; bad JSON is a 400 naming the header.
- A google.api.HttpBody response is answered raw: its `data` with its `content_type`.
- A multipart/form-data body (file uploads) fills the request generically: a part named `a`
  or `a[b]` fills field `a` / nested `a.b` (text read like a query value), and a part with a
  file name fills an agentd.v1.UploadedFile field (filename, content_type, data). The body
  size limit (413) holds for it as for JSON.
- A response message with no fields is answered 204 No Content (Llama Stack's deletes).
- A route under a prefix of its service's `json_dialects` writes its JSON in that dialect
  (the codec's older form of a few fields, for an older SDK generation).
- A response message with `http_error_field` whose status there is set (a turn that failed)
  is answered as that error: the code's HTTP status and the route's error body.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf import symbol_database
from google.protobuf.message import Message
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from agentd import codec, paging
from agentd.api.calls import begin_call, end_call, invoke_stream, invoke_unary
from agentd.errors import HTTP_STATUS, AgentdError, InvalidArgument, details_of, status_of
from agentd.gateway.routes import Route
from agentd.v1 import options_pb2

_FORWARDED_HEADERS = ("authorization", "x-request-id")
_LEGACY_STYLE = options_pb2.ERROR_STYLE_LLAMA_STACK
_EVENT_AND_DATA = options_pb2.SSE_FRAMING_EVENT_AND_DATA
_KEEPALIVE = b": keep-alive\n"  # no blank line: see the module docstring
_HTTP_BODY = "google.api.HttpBody"
_UPLOADED_FILE = "agentd.v1.UploadedFile"
_LAST_EVENT_ID = "last-event-id"
_PART_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[[A-Za-z_][A-Za-z0-9_]*\])*)$")
_symbols = symbol_database.Default()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _QueryPlan:
    """How one route reads its query parameters into the request message."""

    def __init__(self, request_type: type[Message], route: Route):
        self.fields: dict[str, str] = {}  # query name -> field name
        self.cursors: dict[str, str] = {}  # legacy cursor query name -> page token field
        # Repeated fields take repeated parameters (?id=a&id=b) or one comma-separated value
        # (?id=a,b), which is how the llama-stack-client SDKs send lists.
        self.repeated: set[str] = set()
        bound = set(route.variables)
        for fd in request_type.DESCRIPTOR.fields:
            if fd.name in bound or fd.message_type is not None:
                continue
            opts = fd.GetOptions()
            self.fields[fd.name] = fd.name
            if fd.is_repeated:
                self.repeated.add(fd.name)
            for alias in opts.Extensions[options_pb2.query_aliases]:
                self.fields[alias] = fd.name
            for cursor in opts.Extensions[options_pb2.legacy_cursors]:
                self.cursors[cursor] = fd.name


class _RequestFields:
    """The request fields a request type reads from HTTP headers (one per descriptor)."""

    def __init__(self, desc):
        self.from_header: list[tuple[str, str]] = []  # (field, header name, lower case)
        self.last_event_id: Any = None  # the field descriptor read from Last-Event-ID
        for fd in desc.fields:
            opts = fd.GetOptions()
            header = opts.Extensions[options_pb2.from_header]
            if header:
                self.from_header.append((fd.name, header.lower()))
            if opts.Extensions[options_pb2.from_last_event_id]:
                self.last_event_id = fd


_request_fields: dict[str, _RequestFields] = {}


def _request_fields_of(desc) -> _RequestFields:
    plan = _request_fields.get(desc.full_name)
    if plan is None:
        plan = _request_fields[desc.full_name] = _RequestFields(desc)
    return plan


def _path_to(desc, wanted, depth: int) -> tuple[tuple[str, ...], Any] | None:
    """The field path (breadth first through singular message fields, at most `depth` levels
    down) to the first message type for which `wanted(descriptor)` is true."""
    level = [((), desc)]
    for _ in range(depth + 1):
        below = []
        for path, d in level:
            if wanted(d):
                return path, d
            for fd in d.fields:
                t = fd.message_type
                if t is not None and not fd.is_repeated and not t.full_name.startswith("google."):
                    below.append(((*path, fd.name), t))
        level = below
    return None


def _walk(msg: Message, path: tuple[str, ...]) -> Any:
    for name in path:
        msg = getattr(msg, name)
    return msg


def _event_id_field(desc):
    return next((fd for fd in desc.fields if fd.GetOptions().Extensions[options_pb2.sse_event_id]), None)


class _StreamPlan:
    """How one streaming route writes its events as SSE (one per route)."""

    def __init__(self, route: Route, event_desc):
        self.style = route.error_style
        self.dialect = route.json_dialect
        service_opts = route.method.containing_service.GetOptions()
        self.event_and_data = service_opts.Extensions[options_pb2.sse_framing] == _EVENT_AND_DATA
        found = _path_to(event_desc, lambda d: codec.tagged_union(d) is not None, depth=2)
        self.union_path: tuple[str, ...] | None = found[0] if found else None
        self.keepalive: set[str] = set()
        self.error: set[str] = set()
        if found:
            for fd in codec.tagged_union(found[1]).fields:
                opts = fd.GetOptions()
                if opts.Extensions[options_pb2.sse_keepalive]:
                    self.keepalive.add(fd.name)
                if opts.Extensions[options_pb2.sse_error]:
                    self.error.add(fd.name)
        found = _path_to(event_desc, lambda d: _event_id_field(d) is not None, depth=1)
        self.id_path = found[0] + (_event_id_field(found[1]).name,) if found else None

    def frame(self, event: Message) -> tuple[bytes, bool]:
        """The SSE bytes of one (unwrapped) event, and whether the stream ends with it."""
        member = tag = None
        if self.union_path is not None:
            union = _walk(event, self.union_path)
            which = codec.union_member(union)
            if which is not None:
                member, tag = which
                if member in self.keepalive:
                    return _KEEPALIVE, False
        out = b""
        if self.id_path is not None:
            out += b"id: " + str(_walk(event, self.id_path)).encode() + b"\n"
        if member in self.error:
            body = _stream_status_body(self.style, getattr(union, member).error)
            return out + self.error_event(body), True
        if self.event_and_data and tag:
            out += b"event: " + tag.encode() + b"\n"
        return out + b"data: " + _dumps(codec.to_json(event, self.dialect)) + b"\n\n", False

    def error_event(self, body: dict) -> bytes:
        return (b"event: error\n" if self.event_and_data else b"") + b"data: " + _dumps(body) + b"\n\n"


class Endpoint:
    """A route with its message classes, ready to convert and call."""

    def __init__(self, route: Route, servicer):
        self.route = route
        method = route.method
        self.request_type = _symbols.GetSymbol(method.input_type.full_name)
        self.response_type = _symbols.GetSymbol(method.output_type.full_name)
        self.handler = getattr(servicer, method.name)
        self.query = _QueryPlan(self.request_type, route) if route.body != "*" else None
        self.fields = _request_fields_of(self.request_type.DESCRIPTOR)
        response_desc = self.response_type.DESCRIPTOR
        self.no_content = not response_desc.fields and not method.server_streaming
        self.raw_body = response_desc.full_name == _HTTP_BODY
        error_field = response_desc.GetOptions().Extensions[options_pb2.http_error_field]
        self.error_path = tuple(error_field.split(".")) if error_field else None
        self.stream_flag = method.GetOptions().Extensions[options_pb2.stream_flag]
        self.stream_plan = None
        self.runs_long = False  # set by the Gateway: see _unless_gone
        if method.server_streaming:
            event_desc = response_desc.fields_by_name[route.response_body].message_type \
                if route.response_body else response_desc
            self.stream_plan = _StreamPlan(route, event_desc)

    def wants_stream(self, body: Any, query: list[tuple[str, str]]) -> bool:
        """Whether the request sets this streaming RPC's `stream_flag` (a body key on routes
        with a body, a query parameter otherwise)."""
        if not self.stream_flag:
            return False
        if self.route.body:
            flag = body.get(self.stream_flag) if isinstance(body, dict) else None
            if flag is not None and not isinstance(flag, bool):
                # Not read as true: a client that wrote "yes" or 1 would get a JSON answer
                # where it waits for events.
                raise codec.CodecError(self.stream_flag, f"expected a boolean, got {codec.kind_of(flag)}")
            return flag is True
        return any(k == self.stream_flag and v in ("true", "1") for k, v in query)

    async def build_request(self, path_params: dict[str, str], query: list[tuple[str, str]],
                            body: Any, renames: dict[str, str], headers: Headers,
                            form: list[tuple[str, Any]] | None = None) -> Message:
        """The request message; `renames` collects field -> query alias, so that an error about
        a field names the parameter the client actually sent (limit, not page_size)."""
        msg = self.request_type()
        if form is not None and self.route.body == "*":
            await _read_form(form, msg)
        elif self.route.body == "*":
            codec.from_json(body if body is not None else {}, msg)
        elif self.route.body:
            codec.from_json(body, getattr(msg, self.route.body), self.route.body)
        for field, header in self.fields.from_header:
            raw = headers.get(header)
            if raw is None:
                continue
            try:
                value = _read_json(raw)
            except (ValueError, RecursionError) as e:
                raise InvalidArgument(header, f"header is not valid JSON: {e}",
                                      reason="INVALID_JSON") from None
            codec.read_field(msg, field, value, header)
        if self.query is not None:
            for name, raw in query:
                if name in self.query.cursors:
                    setattr(msg, self.query.cursors[name], paging.encode(paging.from_legacy(name, raw)))
                    renames[self.query.cursors[name]] = name
                elif name in self.query.fields:
                    field = self.query.fields[name]
                    if name != field:
                        renames[field] = name
                    for value in raw.split(",") if field in self.query.repeated else (raw,):
                        codec.read_scalar_field(msg, field, value, name)
        for name, value in path_params.items():
            codec.read_scalar_field(msg, name, value, name)
        fd = self.fields.last_event_id
        if fd is not None and _LAST_EVENT_ID in headers:
            given = msg.HasField(fd.name) if fd.has_presence else bool(getattr(msg, fd.name))
            if not given:
                codec.read_scalar_field(msg, fd.name, headers[_LAST_EVENT_ID], "Last-Event-ID")
        return msg

    def unwrap(self, response: Message) -> Any:
        if self.route.response_body:
            return codec.to_json(getattr(response, self.route.response_body), self.route.json_dialect)
        return codec.to_json(response, self.route.json_dialect)


class Gateway:
    """The ASGI application."""

    def __init__(self, routes: list[Route], servicers: dict[str, object], max_body_bytes: int):
        """`servicers` maps a service's full name to the object that serves it; a request
        body over `max_body_bytes` (the gRPC message limit) is refused with 413."""
        self.max_body_bytes = max_body_bytes
        self.endpoints = [Endpoint(r, servicers[r.method.containing_service.full_name])
                          for r in routes if r.method.containing_service.full_name in servicers]
        # A unary call that shares its route with a stream (a non-streaming turn, resume or
        # response) runs as long as one: it stops when its client goes away, as the stream
        # does (_unless_gone). Other unary calls are short; they skip the watch's two tasks.
        streamed = {(e.route.verb, e.route.template) for e in self.endpoints if e.route.streaming}
        for e in self.endpoints:
            e.runs_long = (e.route.verb, e.route.template) in streamed and not e.route.streaming
        # For paths no route matches: each route's literal leading segments, with its style.
        self._prefixes = [(_literal_segments(e.route.template), e.route.error_style) for e in self.endpoints]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    def match(self, verb: str, path: str) -> tuple[list[tuple[Endpoint, dict]], dict[str, int]]:
        """The endpoints for (verb, path), and every verb the path has, with its error style."""
        found, allowed = [], {}
        for endpoint in self.endpoints:
            m = endpoint.route.pattern.match(path)
            if m is None:
                continue
            allowed.setdefault(endpoint.route.verb, endpoint.route.error_style)
            if endpoint.route.verb == verb:
                found.append((endpoint, m.groupdict()))
        return found, allowed

    def style_for_path(self, path: str) -> int:
        """The error style for a path no route matched: that of the service whose route
        templates share the most leading literal segments with it ("/v1alpha/nothing" is aimed
        at the Agents API). A path that shares nothing, or as much with services of both
        styles ("/v1/nothing"), is answered in the OpenAI style, the more widely parsed one."""
        segments = path.strip("/").split("/")
        best, styles = 0, set()
        for prefix, style in self._prefixes:
            shared = 0
            for ours, theirs in zip(prefix, segments, strict=False):
                if ours != theirs:
                    break
                shared += 1
            if shared > best:
                best, styles = shared, {style}
            elif shared == best and shared:
                styles.add(style)
        return styles.pop() if len(styles) == 1 else options_pb2.ERROR_STYLE_OPENAI

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        metadata = tuple((h, request.headers[h]) for h in _FORWARDED_HEADERS if h in request.headers)
        headers = {"x-request-id": begin_call(metadata)}
        path = request.url.path
        candidates, allowed = self.match(request.method, path)
        if not candidates:
            # The gateway's own answers are calls too: a request id and an access-log line.
            label = f"{request.method} {path}"
            if allowed:
                verbs = ", ".join(sorted(allowed))
                return _refuse(label, started, next(iter(allowed.values())), _GatewayError(
                    405, grpc.StatusCode.UNIMPLEMENTED, "METHOD_NOT_ALLOWED", "Method Not Allowed"),
                    {**headers, "Allow": verbs})
            return _refuse(label, started, self.style_for_path(path), _GatewayError(
                404, grpc.StatusCode.NOT_FOUND, "ROUTE_NOT_FOUND", "Not Found"), headers)
        style = candidates[0][0].route.error_style
        label = candidates[0][0].route.grpc_path
        try:
            raw = await _read_body(request, self.max_body_bytes)
        except _TooLarge:
            return _refuse(label, started, style, _GatewayError(
                413, grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE",
                f"Request body is larger than {self.max_body_bytes} bytes."), headers)
        body: Any = None
        form: list[tuple[str, Any]] | None = None
        if raw and request.headers.get("content-type", "").startswith("multipart/form-data"):
            try:
                form = await _parse_form(request.headers, raw)
            except Exception as e:  # noqa: BLE001 - python-multipart's errors vary
                return _refuse(label, started, style, InvalidArgument(
                    "", f"Request body is not valid multipart/form-data: {e}", reason="INVALID_FORM"),
                    headers)
        elif raw:
            try:
                body = _read_json(raw)
            except (ValueError, RecursionError) as e:
                reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
                return _refuse(label, started, style, InvalidArgument(
                    "", f"Request body is not valid JSON: {reason}", reason="INVALID_JSON"), headers)
        query = parse_qsl(request.url.query, keep_blank_values=True)
        try:
            endpoint, path_params = _select(candidates, body, query)
        except codec.CodecError as e:
            return _refuse(label, started, style, InvalidArgument(e.field, e.description), headers)
        names = _FieldNames(endpoint.request_type.DESCRIPTOR)
        try:
            message = await endpoint.build_request(path_params, query, body, names.aliases,
                                                   request.headers, form)
        except codec.CodecError as e:
            return _refuse(endpoint.route.grpc_path, started, style,
                           InvalidArgument(e.field, e.description), headers)
        except Exception as e:  # noqa: BLE001 - e.g. a bad legacy cursor; a crash is logged as one
            return _refuse(endpoint.route.grpc_path, started, style, e, headers, names)
        if endpoint.route.streaming:
            return await _stream(endpoint, message, metadata, style, headers, names)
        try:
            call = invoke_unary(endpoint.route.grpc_path, endpoint.handler, message, metadata)
            response = await (_unless_gone(request, call) if endpoint.runs_long else call)
        except _ClientGone:
            return Response(status_code=499, headers=headers)  # nobody reads it
        except Exception as e:  # noqa: BLE001 - invoke_unary logged it; answer with its status
            return _error_response(style, e, headers, names)
        if endpoint.no_content:
            return Response(status_code=204, headers=headers)
        if endpoint.error_path is not None and (status := _walk(response, endpoint.error_path)).code:
            # A run that failed, answered as its stream's error event says it (http_error_field).
            return _json_response(*_status_body(style, status), headers)
        if endpoint.raw_body:
            return Response(response.data, media_type=response.content_type or "application/octet-stream",
                            headers=headers)
        return _json_response(200, endpoint.unwrap(response), headers)


def _literal_segments(template: str) -> tuple[str, ...]:
    """The path segments of a route template before its first variable."""
    return tuple(template.split("{", 1)[0].strip("/").split("/"))


class _GatewayError(AgentdError):
    """An answer of the gateway's own (no such route, wrong verb, body too large): an HTTP
    status that no gRPC code maps to, with the gRPC code its access-log line reports."""

    def __init__(self, http: int, code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message, reason=reason)
        self.code = code
        self.http = http


def _refuse(label: str, started: float, style: int, error: BaseException, headers: dict,
            names: _FieldNames | None = None) -> Response:
    """Answers a request the gateway refuses before any servicer runs, and logs it."""
    end_call(label, started, error)
    return _error_response(style, error, headers, names)


def _read_json(raw: str | bytes) -> Any:
    """The one JSON reader of request bodies and JSON headers: strict JSON numbers only
    (ValueError for NaN, Infinity and numbers past a double's range)."""
    return json.loads(raw, parse_constant=_no_constants, parse_float=_finite)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number as a float; one past a double's range (1e309) is refused, since it would
    be infinity, which no JSON answer or model request can carry."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


class _ClientGone(Exception):
    """The client closed the connection before its unary call ended."""


async def _unless_gone(request: Request, call: Coroutine[Any, Any, Any]) -> Any:
    """Runs a unary call, cancelled when the client goes away first, as a cancelled gRPC call
    is: a non-streaming turn or response then stops as a dropped stream's run does, instead
    of running on for nobody (and holding its session busy). Raises _ClientGone then."""
    task = asyncio.ensure_future(call)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():  # the client went away, or this handler was cancelled
            task.cancel()
            await asyncio.wait((task,))
    if task in done:
        return task.result()
    if not task.cancelled():
        task.exception()  # retrieved: what it raised once cancelled is logged by invoke_unary
    raise _ClientGone


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects: the body has been read, so the next ASGI
    message is http.disconnect, and it comes only then (uvicorn, httpx's ASGI transport). A
    server that answers anything else instead gives no such signal: wait to be cancelled."""
    if (await request.receive())["type"] != "http.disconnect":
        await asyncio.get_running_loop().create_future()


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes (a client cannot make us buffer more)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_form(request_headers: Headers, raw: bytes) -> list[tuple[str, Any]]:
    """The parts of a multipart/form-data body already read (within the size limit)."""
    async def replay():
        yield raw
        yield b""

    parser = MultiPartParser(request_headers, replay(), max_part_size=len(raw) + 1)
    return (await parser.parse()).multi_items()


async def _read_form(parts: list[tuple[str, Any]], msg: Message) -> None:
    """Fills `msg` from form parts: "a" fills field a, "a[b]" the nested field a.b; a file
    part fills an agentd.v1.UploadedFile field. Parts that name no field are ignored, as
    unknown JSON keys are; a key the JSON must have (json_key_required) must be a part."""
    given = {m.group(1) for name, _ in parts if (m := _PART_NAME.match(name)) is not None}
    for key in codec.required_keys(msg.DESCRIPTOR):
        if key not in given:
            raise InvalidArgument(key, "required")
    for name, value in parts:
        m = _PART_NAME.match(name)
        if m is None:
            continue
        path = [m.group(1), *re.findall(r"\[([^\]]+)\]", m.group(2))]
        target = msg
        for segment in path[:-1]:
            fd = target.DESCRIPTOR.fields_by_name.get(segment)
            if fd is None or fd.message_type is None or fd.is_repeated:
                target = None
                break
            target = getattr(target, segment)
        fd = target.DESCRIPTOR.fields_by_name.get(path[-1]) if target is not None else None
        if fd is None:
            continue
        is_file_field = fd.message_type is not None and fd.message_type.full_name == _UPLOADED_FILE
        if isinstance(value, UploadFile):
            if not is_file_field or fd.is_repeated:
                raise InvalidArgument(name, "expected a text value, got a file")
            uploaded = getattr(target, fd.name)
            uploaded.filename = value.filename or ""
            uploaded.content_type = value.content_type or "application/octet-stream"
            uploaded.data = await value.read()
            uploaded.SetInParent()
        elif is_file_field:
            raise InvalidArgument(name, "expected a file part (with a filename)")
        elif fd.message_type is not None:
            raise InvalidArgument(name, "expected nested parts (name[field])")
        else:
            codec.read_scalar_field(target, fd.name, value, name)


def _select(candidates: list[tuple[Endpoint, dict]], body: Any,
            query: list[tuple[str, str]]) -> tuple[Endpoint, dict]:
    """On a route shared by a unary and a streaming RPC, the streaming one when the request
    sets its stream_flag; a route with one kind of RPC serves that one."""
    streaming = [c for c in candidates if c[0].route.streaming]
    unary = [c for c in candidates if not c[0].route.streaming]
    if not streaming or not unary:
        return candidates[0]
    return streaming[0] if streaming[0][0].wants_stream(body, query) else unary[0]


async def _stream(endpoint: Endpoint, message: Message, metadata, style: int, headers,
                  names: _FieldNames) -> Response:
    events = invoke_stream(endpoint.route.grpc_path, endpoint.handler, message, metadata)
    try:
        # Wait for the first event so that failures before the stream starts (bad ids,
        # validation) get their real HTTP status rather than a 200 with an error event.
        first = await anext(events)
    except StopAsyncIteration:
        return StreamingResponse(iter(()), media_type="text/event-stream", headers=headers)
    except Exception as e:  # noqa: BLE001
        await events.aclose()
        return _error_response(style, e, headers, names)

    plan = endpoint.stream_plan
    field = endpoint.route.response_body

    async def sse():
        try:
            chunk, last = plan.frame(getattr(first, field) if field else first)
            yield chunk
            if last:
                return
            async for item in events:
                chunk, last = plan.frame(getattr(item, field) if field else item)
                yield chunk
                if last:
                    return
        except Exception as e:  # noqa: BLE001 - HTTP 200 has gone out: the error is an event
            yield plan.error_event(_stream_error_body(style, e))
        finally:
            await events.aclose()  # a client that went away stops the servicer (no leaked stream)

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})


# ---------------------------------------------------------------------------- errors


class _FieldNames:
    """How an error names a field of the request to the REST client: by the query parameter
    the client used for it (limit, not page_size: `aliases`, filled by build_request), else
    as the request's JSON spells it (codec.wire_path: tools[0].name, not the proto path
    tools[0].function.name that the request validator gives)."""

    def __init__(self, request_desc):
        self.request_desc = request_desc
        self.aliases: dict[str, str] = {}  # field -> the query name the client used for it

    def of(self, param: str) -> str:
        alias = self.aliases.get(param.partition("[")[0])  # include[1]: a repeated field's value
        if alias is not None:
            return alias  # the query key names them all (include[])
        return codec.wire_path(self.request_desc, param)


def _error_body_of(style: int, error: BaseException,
                   names: _FieldNames | None = None) -> tuple[int, dict]:
    """The HTTP status and body for any exception, through the one mapping (status_of)."""
    http = error.http if isinstance(error, _GatewayError) else None
    return _status_body(style, status_of(error), http, names)


def _status_body(style: int, status, http: int | None = None,
                 names: _FieldNames | None = None) -> tuple[int, dict]:
    """The HTTP status and body of a google.rpc.Status."""
    reason, fields = details_of(status)
    param, message = (fields[0] if fields else None), status.message
    if param and names is not None and (shown := names.of(param)) != param:
        message = shown + message[len(param):] if message.startswith(param + ":") else message
        param = shown
    http = http or HTTP_STATUS.get(status.code, 500)
    return http, _error_body(style, http, message, reason, param)


def _stream_error_body(style: int, error: BaseException) -> dict:
    """The last event of a stream that failed: {"error": {...}}, which the openai SDK raises
    as APIError; Llama Stack's is {"error": {"message": "<status>: <detail>"}}."""
    return _stream_body(style, *_error_body_of(style, error))


def _stream_status_body(style: int, status) -> dict:
    """The same error event for a failure the stream carries as a Status (sse_error)."""
    return _stream_body(style, *_status_body(style, status))


def _stream_body(style: int, http: int, body: dict) -> dict:
    if style == _LEGACY_STYLE:
        return {"error": {"message": f"{http}: {body['detail']}"}}
    return body


def _error_response(style: int, error: BaseException, headers: dict,
                    names: _FieldNames | None = None) -> Response:
    return _json_response(*_error_body_of(style, error, names), headers)


def _json_response(http: int, body: Any, headers: dict) -> Response:
    return Response(_dumps(body), status_code=http, media_type="application/json", headers=headers)


def _error_body(style: int, http: int, message: str, reason: str, param: str | None) -> dict:
    if style == _LEGACY_STYLE:
        return {"detail": message}
    # OpenAI's types: every client error (404 too) is "invalid_request_error", a rate limit
    # "requests", a server fault "server_error" ("not_found_error" and the like are Anthropic's).
    kind = "requests" if http == 429 else "invalid_request_error" if http < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": reason.lower()}}


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


