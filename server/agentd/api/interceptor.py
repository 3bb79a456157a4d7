"""The call interceptor: request id, access log, and the one place where exceptions become
gRPC statuses (agentd.errors.to_status)."""

from __future__ import annotations

import logging
import time
import uuid

import grpc

from agentd.api import context as call_context
from agentd.errors import AgentdError, to_status

log = logging.getLogger("agentd.rpc")
OWN_SERVICES = "/agentd."  # health and reflection are left alone


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return value[:128]
    return uuid.uuid4().hex[:16]


class CallInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(OWN_SERVICES):
            return handler
        method = details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler


async def _begin(context) -> str:
    rid = _request_id(context)
    call_context.request_id.set(rid)
    await context.send_initial_metadata((("x-request-id", rid),))
    return rid


async def _fail(context, method: str, rid: str, error: Exception) -> None:
    if isinstance(error, AgentdError):
        log.info("rpc %s failed: %s %s", method, error.code.name, error.message)
    else:
        log.exception("rpc %s crashed", method)
    await context.abort_with_status(to_status(error, rid))


def _wrap_unary(method, behavior):
    async def wrapper(request, context):
        started = time.perf_counter()
        rid = await _begin(context)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 - mapped to a status, never leaked
            await _fail(context, method, rid, error)
        finally:
            log.debug("rpc %s done in %.2f ms", method, (time.perf_counter() - started) * 1000)
    return wrapper


def _wrap_stream(method, behavior):
    async def wrapper(request, context):
        started = time.perf_counter()
        rid = await _begin(context)
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001
            await _fail(context, method, rid, error)
        finally:
            log.debug("rpc %s stream ended after %.2f ms", method, (time.perf_counter() - started) * 1000)
    return wrapper
