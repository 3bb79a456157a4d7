"""The gRPC call interceptor: begins each call (api/calls.py), logs it, and turns any
exception into the call's status (agentd.errors.to_status)."""

from __future__ import annotations

import logging
import time

import grpc

from agentd.api.calls import begin_call, log_failure
from agentd.errors import to_status

log = logging.getLogger("agentd.rpc")
OWN_SERVICES = "/agentd."  # health and reflection are left alone


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
    request_id = begin_call(context.invocation_metadata())
    await context.send_initial_metadata((("x-request-id", request_id),))
    return request_id


def _wrap_unary(method, behavior):
    async def wrapper(request, context):
        started = time.perf_counter()
        request_id = await _begin(context)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 - mapped to a status, never leaked
            log_failure(method, error)
            await context.abort_with_status(to_status(error, request_id))
        finally:
            log.debug("rpc %s done in %.2f ms", method, (time.perf_counter() - started) * 1000)
    return wrapper


def _wrap_stream(method, behavior):
    async def wrapper(request, context):
        started = time.perf_counter()
        request_id = await _begin(context)
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001
            log_failure(method, error)
            await context.abort_with_status(to_status(error, request_id))
        finally:
            log.debug("rpc %s stream ended after %.2f ms", method, (time.perf_counter() - started) * 1000)
    return wrapper
