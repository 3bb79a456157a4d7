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
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]

try:
    import grpc
    import httpx

    from agentd.testing import AgentdProcess, AgentdStartError, start_agentd
    from agentd.v1 import agent_resources_pb2 as t
    from agentd.v1 import agents_pb2 as pb
    from agentd.v1 import agents_pb2_grpc, models_pb2, models_pb2_grpc
except ImportError as e:  # the usual cause: run with a Python that is not the project's venv
    sys.exit(f"bench: {e}. Run it with the project's venv: `make bench` or `.venv/bin/python bench/run.py`.")

# ListModels touches no database: it is the floor of the same stack (transport, call
# pipeline, codec), measured in the same run, so GetAgent - ListModels is what storage costs.
OPS = ("GetAgent", "CreateSession", "ListModels")
TRANSPORTS = ("grpc", "http")
BUDGET_MS = 1.0  # the budget: both checks below compare against 1 ms
START_TIMEOUT_S = 60.0
SERVER_GRACE_S = 2  # SIGTERM drain; the load has stopped by then, so short is fine
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


class BenchError(Exception):
    """The run cannot go on (agentd did not start or died); the message carries its log."""


# --------------------------------------------------------------------------------------------
# agentd as a subprocess


def start_server(workdir: Path, database_url: str | None) -> AgentdProcess:
    env = {"AGENTD_LOG_LEVEL": "warning", "AGENTD_GRACE_PERIOD_S": str(SERVER_GRACE_S)}
    if database_url:
        env["AGENTD_DATABASE_URL"] = database_url
    # Same process group on purpose: a Ctrl-C (or make being interrupted) reaches agentd too,
    # which shuts down gracefully on SIGINT; our `finally` then only reaps it.
    return start_agentd(workdir, env, die_with_parent=True)


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
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"grpc {exc.code().name}"
    if isinstance(exc, HttpStatusError):
        return str(exc)
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


@dataclass
class Sample:
    latencies_ns: list[int] = field(default_factory=list)
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
                await call()
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                sample.errors[error_kind(exc)] += 1
                sample.first_error = sample.first_error or f"{error_kind(exc)}: {exc}"[:300]
            else:
                done = time.perf_counter_ns()
                sample.latencies_ns.append(done - start)
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


def summarize(op: str, transport: str, concurrency: int, sample: Sample) -> Cell:
    lat = sorted(sample.latencies_ns)
    return Cell(
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


async def create_agent(admin: agents_pb2_grpc.AgentsServiceStub) -> str:
    config = t.AgentConfig(model="m", instructions="x")
    reply = await admin.CreateAgent(pb.CreateAgentRequest(agent_config=config), timeout=10)
    return reply.agent_id


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
    c1 = [r for r in ratio_rows if r["concurrency"] == 1]
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
    }


def render(context: dict, args: argparse.Namespace, cells: list[Cell], ratio_rows: list[dict],
           budget_lines: list[dict], wall_s: float) -> str:
    load = " ".join(str(x) for x in context["load_average"] or []) or "n/a"
    cpus = str(context["cpu_count"]) + ("" if context["cpus_usable"] == context["cpu_count"]
                                        else f" ({context['cpus_usable']} usable)")
    head = [
        f"# agentd benchmark, {context['date']}",
        "",
        f"- machine: {cpus} CPUs, load average at start {load}, {context['platform']}",
        f"- python: {context['python']}, grpcio {context['grpcio']}, httpx {context['httpx']}, "
        f"agentd {context['agentd_commit'] or 'unknown commit'}",
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
             fmt_ms(c.p50_ms), fmt_ms(c.p90_ms), fmt_ms(c.p99_ms), str(c.errors),
             fmt_ms(c.client_cpu_ms), fmt_ms(c.server_cpu_ms)] for c in cells]
    main = md_table(["op", "transport", "concurrency", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms",
                     "errors", "client CPU ms/req", "agentd CPU ms/req"], rows, right=set(range(2, 11)))
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
    server = None
    try:
        with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
            server = start_server(Path(tmp), database_url)
            try:
                await wait_serving(server)
                progress(f"agentd is SERVING (gRPC {server.grpc_target}, HTTP {server.base_url}, "
                         f"{args.backend})")
                total = len(args.ops) * len(args.concurrency) * len(args.transports)
                async with grpc.aio.insecure_channel(server.grpc_target) as admin_channel:
                    admin = agents_pb2_grpc.AgentsServiceStub(admin_channel)
                    # Transports innermost: the two numbers a ratio compares are measured back to
                    # back, so a noisy neighbour's drift affects them as equally as possible.
                    for op in args.ops:
                        for concurrency in args.concurrency:
                            # A fresh agent per (op, concurrency): the session rows one cell creates
                            # do not weigh on the next; both transports share it.
                            agent_id = await create_agent(admin)
                            for transport in args.transports:
                                cell = await measure_cell(server, args, op, transport, concurrency, agent_id)
                                check_alive(server)
                                cells.append(cell)
                                progress(f"[{len(cells):>2}/{total}] {op:<13} {transport:<4} "
                                         f"c={concurrency:<3} "
                                         f"{cell.requests:>6} req {cell.throughput:>7.0f} req/s "
                                         f"p50 {fmt_ms(cell.p50_ms)} ms  p99 {fmt_ms(cell.p99_ms)} ms  "
                                         f"errors {cell.errors}")
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
    budget_lines = budget(cells, ratio_rows, args.backend)
    wall_s = time.monotonic() - wall
    report = render(context, args, cells, ratio_rows, budget_lines, wall_s)
    print(report, end="", flush=True)
    payload = {"context": context, "wall_seconds": round(wall_s, 1),
               "config": {"seconds": args.seconds, "warmup": args.warmup, "max_requests": args.max_requests,
                          "concurrency": args.concurrency, "ops": args.ops, "transports": args.transports,
                          "request_timeout": args.request_timeout},
               "cells": [asdict(c) for c in cells], "ratios": ratio_rows, "budget": budget_lines}
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
    p.add_argument("--concurrency", type=_concurrency, default=[1, 16, 64],
                   help="comma-separated worker counts (default 1,16,64)")
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                   help="agentd's database (default sqlite)")
    p.add_argument("--ops", type=_choices(OPS), default=list(OPS),
                   help=f"comma-separated RPCs (default {','.join(OPS)})")
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
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
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
