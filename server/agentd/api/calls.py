"""What every call goes through, whichever transport brought it.

gRPC calls pass through api/grpc_pipeline.py; the HTTP gateway dispatches to the same servicers
in-process (no loopback hop) through `invoke_unary` / `invoke_stream`. Both begin a call the
same way (request id, log context), end it the same way (one access-log line with the
outcome), run the servicer through the same `call_servicer` (the request validated against
its field_behavior first), and turn a failure into a status through agentd.errors.status_of,
so REST and gRPC callers get identical treatment.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from agentd import context as call_context
from agentd.errors import StatusError, log_level_of
from agentd.validation import validate

log = logging.getLogger("agentd.rpc")
Metadata = Iterable[tuple[str, str]]


def begin_call(metadata: Metadata | None) -> str:
    """Sets the call's request id (the caller's x-request-id, or a new one) and returns it."""
    request_id = next((v[:128] for k, v in metadata or () if k == "x-request-id" and v), None)
    request_id = request_id or uuid.uuid4().hex[:16]
    call_context.request_id.set(request_id)
    return request_id


def end_call(method: str, started: float, error: BaseException | None = None) -> None:
    """The call's access-log line: method, outcome, duration. The outcome is the code the
    client got (errors.status_of, the one map), so log and answer never disagree. Unexpected
    failures (INTERNAL, UNKNOWN) are logged with their traceback, since the client only sees
    a bare INTERNAL; expected ones (bad input, not found, a lost database) take one line."""
    ms = (time.perf_counter() - started) * 1000
    if error is None:
        log.info("rpc %s OK %.2f ms", method, ms)
        return
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        log.info("rpc %s CANCELLED %.2f ms", method, ms)
        return
    level, code, message = log_level_of(error)
    if level == logging.ERROR:
        log.error("rpc %s %s %.2f ms", method, code, ms, exc_info=error)
    else:
        log.log(level, "rpc %s %s %.2f ms: %s", method, code, ms, message)


def call_servicer(handler, request, context):
    """Calls a servicer method, for both transports: the request is validated first
    (agentd.validation: REQUIRED fields present, OUTPUT_ONLY fields cleared), so no servicer
    repeats those checks. Returns what the method returns (an awaitable or an async iterator)."""
    validate(request)
    return handler(request, context)


class LocalContext:
    """The part of grpc.aio.ServicerContext that servicers may use, for in-process calls."""

    def __init__(self, metadata: Metadata):
        self._metadata = tuple(metadata)

    def invocation_metadata(self):
        return self._metadata

    async def send_initial_metadata(self, metadata) -> None:
        pass  # the gateway answers with its own headers

    def set_trailing_metadata(self, metadata) -> None:
        pass

    def set_code(self, code) -> None:
        pass  # the generated base servicers set UNIMPLEMENTED, then raise

    def set_details(self, details) -> None:
        pass

    def time_remaining(self) -> float | None:
        return None  # HTTP callers have no deadline

    def cancelled(self) -> bool:
        return False

    def peer(self) -> str:
        return "gateway"

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise StatusError(code, details)

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise StatusError(status.code, status.details)


async def invoke_unary(method: str, handler, request, metadata: Metadata) -> Any:
    """Runs a unary servicer method in-process; a failure is logged and re-raised."""
    started, error = time.perf_counter(), None
    try:
        result = call_servicer(handler, request, LocalContext(metadata))
        return await result if inspect.isawaitable(result) else result
    except BaseException as e:
        error = e
        raise
    finally:
        end_call(method, started, error)


async def invoke_stream(method: str, handler, request, metadata: Metadata) -> AsyncIterator[Any]:
    """Runs a server-streaming servicer method in-process; closing this iterator (a client
    that went away) closes the servicer's generator, which stops its work."""
    started, error, stream = time.perf_counter(), None, None
    try:
        stream = call_servicer(handler, request, LocalContext(metadata))
        async for item in stream:
            yield item
    except BaseException as e:
        error = e
        raise
    finally:
        # A caller that stops early (the gateway after a terminal error event) closes the
        # servicer's generator now, not whenever it is garbage-collected.
        aclose = getattr(stream, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            end_call(method, started, error)
