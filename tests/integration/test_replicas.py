"""Several replicas on one database (SQLite file and PostgreSQL): a replica's recovery leaves
alone the turns another live replica runs (their leases are renewed), interrupts those of a
replica that died (killed with SIGKILL: an `agentd serve` process of the shipped test kit),
and a session stays busy across replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentd.app import Agentd
from agentd.context import LOCAL_PRINCIPAL
from agentd.testing import start_agentd
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import agents_pb2_grpc
from tests.conftest import error_of, fake_model_providers, make_settings, running_with_agents
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from tests.integration.test_turns import new_session, stream_turn, user

LEASE_S = 2.0  # short for the tests, long enough for a loaded machine to renew in time



@contextlib.asynccontextmanager
async def replica(database_url, tmp_path, fake):
    """One in-process replica with a short lease, and a stub to call it."""
    settings = make_settings(
        database_url, tmp_path, providers=fake_model_providers(fake), run_lease_s=LEASE_S
    )
    async with running_with_agents(settings) as pair:
        yield pair


async def started(stub, agent_id: str, session_id: str) -> tuple[grpc.aio.UnaryStreamCall, str]:
    """A background turn's stream, read up to its turn_start; and the turn id."""
    call = stream_turn(stub, agent_id, session_id, user("hi"), background=True)
    async for response in call:
        return call, response.event.payload.turn_start.turn_id
    raise AssertionError("the turn stream ended before turn_start")


async def serving(process, timeout_s: float = 60) -> None:
    """Waits for an `agentd serve` process to answer its health check (with grpc.aio: the
    test kit's wait_serving uses the sync API, which must not share a process with aio)."""
    async with asyncio.timeout(timeout_s), grpc.aio.insecure_channel(process.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.process.poll() is None, process.log()
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)


async def status_of(server: Agentd, session_id: str, turn_id: str) -> str | None:
    return await server.agent_store.turn_status(LOCAL_PRINCIPAL, session_id, turn_id)


async def test_a_replica_starting_and_recovering_leaves_the_turns_another_runs(database_url, tmp_path, fake):
    fake.script(Reply(text="never", hang=True))
    async with replica(database_url, tmp_path, fake) as (first, stub):
        agent_id, session_id = await new_session(stub)
        call, turn_id = await started(stub, agent_id, session_id)
        call.cancel()  # background: the turn runs on
        async with replica(database_url, tmp_path, fake) as (second, other):
            assert await status_of(second, session_id, turn_id) == "in_progress"  # recovery at start
            # Several leases long: the second replica's periodic recovery ran many times meanwhile,
            # the first kept renewing the lease of its live turn.
            await asyncio.sleep(LEASE_S * 3)
            assert await status_of(second, session_id, turn_id) == "in_progress"
            assert first.runs.get(LOCAL_PRINCIPAL, turn_id).terminal is None  # still running there
            # CancelTurn on the replica that does not run it: the one that does stops it.
            follow = stub.StreamTurnEvents(
                pb.StreamTurnEventsRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id)
            )
            cancelled = await other.CancelTurn(
                pb.CancelTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id)
            )
            assert cancelled.turn.status == t.TURN_STATUS_CANCELLED
            assert cancelled.turn.error.message == "The turn was cancelled."
            events = [r.event async for r in follow]
            assert events[0].payload.HasField("turn_start") and events[-1].payload.HasField("turn_failed")
            assert [e.sequence_number for e in events] == list(range(len(events)))  # one numbering
            assert await status_of(second, session_id, turn_id) == "cancelled"


async def test_the_turn_of_a_replica_that_died_is_interrupted_by_a_live_one(database_url, tmp_path, fake):
    hanging = FakeOpenAIServer().start()  # its own model: a hung answer holds the fake's one thread
    hanging.script(Reply(text="never", hang=True))
    env = {
        "AGENTD_DATABASE_URL": database_url,
        "AGENTD_PROVIDERS": json.dumps(fake_model_providers(hanging)),
        "AGENTD_RUN_LEASE_S": str(LEASE_S),
    }
    (tmp_path / "dying").mkdir()
    dying = start_agentd(tmp_path / "dying", env)
    try:
        await serving(dying)
        async with grpc.aio.insecure_channel(dying.grpc_target) as channel:
            stub = agents_pb2_grpc.AgentsServiceStub(channel)
            agent_id, session_id = await new_session(stub)
            call, turn_id = await started(stub, agent_id, session_id)
            call.cancel()
    finally:
        dying.process.kill()  # SIGKILL: no drain, nothing marked; its lease just stops
        dying.process.wait()
        hanging.close()
    async with replica(database_url, tmp_path, fake) as (live, stub):
        # Its lease may still run at this start; the periodic recovery then takes it.
        follow = stub.StreamTurnEvents(
            pb.StreamTurnEventsRequest(
                agent_id=agent_id, session_id=session_id, turn_id=turn_id, starting_after=0
            )
        )
        async with asyncio.timeout(LEASE_S * 30):  # a bound, so a regression fails instead of hanging
            followed = [r.event async for r in follow if not r.event.payload.HasField("heartbeat")]
        assert followed == []  # nothing kept after turn_start: the stream ends with the turn
        turn = await live.agent_store.get_turn(LOCAL_PRINCIPAL, session_id, turn_id)
        assert turn.status == t.TURN_STATUS_INTERRUPTED
        assert turn.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        # The session is free again, on any replica.
        fake.script(Reply(text="back"))
        done = await stub.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("again")])
        )
        assert done.turn.output_message.content.text == "back"


async def test_a_session_is_busy_across_replicas(database_url, tmp_path, fake):
    fake.script(*[Reply(text="never", hang=True)] * 4)
    async with (
        replica(database_url, tmp_path, fake) as (_, a),
        replica(database_url, tmp_path, fake) as (_, b),
    ):
        for _ in range(3):  # both replicas start a turn in one session at once
            agent_id, session_id = await new_session(a)
            outcomes = await asyncio.gather(
                started(a, agent_id, session_id), started(b, agent_id, session_id), return_exceptions=True
            )
            winners = [o for o in outcomes if not isinstance(o, BaseException)]
            losers = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(winners) == 1 and len(losers) == 1
            assert isinstance(losers[0], grpc.aio.AioRpcError)
            assert losers[0].code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "has a turn in progress" in losers[0].details()
            call, turn_id = winners[0]
            call.cancel()
            # The turn runs on the winner; starting another on the other replica is busy too.
            code, reason, _ = await error_of(
                b.CreateTurn(
                    pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("x")])
                )
            )
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_BUSY")
            for stub in (a, b):
                with contextlib.suppress(grpc.aio.AioRpcError):  # cancelled by whichever runs it
                    await stub.CancelTurn(
                        pb.CancelTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id)
                    )


async def test_a_delete_on_one_replica_stops_the_turn_another_runs_first(database_url, tmp_path, fake):
    fake.script(Reply(text="never", hang=True))
    async with (
        replica(database_url, tmp_path, fake) as (first, a),
        replica(database_url, tmp_path, fake) as (_, b),
    ):
        agent_id, session_id = await new_session(a)
        call, turn_id = await started(a, agent_id, session_id)
        await b.DeleteSession(pb.DeleteSessionRequest(agent_id=agent_id, session_id=session_id))
        # The run on the first replica ended (cancelled, its end kept) before the rows went.
        assert first.runs.get(LOCAL_PRINCIPAL, turn_id) is None
        events = [r.event async for r in call]
        assert events[-1].payload.HasField("turn_failed")
        assert events[-1].payload.turn_failed.turn.status == t.TURN_STATUS_CANCELLED
        assert await first.agent_store.turn_status(LOCAL_PRINCIPAL, session_id, turn_id) is None
