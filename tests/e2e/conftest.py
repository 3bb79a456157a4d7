"""e2e fixtures: `agentd serve` as a subprocess on free ports, as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
AGENTD = [sys.executable, "-m", "agentd.cli"]
PROVIDERS = [{"id": "fake", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
              "models": [{"id": "test-model"}]}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AgentdProcess:
    process: subprocess.Popen
    grpc_target: str
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def wait_serving(target: str, process: subprocess.Popen, log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"agentd exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"agentd did not become SERVING in {timeout} s:\n{log_path.read_text()}")


def start_agentd(tmp_path: Path, **env: str) -> AgentdProcess:
    grpc_port, http_port = free_port(), free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    environ.update(AGENTD_GRPC_ADDR=f"127.0.0.1:{grpc_port}", AGENTD_HTTP_ADDR=f"127.0.0.1:{http_port}",
                   AGENTD_DATA_DIR=str(tmp_path / "data"), AGENTD_PROVIDERS=json.dumps(PROVIDERS),
                   AGENTD_GRACE_PERIOD_S="5")
    environ.update(env)
    log_path = tmp_path / "agentd.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([*AGENTD, "serve"], env=environ, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=tmp_path)
    handle = AgentdProcess(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", log_path)
    try:
        wait_serving(handle.grpc_target, process, log_path)
    except Exception:
        process.kill()
        raise
    return handle


@pytest.fixture(scope="module")
def agentd_process(tmp_path_factory):
    handle = start_agentd(tmp_path_factory.mktemp("agentd"))
    yield handle
    code = handle.terminate()
    assert code == 0, handle.log()
