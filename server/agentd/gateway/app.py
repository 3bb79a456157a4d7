"""The HTTP/JSON gateway: legacy REST routes in, servicer calls out.

Routes come from the google.api.http annotations (routes.py); messages are converted by the
one codec (agentd.codec). Calls are dispatched in-process to the same servicer objects the
gRPC server runs, through the same call pipeline (api/calls.py: request id, logging, the one
error mapping), so REST callers are treated exactly as gRPC ones without paying a loopback
gRPC hop (client and server serialization, two trips through grpc's event machinery).
No handler is written per endpoint.

Two generic rules beyond google.api.http:
- A unary and a server-streaming RPC may share a route; the request's `stream` flag (JSON
  body key, or query parameter for GET) selects the streaming one. Streams are SSE.
- A response message with no fields is answered 204 No Content (Llama Stack's deletes).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf import symbol_database
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from agentd import codec, paging
from agentd.api.calls import begin_call, end_call, invoke_stream, invoke_unary
from agentd.errors import HTTP_STATUS, AgentdError, InvalidArgument, details_of, status_of
from agentd.gateway.routes import Route
from agentd.v1 import options_pb2

_FORWARDED_HEADERS = ("authorization", "x-request-id")
_LEGACY_STYLE = options_pb2.ERROR_STYLE_LLAMA_STACK
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


class Endpoint:
    """A route with its message classes, ready to convert and call."""

    def __init__(self, route: Route, servicer):
        self.route = route
        method = route.method
        self.request_type = _symbols.GetSymbol(method.input_type.full_name)
        self.response_type = _symbols.GetSymbol(method.output_type.full_name)
        self.handler = getattr(servicer, method.name)
        self.query = _QueryPlan(self.request_type, route) if route.body != "*" else None
        response_fields = self.response_type.DESCRIPTOR.fields
        self.no_content = not response_fields and not method.server_streaming

    def build_request(self, path_params: dict[str, str], query: list[tuple[str, str]],
                      body: Any, renames: dict[str, str]) -> Message:
        """The request message; `renames` collects field -> query alias, so that an error about
        a field names the parameter the client actually sent (limit, not page_size)."""
        msg = self.request_type()
        if self.route.body == "*":
            codec.from_json(body if body is not None else {}, msg)
        elif self.route.body:
            codec.from_json(body, getattr(msg, self.route.body), self.route.body)
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
        return msg

    def unwrap(self, response: Message) -> Any:
        if self.route.response_body:
            return codec.to_json(getattr(response, self.route.response_body))
        return codec.to_json(response)


class Gateway:
    """The ASGI application."""

    def __init__(self, routes: list[Route], servicers: dict[str, object], max_body_bytes: int):
        """`servicers` maps a service's full name to the object that serves it; a request
        body over `max_body_bytes` (the gRPC message limit) is refused with 413."""
        self.max_body_bytes = max_body_bytes
        self.endpoints = [Endpoint(r, servicers[r.method.containing_service.full_name])
                          for r in routes if r.method.containing_service.full_name in servicers]
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
                404, grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "Not Found"), headers)
        style = candidates[0][0].route.error_style
        label = candidates[0][0].route.grpc_path
        try:
            raw = await _read_body(request, self.max_body_bytes)
        except _TooLarge:
            return _refuse(label, started, style, _GatewayError(
                413, grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE",
                f"Request body is larger than {self.max_body_bytes} bytes."), headers)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw, parse_constant=_no_constants)
            except (ValueError, RecursionError) as e:
                reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
                return _refuse(label, started, style, InvalidArgument(
                    "", f"Request body is not valid JSON: {reason}", reason="INVALID_JSON"), headers)
        query = parse_qsl(request.url.query, keep_blank_values=True)
        endpoint, path_params = _select(candidates, _wants_stream(body, query))
        renames: dict[str, str] = {}  # field -> the query name the client used for it
        try:
            message = endpoint.build_request(path_params, query, body, renames)
        except codec.CodecError as e:
            return _refuse(endpoint.route.grpc_path, started, style,
                           InvalidArgument(e.field, e.description), headers)
        except Exception as e:  # noqa: BLE001 - e.g. a bad legacy cursor; a crash is logged as one
            return _refuse(endpoint.route.grpc_path, started, style, e, headers, renames)
        if endpoint.route.streaming:
            return await _stream(endpoint, message, metadata, style, headers, renames)
        try:
            response = await invoke_unary(endpoint.route.grpc_path, endpoint.handler, message, metadata)
        except Exception as e:  # noqa: BLE001 - invoke_unary logged it; answer with its status
            return _error_response(style, e, headers, renames)
        if endpoint.no_content:
            return Response(status_code=204, headers=headers)
        return Response(_dumps(endpoint.unwrap(response)), media_type="application/json",
                        headers=headers)


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
            renames: dict[str, str] | None = None) -> Response:
    """Answers a request the gateway refuses before any servicer runs, and logs it."""
    end_call(label, started, error)
    return _error_response(style, error, headers, renames)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON value")


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


def _wants_stream(body: Any, query: list[tuple[str, str]]) -> bool:
    if isinstance(body, dict) and isinstance(body.get("stream"), bool):
        return body["stream"]
    return any(k == "stream" and v in ("true", "1") for k, v in query)


def _select(candidates: list[tuple[Endpoint, dict]], stream: bool) -> tuple[Endpoint, dict]:
    for endpoint, params in candidates:
        if endpoint.route.streaming == stream:
            return endpoint, params
    return candidates[0]


async def _stream(endpoint: Endpoint, message: Message, metadata, style: int, headers,
                  renames: dict[str, str]) -> Response:
    events = invoke_stream(endpoint.route.grpc_path, endpoint.handler, message, metadata)
    try:
        # Wait for the first event so that failures before the stream starts (bad ids,
        # validation) get their real HTTP status rather than a 200 with an error event.
        first = await anext(events)
    except StopAsyncIteration:
        return StreamingResponse(iter(()), media_type="text/event-stream", headers=headers)
    except Exception as e:  # noqa: BLE001
        await events.aclose()
        return _error_response(style, e, headers, renames)

    async def sse():
        try:
            yield b"data: " + _dumps(endpoint.unwrap(first)) + b"\n\n"
            async for item in events:
                yield b"data: " + _dumps(endpoint.unwrap(item)) + b"\n\n"
        except Exception as e:  # noqa: BLE001 - HTTP 200 has gone out: the error is an event
            yield b"data: " + _dumps(_stream_error_body(style, e)) + b"\n\n"
        finally:
            await events.aclose()  # a client that went away stops the servicer (no leaked stream)

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})


# ---------------------------------------------------------------------------- errors


def _error_body_of(style: int, error: BaseException,
                   renames: dict[str, str] | None = None) -> tuple[int, dict]:
    """The HTTP status and body for any exception, through the one mapping (status_of)."""
    status = status_of(error)
    reason, fields = details_of(status)
    param, message = (fields[0] if fields else None), status.message
    if param in (renames or {}):
        alias = renames[param]
        message = alias + message[len(param):] if message.startswith(param + ":") else message
        param = alias
    http = error.http if isinstance(error, _GatewayError) else HTTP_STATUS.get(status.code, 500)
    return http, _error_body(style, http, message, reason, param)


def _stream_error_body(style: int, error: BaseException) -> dict:
    """The last event of a stream that failed: {"error": {...}}, which the openai SDK raises
    as APIError; Llama Stack's is {"error": {"message": "<status>: <detail>"}}."""
    http, body = _error_body_of(style, error)
    if style == _LEGACY_STYLE:
        return {"error": {"message": f"{http}: {body['detail']}"}}
    return body


def _error_response(style: int, error: BaseException, headers: dict,
                    renames: dict[str, str] | None = None) -> Response:
    http, body = _error_body_of(style, error, renames)
    return Response(_dumps(body), status_code=http, media_type="application/json", headers=headers)


def _error_body(style: int, http: int, message: str, reason: str, param: str | None) -> dict:
    if style == _LEGACY_STYLE:
        return {"detail": message}
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 409: "conflict_error", 429: "rate_limit_error"}.get(
        http, "invalid_request_error" if http < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": reason.lower()}}


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


