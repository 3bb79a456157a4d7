#!/usr/bin/env python3
"""`make bench`: unary latency and throughput of agentd, over gRPC and over the HTTP gateway.

agentd runs as a subprocess (`python -m agentd.cli serve`, as a user would run it) on loopback
ports with a throwaway database; this process is the load generator. For every cell
(op x concurrency x transport) it runs N asyncio workers, each looping request -> record
latency, first for a short warm-up and then for a bounded measurement window (a time budget
AND a request cap, so a cell always ends by itself). The results are printed as Markdown on
stdout and saved to bench/results/<timestamp>.md and .json.

Progress goes to stderr so that stdout is exactly the report. Exit status: 0 when the run
completed (request errors and budget MISSes are reported, not failures), 1 when agentd could
not start or died mid-run (its log is printed), 2 for bad flags.

See bench/README.md for the flags and what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]

try:
    import grpc
    import httpx
    import openai

    from agentd.config import Settings
    from agentd.testing import AgentdProcess, AgentdStartError, start_agentd
    from agentd.v1 import agent_messages_pb2 as msg
    from agentd.v1 import agent_resources_pb2 as t
    from agentd.v1 import agents_pb2 as pb
    from agentd.v1 import agents_pb2_grpc, models_pb2, models_pb2_grpc, responses_pb2, responses_pb2_grpc
    from agentd.v1 import response_resource_pb2 as rt
except ImportError as e:  # the usual cause: run with a Python that is not the project's venv
    sys.exit(f"bench: {e}. Run it with the project's venv: `make bench` or `.venv/bin/python bench/run.py`.")

# ListModels touches no database: it is the floor of the same stack (transport, call
# pipeline, codec), measured in the same run, so GetAgent - ListModels is what storage costs.
UNARY_OPS = ("GetAgent", "CreateSession", "ListModels")
# Turns against the fake model; `Direct` is the fake called straight with the openai SDK
# (streaming the same reply), measured in the same run: turn p50 - Direct p50 is agentd's overhead.
TURN_OPS = ("Direct", "StreamTurn", "CreateTurn")
# Responses against the same fake: what agentd adds is measured against `Direct` likewise.
RESPONSE_OPS = ("CreateResponse", "StreamResponse")
# The ops that call the model (and are compared with Direct).
MODEL_OPS = ("StreamTurn", "CreateTurn", *RESPONSE_OPS)
OPS = UNARY_OPS + TURN_OPS + RESPONSE_OPS
DEFAULT_OPS = (*UNARY_OPS, "StreamTurn", "CreateTurn", *RESPONSE_OPS)
TRANSPORTS = ("grpc", "http")
BUDGET_MS = 1.0  # the budget: both checks below compare against 1 ms
# The turns issue's budget (informational like the others).
TURN_OVERHEAD_BUDGET_MS = 2.0  # turn p50 - Direct p50, gRPC, concurrency 1
TURN_CPU_BUDGET_MS = 3.0  # agentd CPU per turn, gRPC, concurrency 1
IDLE_STREAM_BUDGET_KB = 50.0  # agentd RSS per idle open turn stream
# The responses issue's budget (informational like the others).
RESPONSE_CPU_BUDGET_MS = 3.0  # agentd CPU per non-streaming response, gRPC, concurrency 1
RESPONSE_THROUGHPUT_BUDGET = 300.0  # responses/s over gRPC at concurrency 64 on SQLite, 0 errors
RESPONSE_OVERHEAD_BUDGET_MS = 2.0  # response p50 - Direct p50, gRPC, concurrency 1
FIRST_EVENT_BUDGET_MS = 2.0  # StreamResponse's first event (response.created), gRPC, concurrency 1
BENCH_MODEL = "bench-model"  # the fake answers it at once
HANG_MODEL = "bench-hang"  # the fake never answers it: turns that stay open
REPLY_TEXT = "Hello from the fake model, answering at once."
USER_TEXT = "hi"
INSTRUCTIONS = "x"
START_TIMEOUT_S = 60.0
SERVER_GRACE_S = 2  # SIGTERM drain; the load has stopped by then, so short is fine
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


class BenchError(Exception):
    """The run cannot go on (agentd did not start or died); the message carries its log."""


# --------------------------------------------------------------------------------------------
# agentd as a subprocess


def reply_text(words: int) -> str:
    """The fake's reply: REPLY_TEXT, or `words` words of "token" (6 characters with the space)."""
    return " ".join(["token"] * words) if words else REPLY_TEXT


def start_fake(workdir: Path, text: str = REPLY_TEXT,
               chunk_delay_ms: float = 0.0) -> tuple[subprocess.Popen, str]:
    """The fake model (agentd.testing.fake_openai) in a process of its own, so that its CPU is
    neither agentd's nor the load generator's; returns it and its base URL."""
    log = (workdir / "fake_openai.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "agentd.testing.fake_openai", "--text", text,
         "--chunk-delay", str(chunk_delay_ms / 1000), "--hang-model", HANG_MODEL],
        stdout=subprocess.PIPE, stderr=log, text=True)
    line = process.stdout.readline().strip()  # the base URL, once it accepts connections
    if not line.startswith("http"):
        process.kill()
        log_text = (workdir / "fake_openai.log").read_text()
        raise BenchError(f"the fake model server did not start; its log:\n{log_text}")
    return process, line


def stop_fake(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def event_loop() -> str:
    """The event loop agentd is run on: AGENTD_EVENT_LOOP as this process has it, else the
    setting's default."""
    return os.environ.get("AGENTD_EVENT_LOOP", Settings.model_fields["event_loop"].default)


def start_server(workdir: Path, database_url: str | None, fake_url: str | None = None,
                 profile_to: Path | None = None) -> AgentdProcess:
    # The test kit drops the caller's AGENTD_* variables: the loop to measure is passed on.
    env = {"AGENTD_LOG_LEVEL": "warning", "AGENTD_GRACE_PERIOD_S": str(SERVER_GRACE_S),
           "AGENTD_EVENT_LOOP": event_loop()}
    if fake_url:
        # The simple openai provider: the fake serves both models, listed here so that agentd
        # does not ask its /v1/models at start.
        env.update(AGENTD_OPENAI_BASE_URL=fake_url, AGENTD_OPENAI_MODELS=f"{BENCH_MODEL},{HANG_MODEL}")
    if database_url:
        env["AGENTD_DATABASE_URL"] = database_url
    # Same process group on purpose: a Ctrl-C (or make being interrupted) reaches agentd too,
    # which shuts down gracefully on SIGINT; our `finally` then only reaps it.
    return start_agentd(workdir, env, die_with_parent=True, profile_to=profile_to)


async def wait_serving(server: AgentdProcess, timeout: float = START_TIMEOUT_S) -> None:  # noqa: ASYNC109
    # `timeout` bounds a blocking health poll that runs in a thread, not an awaitable.
    try:
        await asyncio.to_thread(server.wait_serving, timeout)
    except AgentdStartError as e:
        raise BenchError(str(e)) from None


def check_alive(server: AgentdProcess) -> None:
    if server.process.poll() is not None:
        raise BenchError(f"agentd exited with status {server.process.returncode} during the run; "
                         f"its log:\n{server.log()}")


# --------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway database per run, so runs never see each other's rows


async def create_pg_database(admin_url: str) -> tuple[str, str]:
    """Creates agentd_bench_<random>; returns (its name, the SQLAlchemy URL agentd uses)."""
    import asyncpg

    name = f"agentd_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    return name, urlunsplit(parts._replace(scheme="postgresql+asyncpg", path=f"/{name}"))


async def drop_pg_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        # FORCE: agentd's pool may still hold connections if it had to be killed.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------
# Load generation

Call = Callable[[], Awaitable[object]]


class HttpStatusError(Exception):
    def __init__(self, status: int, detail: str = ""):
        super().__init__(f"HTTP {status}" + (f": {detail[:200]}" if detail else ""))
        self.status = status


class TurnNotCompleted(Exception):
    """The call succeeded but the turn did not end with turn_complete / status completed."""

    def __init__(self, how: str, detail: str = ""):
        super().__init__(f"turn {how}" + (f": {detail[:200]}" if detail else ""))
        self.how = how


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"grpc {exc.code().name}"
    if isinstance(exc, HttpStatusError):
        return f"HTTP {exc.status}"
    if isinstance(exc, TurnNotCompleted):
        return f"turn {exc.how}"
    if isinstance(exc, openai.APIStatusError):
        return f"openai HTTP {exc.status_code}"
    return type(exc).__name__


def grpc_call(channel: grpc.aio.Channel, op: str, agent_id: str, timeout: float) -> Call:
    # Requests are built once: per-call message construction is client-side cost that would
    # blur the server latency we are after (the HTTP side likewise reuses its encoded body).
    if op == "ListModels":
        models = models_pb2_grpc.ModelsServiceStub(channel)
        listing = models_pb2.ListModelsRequest()
        return lambda: models.ListModels(listing, timeout=timeout)
    stub = agents_pb2_grpc.AgentsServiceStub(channel)
    if op == "GetAgent":
        get = pb.GetAgentRequest(agent_id=agent_id)
        return lambda: stub.GetAgent(get, timeout=timeout)
    create = pb.CreateSessionRequest(agent_id=agent_id, session_name="bench")
    return lambda: stub.CreateSession(create, timeout=timeout)


def http_call(client: httpx.AsyncClient, op: str, agent_id: str) -> Call:
    if op in ("GetAgent", "ListModels"):
        path = f"/v1alpha/agents/{agent_id}" if op == "GetAgent" else "/v1/models"

        async def call() -> None:
            response = await client.get(path)
            if response.status_code != 200:
                raise HttpStatusError(response.status_code)
    else:
        path = f"/v1alpha/agents/{agent_id}/session"
        body = json.dumps({"session_name": "bench"}).encode()
        headers = {"content-type": "application/json"}

        async def call() -> None:
            response = await client.post(path, content=body, headers=headers)
            if response.status_code != 200:
                raise HttpStatusError(response.status_code)
    return call


# Turns. Each worker runs its turns one after the other in a session of its own (a session
# refuses a second turn while one runs: SESSION_BUSY). The history agentd rebuilds for each
# turn grows with the session, so --turns-per-session (when set) moves a worker to a fresh
# session after that many turns; the new session is created between two timed turns.


class TurnWorker:
    """One worker's session; `session_id()` rotates it every `per_session` turns (0: never)."""

    def __init__(self, new_session: Callable[[], Awaitable[str]], first: str, per_session: int):
        self._new, self._id, self._per, self._turns = new_session, first, per_session, 0
        self.max_turns_in_session = 0

    async def session_id(self) -> str:
        if self._per and self._turns >= self._per:
            self._id, self._turns = await self._new(), 0
        self._turns += 1
        self.max_turns_in_session = max(self.max_turns_in_session, self._turns)
        return self._id


def user_message() -> msg.TurnInputMessage:
    return msg.TurnInputMessage(user=msg.UserMessage(content=msg.InterleavedContent(text=USER_TEXT)))


async def read_grpc_stream(call) -> tuple[int | None, Any]:
    """Reads a gRPC stream of {event} messages to its end: when its first event came
    (perf_counter_ns) and its last event."""
    first, last = None, None
    async for response in call:
        if first is None:
            first = time.perf_counter_ns()
        last = response.event
    return first, last


def grpc_turn_call(stub: agents_pb2_grpc.AgentsServiceStub, op: str, agent_id: str, worker: TurnWorker,
                   timeout: float) -> Call:
    messages = [user_message()]
    if op == "StreamTurn":
        async def call() -> int | None:
            request = pb.StreamTurnRequest(agent_id=agent_id, session_id=await worker.session_id(),
                                           messages=messages)
            first, event = await read_grpc_stream(stub.StreamTurn(request, timeout=timeout))
            last = event.payload if event is not None else None
            kind = last.WhichOneof("payload") if last is not None else "no events"
            if kind != "turn_complete":
                detail = last.turn_failed.turn.error.message if kind == "turn_failed" else ""
                raise TurnNotCompleted(kind, detail)
            return first
    else:
        async def call() -> None:
            request = pb.CreateTurnRequest(agent_id=agent_id, session_id=await worker.session_id(),
                                           messages=messages)
            turn = (await stub.CreateTurn(request, timeout=timeout)).turn
            if turn.status != t.TURN_STATUS_COMPLETED:
                raise TurnNotCompleted(t.TurnStatus.Name(turn.status).removeprefix("TURN_STATUS_").lower(),
                                       turn.error.message)
    return call


async def read_sse(client: httpx.AsyncClient, path: str, body: bytes) -> tuple[int | None, dict]:
    """POSTs `body` and reads the SSE stream to its end: when its first event came
    (perf_counter_ns) and its last event's data."""
    first, last = None, ""
    async with client.stream("POST", path, content=body,
                             headers={"content-type": "application/json"}) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise HttpStatusError(response.status_code, text)
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                if first is None:
                    first = time.perf_counter_ns()
                last = line
    return first, json.loads(last[5:]) if last else {}


def http_turn_call(client: httpx.AsyncClient, op: str, agent_id: str, worker: TurnWorker) -> Call:
    # The legacy route that both SDK generations use; the body's "stream" flag picks the RPC.
    headers = {"content-type": "application/json"}
    stream = op == "StreamTurn"
    body = json.dumps({"messages": [{"role": "user", "content": USER_TEXT}], "stream": stream}).encode()
    if stream:
        async def call() -> int | None:
            path = f"/v1alpha/agents/{agent_id}/session/{await worker.session_id()}/turn"
            first, data = await read_sse(client, path, body)
            kind = (data.get("event") or {}).get("payload", {}).get("event_type")
            if kind != "turn_complete":
                raise TurnNotCompleted("error event" if "error" in data else str(kind or "no events"),
                                       json.dumps(data.get("error", ""))[:200])
            return first
    else:
        async def call() -> None:
            path = f"/v1alpha/agents/{agent_id}/session/{await worker.session_id()}/turn"
            response = await client.post(path, content=body, headers=headers)
            if response.status_code != 200:
                raise HttpStatusError(response.status_code, response.text)
            turn = response.json()
            if turn.get("status") != "completed":
                raise TurnNotCompleted(str(turn.get("status")), json.dumps(turn.get("error", ""))[:200])
    return call


class ResponseNotCompleted(Exception):
    def __init__(self, status: str, detail: str = ""):
        super().__init__(f"response ended {status}" + (f": {detail}" if detail else ""))


RESPONSE_BODY = {"model": BENCH_MODEL, "input": USER_TEXT, "instructions": INSTRUCTIONS}


def grpc_response_call(stub: responses_pb2_grpc.ResponsesServiceStub, op: str, timeout: float) -> Call:
    if op == "StreamResponse":
        request = responses_pb2.StreamResponseRequest(model=BENCH_MODEL, instructions=INSTRUCTIONS)
        request.input.text = USER_TEXT

        async def call() -> int | None:
            first, last = await read_grpc_stream(stub.StreamResponse(request, timeout=timeout))
            kind = last.WhichOneof("event") if last is not None else "no events"
            if kind != "completed":
                detail = last.failed.response.error.message if kind == "failed" else ""
                raise ResponseNotCompleted(kind, detail)
            return first
    else:
        unary = responses_pb2.CreateResponseRequest(model=BENCH_MODEL, instructions=INSTRUCTIONS)
        unary.input.text = USER_TEXT

        async def call() -> None:
            response = (await stub.CreateResponse(unary, timeout=timeout)).response
            if response.status != rt.RESPONSE_STATUS_COMPLETED:
                raise ResponseNotCompleted(str(response.status), response.error.message)
    return call


def http_response_call(client: httpx.AsyncClient, op: str) -> Call:
    """POST /v1/responses as the openai SDK sends it; its "stream" flag picks the RPC."""
    headers = {"content-type": "application/json"}
    stream = op == "StreamResponse"
    body = json.dumps({**RESPONSE_BODY, "stream": stream}).encode()
    if stream:
        async def call() -> int | None:
            first, data = await read_sse(client, "/v1/responses", body)
            if data.get("type") != "response.completed":
                raise ResponseNotCompleted(str(data.get("type", "no events")), json.dumps(data)[:200])
            return first
    else:
        async def call() -> None:
            response = await client.post("/v1/responses", content=body, headers=headers)
            if response.status_code != 200:
                raise HttpStatusError(response.status_code, response.text)
            data = response.json()
            if data.get("status") != "completed":
                raise ResponseNotCompleted(str(data.get("status")), json.dumps(data.get("error", ""))[:200])
    return call


def direct_call(client: openai.AsyncOpenAI) -> Call:
    """The fake model called straight, as agentd calls it: streamed, with usage, same prompt."""
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": USER_TEXT}]

    async def call() -> int | None:
        first = None
        stream = await client.chat.completions.create(model=BENCH_MODEL, messages=messages, stream=True,
                                                      stream_options={"include_usage": True})
        async for _chunk in stream:
            if first is None:
                first = time.perf_counter_ns()
        return first
    return call


@dataclass
class Sample:
    latencies_ns: list[int] = field(default_factory=list)
    first_event_ns: list[int] = field(default_factory=list)  # streams: send -> first event
    errors: Counter = field(default_factory=Counter)
    first_error: str = ""
    in_window: int = 0  # successes that completed inside the measurement window
    window_s: float = 0.0


async def drive(calls: list[Call], seconds: float, max_requests: int) -> Sample:
    """One worker per call, each looping request -> latency until the time budget or the
    request cap is reached.

    The cap is shared (not per worker) so that it bounds the cell's total. Workers only check
    the budget between requests; each request is itself bounded by its timeout, so the cell
    overruns the budget by at most one request. Those last in-flight requests still count for
    latency (dropping them would favour fast ones), but throughput counts only completions
    inside the window: during the drain fewer than N workers are busy, and at high latency
    that tail would otherwise deflate req/s noticeably.
    """
    sample = Sample()
    issued = 0
    started = time.perf_counter_ns()
    deadline = started + int(seconds * 1e9)

    async def worker(call: Call) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter_ns() < deadline:
            issued += 1
            start = time.perf_counter_ns()
            try:
                first = await call()  # streams return when their first event arrived
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                sample.errors[error_kind(exc)] += 1
                sample.first_error = sample.first_error or f"{error_kind(exc)}: {exc}"[:300]
            else:
                done = time.perf_counter_ns()
                sample.latencies_ns.append(done - start)
                if isinstance(first, int):
                    sample.first_event_ns.append(first - start)
                sample.in_window += done <= deadline

    await asyncio.gather(*(worker(call) for call in calls))
    # The window ends at the deadline, or earlier when the request cap ended the cell first.
    sample.window_s = (min(time.perf_counter_ns(), deadline) - started) / 1e9
    return sample


def percentile(sorted_ns: list[int], p: float) -> float | None:
    """Nearest-rank percentile in ms (no interpolation: every value reported was observed)."""
    if not sorted_ns:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


@dataclass
class Cell:
    op: str
    transport: str
    concurrency: int
    requests: int  # successful responses, including those that completed during the drain
    errors: int
    error_kinds: dict[str, int]
    first_error: str
    seconds: float  # the measurement window
    throughput: float  # successful responses completed inside the window, per second
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    # CPU per completed request (ok + errors) during the measurement, client process and agentd:
    # latency alone cannot tell the gateway's cost from the HTTP client library's.
    client_cpu_ms: float | None = None
    server_cpu_ms: float | None = None
    # Streams (StreamTurn, Direct): time from sending the request to the first event, ms.
    first_event_p50_ms: float | None = None
    first_event_p99_ms: float | None = None
    # Turns: the most turns one session held by the end of the cell (warm-up included).
    turns_per_session_max: int | None = None


def summarize(op: str, transport: str, concurrency: int, sample: Sample) -> Cell:
    lat = sorted(sample.latencies_ns)
    first = sorted(sample.first_event_ns)
    return Cell(
        first_event_p50_ms=percentile(first, 50), first_event_p99_ms=percentile(first, 99),
        op=op, transport=transport, concurrency=concurrency, requests=len(lat),
        errors=sum(sample.errors.values()), error_kinds=dict(sample.errors),
        first_error=sample.first_error, seconds=round(sample.window_s, 3),
        throughput=sample.in_window / sample.window_s if sample.window_s > 0 else 0.0,
        p50_ms=percentile(lat, 50), p90_ms=percentile(lat, 90), p99_ms=percentile(lat, 99),
        mean_ms=sum(lat) / len(lat) / 1e6 if lat else None, max_ms=lat[-1] / 1e6 if lat else None)


async def measure_cell(server: AgentdProcess, args: argparse.Namespace, op: str, transport: str,
                       concurrency: int, agent_id: str) -> Cell:
    # Fresh connections per cell, so both transports start equal; the warm-up pays for their setup.
    if transport == "grpc":
        # One channel (one HTTP/2 connection) shared by all workers, as a gRPC client normally has.
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            call = grpc_call(channel, op, agent_id, args.request_timeout)
            return await _warm_then_measure(server, [call] * concurrency, args, op, transport)
    # `concurrency` keep-alive connections, as one client whose pool is sized to the concurrency would
    # hold, but as one single-connection client per worker: httpx's shared pool costs client CPU
    # that grows with the number of connections (encode/httpx#3215). Measured here at 64 workers:
    # ~18 ms client CPU per request shared vs ~1.8 ms split, which made the load generator, not
    # agentd, the bottleneck of the HTTP cells.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=server.base_url, limits=limits, timeout=httpx.Timeout(args.request_timeout)))
            for _ in range(concurrency)]
        calls = [http_call(client, op, agent_id) for client in clients]
        return await _warm_then_measure(server, calls, args, op, transport)


async def measure_turn_cell(server: AgentdProcess, args: argparse.Namespace, op: str, transport: str,
                            concurrency: int, agent_id: str, admin: agents_pb2_grpc.AgentsServiceStub,
                            fake_url: str) -> Cell:
    if op == "Direct":
        # One client shared by the workers, as agentd holds one per endpoint.
        async with openai.AsyncOpenAI(base_url=fake_url, api_key="none", max_retries=0,
                                      timeout=args.request_timeout) as client:
            return await _warm_then_measure(server, [direct_call(client)] * concurrency, args, op, transport)

    async def new_session() -> str:
        reply = await admin.CreateSession(pb.CreateSessionRequest(agent_id=agent_id, session_name="bench"),
                                          timeout=args.request_timeout)
        return reply.session_id

    # Sessions are created before the cell (a fresh one per worker and cell, for both transports).
    firsts = await asyncio.gather(*(new_session() for _ in range(concurrency)))
    workers = [TurnWorker(new_session, first, args.turns_per_session) for first in firsts]
    if transport == "grpc":
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = agents_pb2_grpc.AgentsServiceStub(channel)
            calls = [grpc_turn_call(stub, op, agent_id, w, args.request_timeout) for w in workers]
            cell = await _warm_then_measure(server, calls, args, op, transport)
    else:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # see measure_cell
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(httpx.AsyncClient(
                base_url=server.base_url, limits=limits, timeout=httpx.Timeout(args.request_timeout)))
                for _ in range(concurrency)]
            calls = [http_turn_call(c, op, agent_id, w) for c, w in zip(clients, workers, strict=True)]
            cell = await _warm_then_measure(server, calls, args, op, transport)
    cell.turns_per_session_max = max(w.max_turns_in_session for w in workers)
    return cell


async def measure_response_cell(server: AgentdProcess, args: argparse.Namespace, op: str, transport: str,
                                concurrency: int) -> Cell:
    if transport == "grpc":
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = responses_pb2_grpc.ResponsesServiceStub(channel)
            calls = [grpc_response_call(stub, op, args.request_timeout)] * concurrency
            return await _warm_then_measure(server, calls, args, op, transport)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # see measure_cell
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=server.base_url, limits=limits, timeout=httpx.Timeout(args.request_timeout)))
            for _ in range(concurrency)]
        calls = [http_response_call(c, op) for c in clients]
        return await _warm_then_measure(server, calls, args, op, transport)


async def _warm_then_measure(server: AgentdProcess, calls: list[Call], args: argparse.Namespace, op: str,
                             transport: str) -> Cell:
    if args.warmup > 0:
        # Warm-up results are discarded: they include connection setup and first-use costs.
        await drive(calls, args.warmup, args.max_requests)
    client0, server0 = time.process_time(), server.cpu_seconds()  # process_time: all our threads
    sample = await drive(calls, args.seconds, args.max_requests)
    client1, server1 = time.process_time(), server.cpu_seconds()
    cell = summarize(op, transport, len(calls), sample)
    done = cell.requests + cell.errors
    if done:
        cell.client_cpu_ms = (client1 - client0) / done * 1e3
        if server0 is not None and server1 is not None:
            cell.server_cpu_ms = (server1 - server0) / done * 1e3
    return cell


async def create_agent(admin: agents_pb2_grpc.AgentsServiceStub, model: str = "m") -> str:
    config = t.AgentConfig(model=model, instructions=INSTRUCTIONS)
    reply = await admin.CreateAgent(pb.CreateAgentRequest(agent_config=config), timeout=10)
    return reply.agent_id


# --------------------------------------------------------------------------------------------
# Idle open turn streams: agentd's memory per stream


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


async def measure_idle_streams(server: AgentdProcess, admin: agents_pb2_grpc.AgentsServiceStub, count: int,
                               timeout: float) -> dict:  # noqa: ASYNC109 - a per-RPC deadline
    """`count` StreamTurn calls on an agent whose model never answers, each in its own session:
    every turn has started (turn_start, step_start) and waits on the model. agentd's RSS is read
    before they open and once all are open; then they are cancelled (the client goes away, so
    agentd cancels the turns) and the RSS is read again."""
    agent_id = await create_agent(admin, HANG_MODEL)
    sem = asyncio.Semaphore(64)

    async def new_session() -> str:
        async with sem:
            return (await admin.CreateSession(pb.CreateSessionRequest(agent_id=agent_id, session_name="idle"),
                                              timeout=timeout)).session_id

    sessions = await asyncio.gather(*(new_session() for _ in range(count)))
    # Streams are spread over channels of at most 100 (a server may cap concurrent HTTP/2 streams
    # per connection at 100); a local subchannel pool gives each channel its own connection.
    per_channel = 100
    channels = [grpc.aio.insecure_channel(server.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(math.ceil(count / per_channel))]
    calls = []
    try:
        await asyncio.sleep(1.0)  # let the session writes settle before the baseline
        before = rss_kb(server.process.pid)
        opened = time.perf_counter()
        waiting = 0
        for i, session_id in enumerate(sessions):
            stub = agents_pb2_grpc.AgentsServiceStub(channels[i // per_channel])
            calls.append(stub.StreamTurn(pb.StreamTurnRequest(agent_id=agent_id, session_id=session_id,
                                                              messages=[user_message()])))

        async def until_waiting(call) -> bool:
            # turn_start, then step_start of the inference step: the model call is out.
            async for response in call:
                if response.event.payload.HasField("step_start"):
                    return True
            return False

        results = await asyncio.wait_for(asyncio.gather(*(until_waiting(c) for c in calls),
                                                        return_exceptions=True), timeout=60)
        waiting = sum(r is True for r in results)
        open_s = time.perf_counter() - opened
        await asyncio.sleep(2.0)  # let allocations settle
        check_alive(server)
        during = rss_kb(server.process.pid)
        cpu0 = server.cpu_seconds()
        await asyncio.sleep(2.0)
        cpu1 = server.cpu_seconds()
        errors = Counter(error_kind(r) for r in results if isinstance(r, BaseException))
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
    # agentd cancels each turn when its stream goes; wait until none is left in progress.
    await asyncio.sleep(2.0)
    check_alive(server)
    after = rss_kb(server.process.pid)
    known = before is not None and during is not None
    per_stream = (during - before) / waiting if known and waiting else None
    return {"streams": count, "waiting": waiting, "errors": dict(errors), "open_seconds": round(open_s, 2),
            "rss_before_kb": before, "rss_open_kb": during, "rss_after_close_kb": after,
            "kb_per_stream": per_stream,
            "idle_cpu_ms_per_s": (cpu1 - cpu0) / 2.0 * 1e3 if cpu0 is not None and cpu1 is not None else None}


# --------------------------------------------------------------------------------------------
# Report


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def md_table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    """A Markdown table padded so that it also reads well as plain text on a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def ratios(cells: list[Cell]) -> list[dict]:
    by_key = {(c.op, c.transport, c.concurrency): c for c in cells}
    out = []
    for c in cells:
        if c.transport != "grpc":
            continue
        http = by_key.get((c.op, "http", c.concurrency))
        if http is None:
            continue
        g, h = c.p50_ms, http.p50_ms
        gc, hc = c.server_cpu_ms, http.server_cpu_ms
        out.append({"op": c.op, "concurrency": c.concurrency, "grpc_p50_ms": g, "http_p50_ms": h,
                    "ratio": h / g if g and h is not None else None,
                    "added_p50_ms": h - g if g is not None and h is not None else None,
                    "added_server_cpu_ms": hc - gc if gc is not None and hc is not None else None})
    return out


def budget(cells: list[Cell], ratio_rows: list[dict], backend: str) -> list[dict]:
    """The issue's two budgets, as PASS / MISS / n/a lines; informational only."""
    lines = []
    get1 = next((c for c in cells if (c.op, c.transport, c.concurrency) == ("GetAgent", "grpc", 1)), None)
    name = f"GetAgent p50 over gRPC at concurrency 1 on SQLite <= {BUDGET_MS:g} ms"
    if get1 is None or get1.p50_ms is None:
        lines.append({"check": name, "verdict": "n/a", "detail": "not measured (needs op GetAgent, "
                      "transport grpc, concurrency 1)"})
    elif backend != "sqlite":
        lines.append({"check": name, "verdict": "n/a", "detail": f"the budget is defined on SQLite; "
                      f"this run ({backend}): {get1.p50_ms:.2f} ms"})
    else:
        lines.append({"check": name, "verdict": "PASS" if get1.p50_ms <= BUDGET_MS else "MISS",
                      "detail": f"{get1.p50_ms:.2f} ms", "value_ms": get1.p50_ms})
    c1 = [r for r in ratio_rows if r["concurrency"] == 1 and r["op"] in UNARY_OPS]
    if not c1:
        lines.append({"check": f"gateway adds <= {BUDGET_MS:g} ms (HTTP p50 - gRPC p50, concurrency 1)",
                      "verdict": "n/a", "detail": "not measured (needs both transports at concurrency 1)"})
    for r in c1:
        check = f"{r['op']}: gateway adds <= {BUDGET_MS:g} ms (HTTP p50 - gRPC p50, concurrency 1)"
        if r["added_p50_ms"] is None:
            lines.append({"check": check, "verdict": "n/a", "detail": "no successful requests"})
        else:
            lines.append({"check": check, "verdict": "PASS" if r["added_p50_ms"] <= BUDGET_MS else "MISS",
                          "detail": f"{r['added_p50_ms']:+.2f} ms", "value_ms": r["added_p50_ms"]})
    return lines


def overheads(cells: list[Cell]) -> list[dict]:
    """Turn latency over the fake called directly at the same concurrency, same run."""
    direct = {c.concurrency: c for c in cells if c.op == "Direct"}
    out = []
    for c in cells:
        d = direct.get(c.concurrency)
        if c.op not in MODEL_OPS or d is None:
            continue

        def minus(a: float | None, b: float | None) -> float | None:
            return a - b if a is not None and b is not None else None
        out.append({"op": c.op, "transport": c.transport, "concurrency": c.concurrency,
                    "turn_p50_ms": c.p50_ms, "direct_p50_ms": d.p50_ms,
                    "overhead_p50_ms": minus(c.p50_ms, d.p50_ms),
                    "turn_p99_ms": c.p99_ms, "direct_p99_ms": d.p99_ms,
                    "overhead_p99_ms": minus(c.p99_ms, d.p99_ms),
                    "first_event_p50_ms": c.first_event_p50_ms, "server_cpu_ms": c.server_cpu_ms,
                    "errors": c.errors})
    return out


def turn_budget(cells: list[Cell], overhead_rows: list[dict], idle: dict | None) -> list[dict]:
    """The turns issue's budget, as PASS / MISS / n/a lines; informational only."""
    lines = []
    measured = {r["op"] for r in overhead_rows} & {"StreamTurn", "CreateTurn"}
    for op in ("StreamTurn", "CreateTurn"):
        if op not in measured:
            continue
        row = next((r for r in overhead_rows
                    if (r["op"], r["transport"], r["concurrency"]) == (op, "grpc", 1)), None)
        check = (f"{op}: p50 overhead over the fake called directly <= {TURN_OVERHEAD_BUDGET_MS:g} ms "
                 "(gRPC, concurrency 1)")
        if row is None or row["overhead_p50_ms"] is None:
            lines.append({"check": check, "verdict": "n/a", "detail": "not measured"})
        else:
            v = row["overhead_p50_ms"]
            lines.append({"check": check, "verdict": "PASS" if v <= TURN_OVERHEAD_BUDGET_MS else "MISS",
                          "detail": f"{v:+.2f} ms ({row['turn_p50_ms']:.2f} - {row['direct_p50_ms']:.2f})",
                          "value_ms": v})
        check = f"{op}: agentd CPU per turn <= {TURN_CPU_BUDGET_MS:g} ms (gRPC, concurrency 1)"
        if row is None or row["server_cpu_ms"] is None:
            lines.append({"check": check, "verdict": "n/a", "detail": "not measured"})
        else:
            v = row["server_cpu_ms"]
            lines.append({"check": check, "verdict": "PASS" if v <= TURN_CPU_BUDGET_MS else "MISS",
                          "detail": f"{v:.2f} ms", "value_ms": v})
    at256 = [c for c in cells if c.op in ("StreamTurn", "CreateTurn") and c.concurrency == 256]
    if measured:
        check = "0 turn errors at concurrency 256"
        if not at256:
            lines.append({"check": check, "verdict": "n/a", "detail": "not measured"})
        else:
            n = sum(c.errors for c in at256)
            lines.append({"check": check, "verdict": "PASS" if n == 0 else "MISS",
                          "detail": ", ".join(f"{c.op} {c.transport}: {c.errors}" for c in at256),
                          "value": n})
    if idle is not None:
        check = f"agentd RSS per idle open turn stream <= {IDLE_STREAM_BUDGET_KB:g} KB"
        v = idle.get("kb_per_stream")
        if v is None:
            lines.append({"check": check, "verdict": "n/a", "detail": "no stream opened"})
        else:
            lines.append({"check": check, "verdict": "PASS" if v <= IDLE_STREAM_BUDGET_KB else "MISS",
                          "detail": f"{v:.1f} KB ({idle['waiting']} streams)", "value_kb": v})
    return lines


def response_budget(cells: list[Cell], overhead_rows: list[dict], backend: str) -> list[dict]:
    """The responses issue's budget, as PASS / MISS / n/a lines; informational only."""
    def cell(op: str, concurrency: int) -> Cell | None:
        wanted = (op, "grpc", concurrency)
        return next((c for c in cells if (c.op, c.transport, c.concurrency) == wanted), None)

    def line(check: str, value: float | None, ok: Callable[[float], bool], detail: str) -> dict:
        if value is None:
            return {"check": check, "verdict": "n/a", "detail": "not measured"}
        return {"check": check, "verdict": "PASS" if ok(value) else "MISS", "detail": detail, "value": value}

    lines = []
    if not any(c.op in RESPONSE_OPS for c in cells):
        return lines
    create1 = cell("CreateResponse", 1)
    cpu = create1.server_cpu_ms if create1 else None
    lines.append(line(f"CreateResponse: agentd CPU per response <= {RESPONSE_CPU_BUDGET_MS:g} ms (gRPC, "
                      "concurrency 1)", cpu, lambda v: v <= RESPONSE_CPU_BUDGET_MS, f"{cpu or 0:.2f} ms"))
    create64 = cell("CreateResponse", 64)
    rate = create64.throughput if create64 and backend == "sqlite" else None
    errors = create64.errors if create64 else 0
    lines.append(line(f"CreateResponse: >= {RESPONSE_THROUGHPUT_BUDGET:g} responses/s with 0 errors (gRPC, "
                      "concurrency 64, SQLite)", rate,
                      lambda v: v >= RESPONSE_THROUGHPUT_BUDGET and errors == 0,
                      f"{rate or 0:.0f}/s, {errors} errors"))
    for op in RESPONSE_OPS:
        row = next((r for r in overhead_rows
                    if (r["op"], r["transport"], r["concurrency"]) == (op, "grpc", 1)), None)
        v = row["overhead_p50_ms"] if row else None
        lines.append(line(f"{op}: p50 overhead over the fake called directly <= "
                          f"{RESPONSE_OVERHEAD_BUDGET_MS:g} ms (gRPC, concurrency 1)", v,
                          lambda v: v <= RESPONSE_OVERHEAD_BUDGET_MS, f"{v or 0:+.2f} ms"))
    stream1 = cell("StreamResponse", 1)
    first = stream1.first_event_p50_ms if stream1 else None
    lines.append(line(f"StreamResponse: first event p50 <= {FIRST_EVENT_BUDGET_MS:g} ms "
                      "(gRPC, concurrency 1)", first, lambda v: v <= FIRST_EVENT_BUDGET_MS,
                      f"{first or 0:.2f} ms"))
    return lines


def machine_context(args: argparse.Namespace, database: str) -> dict:
    cpus = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = cpus
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": cpus, "cpus_usable": usable,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "grpcio": grpc.__version__, "httpx": httpx.__version__,
        "agentd_commit": commit, "backend": args.backend, "database": database,
        "event_loop": event_loop(),
    }


def render(context: dict, args: argparse.Namespace, cells: list[Cell], ratio_rows: list[dict],
           budget_lines: list[dict], wall_s: float, overhead_rows: list[dict] | None = None,
           idle: dict | None = None) -> str:
    load = " ".join(str(x) for x in context["load_average"] or []) or "n/a"
    cpus = str(context["cpu_count"]) + ("" if context["cpus_usable"] == context["cpu_count"]
                                        else f" ({context['cpus_usable']} usable)")
    head = [
        f"# agentd benchmark, {context['date']}",
        "",
        f"- machine: {cpus} CPUs, load average at start {load}, {context['platform']}",
        f"- python: {context['python']}, grpcio {context['grpcio']}, httpx {context['httpx']}, "
        f"agentd {context['agentd_commit'] or 'unknown commit'} on {context['event_loop']}",
        f"- backend: {context['backend']} ({context['database']})",
        f"- per cell: {args.warmup:g} s warm-up, then {args.seconds:g} s or {args.max_requests} requests, "
        f"whichever comes first; N workers = concurrency; request timeout {args.request_timeout:g} s",
        f"- load generator: one asyncio process (grpc.aio: one channel per cell; httpx: one keep-alive "
        f"connection per worker), agentd a subprocess, loopback only; whole run {wall_s:.1f} s",
        "",
        "> Note: this machine is shared and noisy, and the load generator competes with agentd for "
        "the same CPUs. Absolute numbers move between runs; compare ratios within one run.",
    ]
    rows = [[c.op, c.transport, str(c.concurrency), str(c.requests), f"{c.throughput:.0f}",
             fmt_ms(c.p50_ms), fmt_ms(c.p90_ms), fmt_ms(c.p99_ms), fmt_ms(c.first_event_p50_ms),
             str(c.errors), fmt_ms(c.client_cpu_ms), fmt_ms(c.server_cpu_ms)] for c in cells]
    main = md_table(["op", "transport", "concurrency", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms",
                     "first event p50 ms", "errors", "client CPU ms/req", "agentd CPU ms/req"], rows,
                    right=set(range(2, 12)))
    out = [*head, "", "## Latency and throughput", "", main]
    failed = [c for c in cells if c.errors]
    if failed:
        out += ["", "Errors:", ""]
        out += [f"- {c.op} {c.transport} c={c.concurrency}: "
                + ", ".join(f"{k} x{n}" for k, n in sorted(c.error_kinds.items()))
                + f" (first: {c.first_error})" for c in failed]
    if ratio_rows:
        rrows = [[r["op"], str(r["concurrency"]), fmt_ms(r["grpc_p50_ms"]), fmt_ms(r["http_p50_ms"]),
                  "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                  "n/a" if r["added_p50_ms"] is None else f"{r['added_p50_ms']:+.2f}",
                  "n/a" if r["added_server_cpu_ms"] is None else f"{r['added_server_cpu_ms']:+.2f}"]
                 for r in ratio_rows]
        out += ["", "## Gateway overhead (same run)", "",
                md_table(["op", "concurrency", "gRPC p50 ms", "HTTP p50 ms", "HTTP / gRPC p50",
                          "added p50 ms", "added agentd CPU ms/req"], rrows, right={1, 2, 3, 4, 5, 6})]
    if overhead_rows:
        orows = [[r["op"], r["transport"], str(r["concurrency"]), fmt_ms(r["turn_p50_ms"]),
                  fmt_ms(r["direct_p50_ms"]),
                  "n/a" if r["overhead_p50_ms"] is None else f"{r['overhead_p50_ms']:+.2f}",
                  fmt_ms(r["turn_p99_ms"]), fmt_ms(r["direct_p99_ms"]),
                  "n/a" if r["overhead_p99_ms"] is None else f"{r['overhead_p99_ms']:+.2f}",
                  fmt_ms(r["first_event_p50_ms"]), fmt_ms(r["server_cpu_ms"]), str(r["errors"])]
                 for r in overhead_rows]
        longest = max((c.turns_per_session_max or 0) for c in cells)
        out += ["", "## Turn and response overhead over the fake model called directly (same run)", "",
                md_table(["op", "transport", "concurrency", "p50 ms", "direct p50 ms", "overhead p50 ms",
                          "p99 ms", "direct p99 ms", "overhead p99 ms", "first event p50 ms",
                          "agentd CPU ms/op", "errors"], orows, right=set(range(2, 12))),
                "",
                "Direct = the fake called with the openai SDK, streaming the same reply, at the same "
                "concurrency. Each worker ran its turns in one session "
                + (f"(a fresh one every {args.turns_per_session} turns)" if args.turns_per_session
                   else "for the whole cell") + f"; the longest session held {longest} turns "
                "(each turn sends the model the whole history). The fake's reply: "
                + (f"{args.reply_words} words" if args.reply_words else "the default sentence")
                + (f", {args.chunk_delay_ms:g} ms between chunks." if args.chunk_delay_ms
                   else ", all at once.")]
    if idle is not None:
        def kb(v: int | None) -> str:
            return "n/a" if v is None else f"{v:,} KB"
        out += ["", "## Idle open turn streams", "",
                f"- {idle['waiting']} of {idle['streams']} StreamTurn calls open, each turn waiting on a "
                f"model that never answers (opened in {idle['open_seconds']:.1f} s)"
                + (f"; errors: {idle['errors']}" if idle["errors"] else ""),
                f"- agentd RSS: {kb(idle['rss_before_kb'])} before, "
                f"{kb(idle['rss_open_kb'])} with them open, "
                f"{kb(idle['rss_after_close_kb'])} 2 s after closing them",
                "- per open stream: " + ("n/a" if idle["kb_per_stream"] is None
                                          else f"{idle['kb_per_stream']:.1f} KB"),
                "- agentd CPU while they sat idle: "
                + ("n/a" if idle["idle_cpu_ms_per_s"] is None
                   else f"{idle['idle_cpu_ms_per_s']:.0f} ms per second")]
    out += ["", "## Budget (informational, never fails the run)", ""]
    out += [f"- {b['verdict']}: {b['check']}: {b['detail']}" for b in budget_lines]
    return "\n".join(out) + "\n"


def save(report: str, payload: dict, results_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    md, js = results_dir / f"{stamp}.md", results_dir / f"{stamp}.json"
    md.write_text(report)
    js.write_text(json.dumps(payload, indent=2) + "\n")
    return md, js


# --------------------------------------------------------------------------------------------
# Main


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    # SIGTERM (a CI timeout, `kill`) takes the same path as Ctrl-C: cancel the run so that the
    # `finally` blocks stop agentd and drop the PostgreSQL database.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    wall = time.monotonic()
    pg_name = None
    database_url = None
    if args.backend == "postgres":
        try:
            pg_name, database_url = await create_pg_database(args.postgres_admin_url)
        except Exception as e:  # noqa: BLE001 - any reason PostgreSQL is unusable ends the run here
            progress(f"bench: cannot create a PostgreSQL database via {args.postgres_admin_url}: {e}")
            return 1
    database = f"throwaway database {pg_name}" if pg_name else "SQLite file in a temporary directory"
    context = machine_context(args, database)
    cells: list[Cell] = []
    idle: dict | None = None
    server = None
    fake = None
    turns = any(op in TURN_OPS + RESPONSE_OPS for op in args.ops) or args.idle_streams > 0
    try:
        with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
            fake_url = None
            if turns:
                fake, fake_url = start_fake(Path(tmp), reply_text(args.reply_words), args.chunk_delay_ms)
                progress(f"fake model at {fake_url}")
            server = start_server(Path(tmp), database_url, fake_url,
                                  args.profile.resolve() if args.profile else None)
            try:
                await wait_serving(server)
                progress(f"agentd is SERVING (gRPC {server.grpc_target}, HTTP {server.base_url}, "
                         f"{args.backend})")
                total = sum(len(args.concurrency) * (1 if op == "Direct" else len(args.transports))
                            for op in args.ops)
                async with grpc.aio.insecure_channel(server.grpc_target) as admin_channel:
                    admin = agents_pb2_grpc.AgentsServiceStub(admin_channel)
                    # Transports innermost: the two numbers a ratio compares are measured back to
                    # back, so a noisy neighbour's drift affects them as equally as possible.
                    for op in args.ops:
                        for concurrency in args.concurrency:
                            # A fresh agent per (op, concurrency): the session rows one cell creates
                            # do not weigh on the next; both transports share it.
                            agent_id = await create_agent(admin, BENCH_MODEL if op in TURN_OPS else "m")
                            for transport in ["openai"] if op == "Direct" else args.transports:
                                if op in RESPONSE_OPS:
                                    cell = await measure_response_cell(server, args, op, transport,
                                                                       concurrency)
                                elif op in TURN_OPS:
                                    cell = await measure_turn_cell(server, args, op, transport, concurrency,
                                                                   agent_id, admin, fake_url)
                                else:
                                    cell = await measure_cell(server, args, op, transport, concurrency,
                                                              agent_id)
                                check_alive(server)
                                cells.append(cell)
                                progress(f"[{len(cells):>2}/{total}] {op:<13} {transport:<4} "
                                         f"c={concurrency:<3} "
                                         f"{cell.requests:>6} req {cell.throughput:>7.0f} req/s "
                                         f"p50 {fmt_ms(cell.p50_ms)} ms  p99 {fmt_ms(cell.p99_ms)} ms  "
                                         f"errors {cell.errors}")
                    if args.idle_streams > 0:
                        progress(f"opening {args.idle_streams} idle turn streams")
                        idle = await measure_idle_streams(server, admin, args.idle_streams,
                                                          args.request_timeout)
                        progress(f"idle streams: {idle}")
            except grpc.aio.AioRpcError as e:
                # Only the setup calls (CreateAgent) get here; measured calls count as errors.
                check_alive(server)
                raise BenchError(f"setup call failed: {e.code().name}: {e.details()}\n"
                                 f"agentd log:\n{server.log()}") from None
            finally:
                status = server.terminate(SERVER_GRACE_S + 15)
                if status != 0 and cells:
                    progress(f"bench: warning: agentd exited with status {status} on SIGTERM; log:\n"
                             f"{server.log()}")
                if fake is not None:
                    stop_fake(fake)
    except BenchError as e:
        progress(f"bench: {e}")
        return 1
    finally:
        if pg_name:
            try:
                await drop_pg_database(args.postgres_admin_url, pg_name)
            except Exception as e:  # noqa: BLE001 - the results stand; say what to clean up
                progress(f"bench: warning: could not drop database {pg_name}: {e}")

    ratio_rows = ratios(cells)
    overhead_rows = overheads(cells)
    unary = any(op in UNARY_OPS for op in args.ops)
    budget_lines = ((budget(cells, ratio_rows, args.backend) if unary else [])
                    + turn_budget(cells, overhead_rows, idle)
                    + response_budget(cells, overhead_rows, args.backend))
    wall_s = time.monotonic() - wall
    report = render(context, args, cells, ratio_rows, budget_lines, wall_s, overhead_rows, idle)
    print(report, end="", flush=True)
    payload = {"context": context, "wall_seconds": round(wall_s, 1),
               "config": {"seconds": args.seconds, "warmup": args.warmup, "max_requests": args.max_requests,
                          "concurrency": args.concurrency, "ops": args.ops, "transports": args.transports,
                          "request_timeout": args.request_timeout,
                          "turns_per_session": args.turns_per_session,
                          "reply_words": args.reply_words, "chunk_delay_ms": args.chunk_delay_ms,
                          "idle_streams": args.idle_streams},
               "cells": [asdict(c) for c in cells], "ratios": ratio_rows, "turn_overhead": overhead_rows,
               "idle_streams": idle, "budget": budget_lines}
    if not args.no_save:
        md, js = save(report, payload, args.results_dir)
        progress(f"saved {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md} and {js.name}")
    return 0


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    canonical = {a.lower(): a for a in allowed}

    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x.lower() not in canonical]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(allowed)}")
        return list(dict.fromkeys(canonical[x.lower()] for x in items))
    return parse


def _concurrency(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected comma-separated positive integers, e.g. 1,16,64")
    return list(dict.fromkeys(values))


def _positive(kind: type) -> Callable[[str], float | int]:
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Latency and throughput of agentd's unary RPCs, over gRPC "
                                            "and over the HTTP gateway.")
    p.add_argument("--seconds", type=_positive(float), default=3.0,
                   help="measurement time budget per cell (default 3)")
    p.add_argument("--max-requests", type=_positive(int), default=50_000,
                   help="request cap per cell, whichever of it and --seconds comes first (default 50000)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="warm-up seconds per cell, discarded (default 0.5)")
    p.add_argument("--concurrency", type=_concurrency, default=[1, 16, 64, 256],
                   help="comma-separated worker counts (default 1,16,64,256)")
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                   help="agentd's database (default sqlite)")
    p.add_argument("--ops", type=_choices(OPS), default=list(DEFAULT_OPS),
                   help=f"comma-separated, from {','.join(OPS)} (default {','.join(DEFAULT_OPS)}; "
                        "Direct is added whenever a turn op is measured)")
    p.add_argument("--turns-per-session", type=int, default=0,
                   help="turns a worker runs in one session before moving to a fresh one (default 0: "
                        "one session per worker and cell)")
    p.add_argument("--reply-words", type=int, default=0,
                   help="the fake's reply: this many words, in 8-character chunks (default 0: "
                        f"{REPLY_TEXT!r}, 6 chunks)")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0,
                   help="the fake's pause between two chunks (default 0: the whole reply at once)")
    p.add_argument("--idle-streams", type=int, default=1000,
                   help="idle open turn streams for the RSS measurement (default 1000; 0 skips it)")
    p.add_argument("--transports", type=_choices(TRANSPORTS), default=list(TRANSPORTS),
                   help="comma-separated: grpc, http (default both; the ratio table needs both)")
    p.add_argument("--request-timeout", type=_positive(float), default=10.0,
                   help="per-request deadline in seconds; a request over it counts as an error (default 10)")
    p.add_argument("--postgres-admin-url", default=DEFAULT_PG_ADMIN_URL,
                   help="asyncpg URL used to create/drop the throwaway database "
                        f"(default {DEFAULT_PG_ADMIN_URL})")
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results",
                   help="where <timestamp>.md and .json go (default bench/results)")
    p.add_argument("--no-save", action="store_true", help="print only; write no result files")
    p.add_argument("--profile", type=Path, default=None, metavar="FILE",
                   help="run agentd under cProfile and write its stats to FILE when it stops "
                        "(read them with python -m pstats FILE); its numbers are then not the real ones")
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.turns_per_session < 0 or args.idle_streams < 0 or args.reply_words < 0 or args.chunk_delay_ms < 0:
        p.error("--turns-per-session, --idle-streams, --reply-words and --chunk-delay-ms must be >= 0")
    if any(op in MODEL_OPS for op in args.ops) and "Direct" not in args.ops:
        # The baseline the overhead is computed against, measured just before the turns.
        first = min(args.ops.index(op) for op in MODEL_OPS if op in args.ops)
        args.ops.insert(first, "Direct")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # run()'s finally blocks have stopped agentd and dropped the database by now.
        progress("bench: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
