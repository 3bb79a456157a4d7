"""`agentd serve` as a subprocess on free loopback ports, as a user runs it.

Shared by the e2e tests and the benchmark, so both start, wait for and stop the server the
same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

AGENTD = [sys.executable, "-m", "agentd.cli"]


class AgentdStartError(Exception):
    """agentd exited or did not become SERVING; the message carries its log."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: their sockets are all held until each has its port (two
    calls in a row may get the same one back). A small race remains between closing them
    and agentd binding the ports; if it is lost, agentd fails to start and says so in its log."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, the kernel SIGTERMs agentd if its parent dies
    without cleaning up (SIGKILL, a crash), so no orphan keeps ports and CPU."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def cpu_seconds(pid: int) -> float | None:
    """A process's user+system CPU time so far (Linux /proc); None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class AgentdProcess:
    process: subprocess.Popen
    grpc_target: str
    base_url: str
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float | None:
        """agentd's user+system CPU time so far (Linux /proc); None where unavailable."""
        return cpu_seconds(self.process.pid)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM (the graceful path), SIGKILL if it hangs past `timeout`; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def wait_serving(self, timeout: float = 30) -> None:
        """Ready = the gRPC health check answers SERVING (set after the gateway is up)."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AgentdStartError(
                        f"agentd exited with {self.process.returncode}; its log:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise AgentdStartError(f"agentd did not become SERVING in {timeout:.0f} s; its log:\n{self.log()}")


def start_agentd(workdir: Path, env: dict[str, str], die_with_parent: bool = False,
                 profile_to: Path | None = None) -> AgentdProcess:
    """Starts `agentd serve` in `workdir` (data and log there) on free ports. The caller's
    AGENTD_* variables are dropped so they cannot change what runs; `env` sets settings. The
    embedded model is off unless `env` sets AGENTD_LOCAL_MODEL (loading it costs a second
    and ~200 MB that tests and the benchmark of agentd itself do not need).
    `profile_to`: run it under cProfile, whose stats are written there when it exits."""
    grpc_port, http_port = free_ports(2)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    environ.update(AGENTD_GRPC_ADDR=f"127.0.0.1:{grpc_port}", AGENTD_HTTP_ADDR=f"127.0.0.1:{http_port}",
                   AGENTD_DATA_DIR=str(workdir / "data"), AGENTD_LOCAL_MODEL="off")
    environ.update(env)
    log_path = workdir / "agentd.log"
    with log_path.open("w") as log:
        profiler = [] if profile_to is None else ["-m", "cProfile", "-o", str(profile_to)]
        process = subprocess.Popen([sys.executable, *profiler, *AGENTD[1:], "serve"], env=environ,
                                   cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent if die_with_parent else None)
    return AgentdProcess(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", log_path)
