#!/usr/bin/env python3
"""Where a turn's CPU goes: each part of a simple streamed turn measured on its own, on this
machine, so that `make bench`'s agentd CPU per turn can be read against what the libraries
agentd stands on cost by themselves.

    .venv/bin/python bench/parts.py              # about a minute
    .venv/bin/python bench/parts.py --calls 1000

The parts (CPU per turn, each in a process of its own where it is a server):
- grpc: a bare grpc.aio server with agentd's AgentsService messages and no agentd code,
  answering StreamTurn with the 10 events of a bench turn, and CreateTurn with one message.
- model call: agentd's openai provider streaming the fake model's answer (the SDK's POST,
  aiohttp, the SSE chunks), against `python -m agentd.testing.fake_openai` as the bench runs it.
- storage: the stores' two transactions of a turn (start: the session's turns not held and
  the new turn; end: the step, the events and the status), SQLite, inline on the loop, in
  20-turn sessions (a start counts the session's earlier turns).
- engine: TurnEngine start to turn_complete with the model call answered in-process at once
  (the same six deltas): the run machinery, the turn loop and storage, no gRPC, no HTTP.
agentd's own code is then about (the bench's agentd CPU per turn) - grpc - model call; the
engine line holds storage and the rest of agentd's own work without the transport.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import grpc

    from agentd.config import ModelConfig, ProviderConfig
    from agentd.engine.runs import Runs
    from agentd.engine.turns.engine import TurnEngine
    from agentd.inference.base import ChatChunk, ChatMessage, ChatRequest, Usage
    from agentd.inference.openai_provider import OpenAIProvider
    from agentd.inference.registry import ModelRegistry
    from agentd.storage import Database, Repository
    from agentd.storage.agents import NO_TURNS, AgentStore, KnownTurns
    from agentd.storage.events import EventStore
    from agentd.testing.process import cpu_seconds
    from agentd.v1 import agent_messages_pb2 as msg
    from agentd.v1 import agent_resources_pb2 as t
    from agentd.v1 import agents_pb2 as pb
    from agentd.v1 import agents_pb2_grpc
    from agentd.v1 import turn_events_pb2 as te
except ImportError as e:
    sys.exit(f"parts: {e}. Run it with the project's venv: .venv/bin/python bench/parts.py")

from run import REPLY_TEXT as REPLY  # the fake as the benchmark runs it
from run import start_fake, stop_fake

DELTAS = [REPLY[i:i + 8] for i in range(0, len(REPLY), 8)]  # the fake's 8-character chunks


async def per_call(call, calls: int, cpu=time.process_time) -> float:
    """CPU ms per call of `call` (after a warm-up of a tenth as many)."""
    for _ in range(max(calls // 10, 20)):
        await call()
    before = cpu()
    for _ in range(calls):
        await call()
    return 1000 * (cpu() - before) / calls


# ---------------------------------------------------------------- grpc


def turn_events() -> list[te.TurnEvent]:
    """The 10 events of a bench turn: turn_start, step_start, six text deltas, step_complete
    and turn_complete (with the turn and its step)."""
    turn = t.Turn(turn_id="turn_" + "0" * 32, session_id="sess_" + "0" * 32,
                  output_message=msg.CompletionMessage(content=msg.InterleavedContent(text=REPLY)))
    step = t.AgentStep(inference=t.InferenceStep(turn_id=turn.turn_id, step_id="step_" + "0" * 32,
                                                 model_response=turn.output_message))
    turn.steps.append(step)
    payloads = [te.TurnEventPayload(turn_start=te.TurnStartPayload(turn_id=turn.turn_id)),
                te.TurnEventPayload(step_start=te.StepStartPayload(step_id=step.inference.step_id))]
    payloads += [te.TurnEventPayload(step_progress=te.StepProgressPayload(
        step_id=step.inference.step_id, delta=te.ContentDelta(text=te.TextDelta(text=d)))) for d in DELTAS]
    payloads += [te.TurnEventPayload(step_complete=te.StepCompletePayload(step_id=step.inference.step_id,
                                                                         step_details=step)),
                 te.TurnEventPayload(turn_complete=te.TurnCompletePayload(turn=turn))]
    return [te.TurnEvent(turn_id=turn.turn_id, sequence_number=i, payload=p) for i, p in enumerate(payloads)]


class _BareAgents(agents_pb2_grpc.AgentsServiceServicer):
    """StreamTurn and CreateTurn answered with prepared messages: grpc.aio's own cost."""

    def __init__(self) -> None:
        self.events = turn_events()
        self.turn = self.events[-1].payload.turn_complete.turn

    async def StreamTurn(self, request, context):
        for event in self.events:
            response = pb.StreamTurnResponse()
            response.event.CopyFrom(event)
            yield response

    async def CreateTurn(self, request, context):
        return pb.CreateTurnResponse(turn=self.turn)


async def serve_bare(port_file: str) -> None:
    server = grpc.aio.server()
    agents_pb2_grpc.add_AgentsServiceServicer_to_server(_BareAgents(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(port_file).write_text(str(port))  # noqa: ASYNC240 - once, before serving
    await server.wait_for_termination()


def start_bare(workdir: str) -> tuple[subprocess.Popen, str]:
    """The bare grpc.aio server in a process of its own; returns it and its address."""
    port_file = Path(workdir) / "port"
    server = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port_file)])
    while not port_file.exists() or not port_file.read_text():
        if server.poll() is not None:
            sys.exit("parts: the bare gRPC server did not start")
        time.sleep(0.05)
    return server, f"127.0.0.1:{port_file.read_text()}"


async def grpc_parts(calls: int, server: subprocess.Popen, address: str) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agents_pb2_grpc.AgentsServiceStub(channel)
        request = pb.StreamTurnRequest(agent_id="a", session_id="s")

        async def stream():
            async for _ in stub.StreamTurn(request, timeout=10):
                pass

        async def unary():
            await stub.CreateTurn(pb.CreateTurnRequest(agent_id="a", session_id="s"), timeout=10)

        cpu = lambda: cpu_seconds(server.pid)  # noqa: E731
        return {"grpc StreamTurn (10 messages)": await per_call(stream, calls, cpu),
                "grpc CreateTurn (1 message)": await per_call(unary, calls, cpu)}


# ---------------------------------------------------------------- the model call


async def model_call_part(calls: int, fake_url: str) -> dict[str, float]:
    provider = OpenAIProvider("openai", fake_url)
    request = ChatRequest(model="bench-model", timeout_s=10, messages=[
        ChatMessage(role="system", content="x"), ChatMessage(role="user", content="hi")])

    async def call():
        async for _ in provider.stream_chat(request):
            pass
    try:
        return {"model call (agentd's openai provider)": await per_call(call, calls)}
    finally:
        await provider.close()


# ---------------------------------------------------------------- storage and the engine


async def _stores(workdir: str) -> tuple[Database, AgentStore, EventStore]:
    db = Database(f"sqlite:///{workdir}/parts.db")
    await db.migrate()
    repo = Repository(db)
    store = AgentStore(repo)
    agent = t.Agent(agent_id="agent_1", agent_config=t.AgentConfig(model="m", instructions="x"))
    agent.created_at.FromMicroseconds(1)
    await store.create_agent("o", agent)
    return db, store, EventStore(repo)


async def _session(store: AgentStore, number: int) -> str:
    session = t.AgentSession(session_id=f"sess_{number}", session_name="s")
    session.started_at.FromMicroseconds(1)
    await store.create_session("o", "agent_1", session)
    return session.session_id


async def storage_part(calls: int, turns_per_session: int = 20) -> dict[str, float]:
    events = [(e.sequence_number, e.SerializeToString()) for e in turn_events()]
    with tempfile.TemporaryDirectory() as workdir:
        db, store, event_store = await _stores(workdir)
        session_id, known, count = "", NO_TURNS, 0

        async def turn():
            nonlocal session_id, known, count
            if count % turns_per_session == 0:  # as the engine part and the bench's sessions
                session_id, known = await _session(store, count), NO_TURNS
            count += 1
            started = t.Turn(turn_id=f"turn_{count}", session_id=session_id)
            started.started_at.FromMicroseconds(10 + count)
            await store.start_turn("o", "agent_1", started, known=known, cached=set(), lease_until=2**62)
            step = t.AgentStep(inference=t.InferenceStep(turn_id=started.turn_id, step_id=f"step_{count}"))
            writes = [store.append_step_work("o", started.turn_id, step),
                      store.update_turn_work("o", started, "completed")]
            await event_store.append("o", started.turn_id, events, lambda conn: [w(conn) for w in writes])
            known = KnownTurns(known.count + 1, 10 + count, started.turn_id)
        try:
            return {f"storage (a turn's two transactions, {turns_per_session}-turn sessions)":
                    await per_call(turn, calls)}
        finally:
            await db.close()


class _Instant:
    """The model answered in-process at once with the fake's six deltas (no HTTP)."""

    provider_id = "openai"

    def stream_chat(self, request, **_):
        async def chunks():
            for delta in DELTAS:
                yield ChatChunk(text=delta)
            yield ChatChunk(finish_reason="stop")
            yield ChatChunk(usage=Usage(input_tokens=5, output_tokens=9, total_tokens=14))
        return chunks()

    async def close(self) -> None:
        pass


async def engine_part(calls: int, turns_per_session: int = 20) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        db, store, event_store = await _stores(workdir)
        registry = ModelRegistry([ProviderConfig(id="openai", type="openai", base_url="http://127.0.0.1:9/v1",
                                                 models=[ModelConfig(id="m")])])
        registry._providers["openai"] = _Instant()  # the one in-process stand-in: see _Instant
        engine = TurnEngine(store, Runs(event_store), registry)
        hi = [msg.TurnInputMessage(user=msg.UserMessage(content=msg.InterleavedContent(text="hi")))]
        session_id, count = "", 0

        async def turn():
            nonlocal session_id, count
            if count % turns_per_session == 0:
                session_id = await _session(store, count)
            count += 1
            events = await engine.start_turn("o", "agent_1", session_id, messages=hi, timeout_s=10)
            async with contextlib.aclosing(events):
                async for _ in events:
                    pass
        try:
            return {f"engine and storage, no transport ({turns_per_session}-turn sessions)":
                    await per_call(turn, calls)}
        finally:
            await db.close()


async def measure(calls: int, bare: subprocess.Popen, address: str, fake_url: str) -> dict[str, float]:
    rows: dict[str, float] = {}
    parts = {"grpc": lambda: grpc_parts(calls, bare, address),
             "model call": lambda: model_call_part(calls, fake_url),
             "storage": lambda: storage_part(calls), "engine": lambda: engine_part(calls)}
    for name, part in parts.items():
        print(f"measuring {name} ...", file=sys.stderr)
        rows.update(await part())
    return rows


def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        bare, address = start_bare(workdir)
        fake, fake_url = start_fake(Path(workdir))
        try:
            rows = asyncio.run(measure(calls, bare, address, fake_url))
        finally:
            bare.terminate()
            bare.wait()
            stop_fake(fake)
    print(f"| part (load average {os.getloadavg()[0]:.2f}) | CPU ms per turn |\n|---|---:|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per part")
    parser.add_argument("--serve-bare", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        asyncio.run(serve_bare(args.serve_bare))
    else:
        main(args.calls)
