"""The access-log line of a call: its code comes from the one status map (errors.status_of),
so what is logged is what the client got; only unexpected failures carry a traceback."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import text

from agentd.api.calls import invoke_stream, invoke_unary
from agentd.errors import NotFound, Unavailable
from agentd.storage import Database
from agentd.v1 import agents_pb2

METHOD = "/agentd.v1.AgentsService/GetAgent"
# A valid request: every call is validated (agentd.validation) before its handler runs.
REQUEST = agents_pb2.GetAgentRequest(agent_id="agent_x")


def _line(caplog) -> logging.LogRecord:
    records = [r for r in caplog.records if r.name == "agentd.rpc"]
    assert len(records) == 1, [r.getMessage() for r in records]
    return records[0]


async def _call(error: BaseException):
    async def handler(request, context):
        raise error
    return await invoke_unary(METHOD, handler, REQUEST, ())


async def test_success_is_one_ok_line(caplog):
    caplog.set_level(logging.INFO, "agentd.rpc")

    async def handler(request, context):
        return "done"
    assert await invoke_unary(METHOD, handler, REQUEST, ()) == "done"
    record = _line(caplog)
    assert record.getMessage().startswith(f"rpc {METHOD} OK ")
    assert record.exc_info is None


async def test_an_agentd_error_is_one_line_with_its_code_and_message(caplog):
    caplog.set_level(logging.INFO, "agentd.rpc")
    with pytest.raises(NotFound):
        await _call(NotFound("agent", "agent_x"))
    record = _line(caplog)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert f"rpc {METHOD} NOT_FOUND " in record.getMessage()
    assert record.getMessage().endswith("Agent 'agent_x' not found.")


async def test_a_lost_database_is_logged_unavailable_as_the_client_sees_it(caplog):
    caplog.set_level(logging.INFO, "agentd.rpc")
    # A real Database whose server refuses connections: storage turns that into UNAVAILABLE.
    db = Database("postgresql://nobody@127.0.0.1:1/none")

    async def handler(request, context):
        return await db.read(lambda conn: conn.execute(text("SELECT 1")))
    try:
        with pytest.raises(Unavailable):
            await invoke_unary(METHOD, handler, REQUEST, ())
    finally:
        await db.close()
    record = _line(caplog)
    assert f"rpc {METHOD} UNAVAILABLE " in record.getMessage()
    assert record.levelno == logging.WARNING and record.exc_info is None


async def test_an_unexpected_exception_is_internal_with_its_traceback(caplog):
    caplog.set_level(logging.INFO, "agentd.rpc")
    with pytest.raises(KeyError):
        await _call(KeyError("boom"))
    record = _line(caplog)
    assert f"rpc {METHOD} INTERNAL " in record.getMessage()
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "Internal server error" not in record.getMessage()  # the traceback says it all


async def test_an_unbuilt_rpc_is_unimplemented_without_a_traceback(caplog):
    caplog.set_level(logging.INFO, "agentd.rpc")
    with pytest.raises(NotImplementedError):
        await _call(NotImplementedError("Method not implemented!"))
    record = _line(caplog)
    assert f"rpc {METHOD} UNIMPLEMENTED " in record.getMessage() and record.exc_info is None


async def test_a_cancelled_call_is_one_cancelled_line(caplog):
    caplog.set_level(logging.INFO, "agentd.rpc")
    started = asyncio.Event()

    async def handler(request, context):
        started.set()
        await asyncio.sleep(60)
    task = asyncio.create_task(invoke_unary(METHOD, handler, REQUEST, ()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = _line(caplog)
    assert f"rpc {METHOD} CANCELLED " in record.getMessage() and record.exc_info is None


async def test_a_stream_closed_by_its_consumer_is_cancelled(caplog):
    caplog.set_level(logging.INFO, "agentd.rpc")

    async def handler(request, context):
        for n in range(10):
            yield n
    events = invoke_stream("/agentd.v1.AgentsService/StreamTurn", handler, REQUEST, ())
    assert await anext(events) == 0
    await events.aclose()
    assert " CANCELLED " in _line(caplog).getMessage()
