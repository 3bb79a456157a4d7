"""The `agentd serve` process: health, reflection, buf curl, config errors, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from agentd.v1 import agents_pb2, agents_pb2_grpc
from tests.e2e.conftest import AGENTD, free_port, start_agentd

BUF = Path(sys.executable).parent / "buf"


def test_reflection_lists_the_services(agentd_process):
    with grpc.insecure_channel(agentd_process.grpc_target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"agentd.v1.AgentsService", "agentd.v1.ModelsService", "grpc.health.v1.Health"} <= services


def test_buf_curl_through_reflection(agentd_process):
    target = f"http://{agentd_process.grpc_target}"
    created = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d",
         '{"agent_config": {"model": "test-model", "instructions": "hi"}}',
         f"{target}/agentd.v1.AgentsService/CreateAgent"], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    agent_id = json.loads(created.stdout)["agentId"]
    got = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d",
         json.dumps({"agent_id": agent_id}), f"{target}/agentd.v1.AgentsService/GetAgent"],
        capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["agent"]["agentConfig"]["model"] == "test-model"


def test_unknown_setting_stops_the_start_naming_it(tmp_path):
    run = subprocess.run([*AGENTD, "serve"], env={"AGENTD_GRPC_PORT": "1", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2
    assert "unknown setting AGENTD_GRPC_PORT" in run.stderr


def test_sigterm_drains_and_exits_cleanly(tmp_path):
    server = start_agentd(tmp_path)
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="agentd.v1.AgentsService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 200
    assert server.terminate() == 0
    log = server.log()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(("env", "loop"), [({}, "uvloop"), ({"AGENTD_EVENT_LOOP": "asyncio"}, "asyncio")])
def test_the_event_loop_is_uvloop_unless_asked_otherwise(tmp_path, env, loop):
    server = start_agentd(tmp_path, **env)
    try:
        created = httpx.post(f"{server.base_url}/v1alpha/agents",
                             json={"agent_config": {"model": "test-model", "instructions": ""}})
        assert created.status_code == 200
        with grpc.insecure_channel(server.grpc_target) as channel:
            got = agents_pb2_grpc.AgentsServiceStub(channel).GetAgent(
                agents_pb2.GetAgentRequest(agent_id=created.json()["agent_id"]))
        assert got.agent.agent_config.model == "test-model"
    finally:
        assert server.terminate() == 0
    assert f"(event loop: {loop})" in server.log()
    assert "Traceback" not in server.log()


def test_uvloop_missing_stops_the_start_saying_what_to_do(tmp_path):
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named uvloop')\n")
    run = _serve(tmp_path, PYTHONPATH=str(shadow.parent), AGENTD_GRPC_ADDR=f"127.0.0.1:{free_port()}")
    assert run.returncode == 2, run.stderr
    assert "event_loop uvloop: No module named uvloop" in run.stderr
    assert "AGENTD_EVENT_LOOP=asyncio" in run.stderr and "Traceback" not in run.stderr


def test_data_survives_a_restart(tmp_path):
    server = start_agentd(tmp_path)
    agent_id = httpx.post(f"{server.base_url}/v1alpha/agents",
                          json={"agent_config": {"model": "test-model",
                                                 "instructions": ""}}).json()["agent_id"]
    assert server.terminate() == 0
    again = start_agentd(tmp_path)
    try:
        assert httpx.get(f"{again.base_url}/v1alpha/agents/{agent_id}").status_code == 200
    finally:
        assert again.terminate() == 0


def test_json_logs_carry_the_request_id(tmp_path):
    server = start_agentd(tmp_path, AGENTD_LOG_FORMAT="json")
    try:
        listed = httpx.get(f"{server.base_url}/v1alpha/agents", headers={"x-request-id": "e2e-req-0"})
        assert listed.status_code == 200
        missing = httpx.get(f"{server.base_url}/v1alpha/agents/agent_x",
                            headers={"x-request-id": "e2e-req-1"})
        assert missing.status_code == 404 and missing.headers["x-request-id"] == "e2e-req-1"
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = agents_pb2_grpc.AgentsServiceStub(channel)
            try:
                stub.GetAgent(agents_pb2.GetAgentRequest(agent_id="agent_y"),
                              metadata=(("x-request-id", "e2e-req-2"),))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert server.terminate() == 0
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    calls = {e["request_id"]: e["message"] for e in entries if e["logger"] == "agentd.rpc"}
    assert calls["e2e-req-0"].startswith("rpc /agentd.v1.AgentsService/ListAgents OK")
    assert calls["e2e-req-1"].startswith("rpc /agentd.v1.AgentsService/GetAgent NOT_FOUND")
    assert "agent_x" in calls["e2e-req-1"] and "agent_y" in calls["e2e-req-2"]
    assert all(e["level"] in {"info", "warning", "error", "debug"} for e in entries)


def _serve(tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "AGENTD_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run([*AGENTD, "serve"], env=environ, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("which", ["grpc", "http"])
def test_a_port_in_use_stops_the_start_with_a_clear_message(tmp_path, which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        env = {"AGENTD_GRPC_ADDR": busy if which == "grpc" else f"127.0.0.1:{free_port()}",
               "AGENTD_HTTP_ADDR": busy if which == "http" else f"127.0.0.1:{free_port()}"}
        run = _serve(tmp_path, **env)
    assert run.returncode == 1, run.stderr
    assert "cannot start:" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_unusable_database_stops_the_start_with_a_clear_message(tmp_path):
    run = _serve(tmp_path, AGENTD_GRPC_ADDR=f"127.0.0.1:{free_port()}", AGENTD_HTTP_ADDR="",
                 AGENTD_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/agentd_no_such_database")
    assert run.returncode == 1, run.stderr
    assert "cannot start: the database is not usable" in run.stderr
    assert "agentd_no_such_database" in run.stderr and "Traceback" not in run.stderr


def test_the_gateway_listens_on_ipv6_loopback(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        port = probe.getsockname()[1]
    server = start_agentd(tmp_path, AGENTD_HTTP_ADDR=f"[::1]:{port}")
    try:
        assert httpx.get(f"http://[::1]:{port}/v1/models").status_code == 200
    finally:
        assert server.terminate() == 0


def test_sigterm_with_a_stream_in_flight(tmp_path):
    """Health turns NOT_SERVING at once, new calls are refused while running ones drain, and
    the process exits within the grace period. A health Watch stream stands in for a long
    turn stream (no turn RPC runs yet)."""
    server = start_agentd(tmp_path, AGENTD_GRACE_PERIOD_S="2")
    with grpc.insecure_channel(server.grpc_target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # New calls are refused from the moment the server stops taking them (a call that
        # slipped in just before, between NOT_SERVING and the stop, is served: that is fine),
        # well before the drain ends. Refused: UNAVAILABLE once the listener is closed, or
        # CANCELLED when grpc's transport had accepted the connection in that instant.
        refused = None
        while refused is None and time.monotonic() - started < 1.5:
            with grpc.insecure_channel(server.grpc_target) as fresh:
                try:
                    stub = agents_pb2_grpc.AgentsServiceStub(fresh)
                    stub.ListAgents(agents_pb2.ListAgentsRequest(), timeout=5)
                    time.sleep(0.05)
                except grpc.RpcError as e:
                    refused = e.code()
        assert refused in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert server.process.wait(15) == 0
        elapsed = time.monotonic() - started
    assert elapsed < 2 + 3  # the grace period and a margin, not two graces in a row
    log = server.log()
    assert "shutting down" in log and "stopped" in log and "Traceback" not in log
