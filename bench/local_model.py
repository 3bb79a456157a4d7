#!/usr/bin/env python3
"""The embedded model through agentd against the engine called directly: tokens/s, time to
first token and RSS, on the same prompts (greedy, so both generate the same tokens).

    .venv/bin/python bench/local_model.py [--rounds 3] [--runs 5] [--max-tokens 128] [--threads 1]

Three ways, each in a process of its own so its RSS is its own:
- `engine`: xllamacpp in-process, its streaming callback (no HTTP, no agentd);
- `engine-http`: the same engine's loopback OpenAI-compatible server, streamed with the openai
  SDK (the path agentd's local provider takes);
- `agentd`: `agentd serve` with the local model, a StreamTurn per prompt over gRPC; time to
  first token is the first text delta, tokens/s is the turn's output tokens over the time
  from the first delta to the last.
Each prints one JSON line; the report is a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Tell me about Paris.", "Write a short poem about the sea.",
           "How do plants make food?", "Give me three tips to sleep better."]
INSTRUCTIONS = "Be brief."


def _rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(current RSS, peak RSS) in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _messages(prompt: str) -> list[dict]:
    # What agentd's local provider sends for an agent with INSTRUCTIONS: the same tokens.
    from agentd.inference.local_provider import SYSTEM_PROMPT
    return [{"role": "system", "content": f"{SYSTEM_PROMPT}\n\n{INSTRUCTIONS}"},
            {"role": "user", "content": prompt}]


def _server(threads: int):
    import xllamacpp

    from agentd.config import LOCAL_CONTEXT_SIZE
    from agentd.inference.local_provider import packaged_model_path
    params = xllamacpp.CommonParams()
    params.model.path = str(packaged_model_path())
    params.n_ctx = LOCAL_CONTEXT_SIZE
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.n_parallel, params.verbosity, params.ui = 1, 0, False
    return xllamacpp.Server(params)


def _body(prompt: str, max_tokens: int) -> dict:
    from agentd.inference.local_provider import DEFAULT_REPEAT_PENALTY
    return {"messages": _messages(prompt), "max_tokens": max_tokens, "temperature": 0,
            "repeat_penalty": DEFAULT_REPEAT_PENALTY, "stream": True,
            "stream_options": {"include_usage": True}}


def run_engine(args) -> dict:
    started = time.perf_counter()
    server = _server(args.threads)
    load_s = time.perf_counter() - started
    runs = []
    for prompt in PROMPTS[:args.runs]:
        marks: list[float] = []
        tokens = [0]

        def on_chunk(chunk, marks=marks, tokens=tokens):
            chunk = json.loads(chunk) if isinstance(chunk, (str, bytes)) else chunk
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    marks.append(time.perf_counter())
            if chunk.get("usage"):
                tokens[0] = chunk["usage"]["completion_tokens"]
        sent = time.perf_counter()
        server.handle_chat_completions(_body(prompt, args.max_tokens), on_chunk)
        runs.append(_run(sent, marks, tokens[0]))
    return _summary("engine (xllamacpp in-process)", load_s, runs)


def run_engine_http(args) -> dict:
    import openai
    started = time.perf_counter()
    server = _server(args.threads)
    load_s = time.perf_counter() - started
    client = openai.OpenAI(base_url=server.listening_address + "/v1", api_key="none", max_retries=0)
    runs = []
    for prompt in PROMPTS[:args.runs]:
        body = _body(prompt, args.max_tokens)
        del body["stream"]  # the SDK's own argument, so that it reads a stream
        sent = time.perf_counter()
        marks, tokens = [], 0
        for chunk in client.chat.completions.create(model="local", messages=[], stream=True,
                                                     extra_body=body):
            if chunk.choices and chunk.choices[0].delta.content:
                marks.append(time.perf_counter())
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        runs.append(_run(sent, marks, tokens))
    client.close()
    return _summary("engine's loopback server (openai SDK)", load_s, runs)


async def _agentd_turns(target: str, args) -> list[dict]:
    import grpc

    from agentd.v1 import agent_messages_pb2 as m
    from agentd.v1 import agent_resources_pb2 as t
    from agentd.v1 import agents_pb2 as pb
    from agentd.v1 import agents_pb2_grpc, models_pb2, models_pb2_grpc
    runs = []
    async with grpc.aio.insecure_channel(target) as channel:
        models = models_pb2_grpc.ModelsServiceStub(channel)
        [model] = (await models.ListModels(models_pb2.ListModelsRequest())).data
        agents = agents_pb2_grpc.AgentsServiceStub(channel)
        greedy = t.SamplingParams(strategy=t.SamplingStrategy(greedy=t.GreedySamplingStrategy()),
                                  max_tokens=args.max_tokens)
        agent = await agents.CreateAgent(pb.CreateAgentRequest(agent_config=t.AgentConfig(
            model=model.id, instructions=INSTRUCTIONS, sampling_params=greedy)))
        for prompt in PROMPTS[:args.runs]:
            # A session per prompt: the model sees the same messages as the engine alone.
            session = await agents.CreateSession(pb.CreateSessionRequest(agent_id=agent.agent_id,
                                                                         session_name="bench"))
            message = m.TurnInputMessage(user=m.UserMessage(content=m.InterleavedContent(text=prompt)))
            sent = time.perf_counter()
            marks, tokens = [], 0
            async for response in agents.StreamTurn(pb.StreamTurnRequest(
                    agent_id=agent.agent_id, session_id=session.session_id, messages=[message])):
                payload = response.event.payload
                if payload.HasField("step_progress") and payload.step_progress.delta.text.text:
                    marks.append(time.perf_counter())
                if payload.HasField("turn_complete"):
                    tokens = payload.turn_complete.turn.steps[0].inference.usage.output_tokens
            runs.append(_run(sent, marks, tokens))
    return runs


def run_agentd(args) -> dict:
    from agentd.testing import start_agentd
    with tempfile.TemporaryDirectory() as workdir:
        env = {"AGENTD_LOCAL_MODEL": "", "AGENTD_LOCAL_THREADS": str(args.threads),  # "": the packaged one
               "AGENTD_LOG_LEVEL": "warning"}
        started = time.perf_counter()
        server = start_agentd(Path(workdir), env, die_with_parent=True)
        try:
            server.wait_serving(60)
            load_s = time.perf_counter() - started
            runs = asyncio.run(_agentd_turns(server.grpc_target, args))
            rss = _rss_mb(server.process.pid)
        finally:
            server.terminate()
    return _summary("agentd StreamTurn (gRPC)", load_s, runs, rss)


def _run(sent: float, marks: list[float], tokens: int) -> dict:
    decode_s = marks[-1] - marks[0] if len(marks) > 1 else 0.0
    return {"ttft_ms": (marks[0] - sent) * 1000 if marks else None, "tokens": tokens,
            "tokens_per_s": (tokens - 1) / decode_s if decode_s else None}


def _summary(name: str, load_s: float, runs: list[dict], rss: tuple[float, float] | None = None) -> dict:
    rss_mb, peak_mb = rss or _rss_mb()
    return {"name": name, "start_s": round(load_s, 2), "runs": runs, "tokens": sum(r["tokens"] for r in runs),
            "ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in runs), 1),
            "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in runs), 1),
            "rss_mb": round(rss_mb), "peak_rss_mb": round(peak_mb)}


def _merged(rounds: list[dict]) -> dict:
    runs = [run for r in rounds for run in r["runs"]]
    merged = _summary(rounds[0]["name"], statistics.median(r["start_s"] for r in rounds), runs,
                      (max(r["rss_mb"] for r in rounds), max(r["peak_rss_mb"] for r in rounds)))
    merged["tokens"] = rounds[0]["tokens"]
    return merged


WAYS = {"engine": run_engine, "engine-http": run_engine_http, "agentd": run_agentd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=len(PROMPTS), help="prompts per way (at most 5)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="times each way runs, in turns")
    parser.add_argument("--only", choices=WAYS, help=argparse.SUPPRESS)  # one way, in this process
    args = parser.parse_args()
    if args.only:
        print(json.dumps(WAYS[args.only](args)))
        return
    # The ways take turns, round after round, so machine noise falls on all of them alike.
    by_way: dict[str, list[dict]] = {way: [] for way in WAYS}
    for round_number in range(args.rounds):
        for way in WAYS:
            print(f"bench: round {round_number + 1}/{args.rounds}: {way} ...", file=sys.stderr)
            out = subprocess.run([sys.executable, __file__, "--only", way, "--runs", str(args.runs),
                                  "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True)
            by_way[way].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = [_merged(rounds) for rounds in by_way.values()]
    print(f"SmolLM2-135M-Instruct Q4_1, greedy, {args.threads} thread(s), {args.rounds} rounds of "
          f"{args.runs} prompts, at most {args.max_tokens} tokens each (medians over every run)\n")
    print("| way | start s | tokens a round | time to first token ms | tokens/s | RSS MB (peak) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['start_s']} | {r['tokens']} | {r['ttft_ms_median']} | "
              f"{r['tokens_per_s_median']} | {r['rss_mb']} ({r['peak_rss_mb']}) |")


if __name__ == "__main__":
    main()
