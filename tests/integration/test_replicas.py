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
from sqlalchemy import delete, update

from agentd.app import Agentd
from agentd.config import Settings
from agentd.context import LOCAL_PRINCIPAL
from agentd.errors import details_of
from agentd.storage import schema
from agentd.testing import start_agentd
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import agents_pb2 as pb
from agentd.v1 import agents_pb2_grpc
from agentd.v1.turn_events_pb2 import TurnEvent
from tests.conftest import error_of, fake_model_providers, make_settings, running_with_agents
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from tests.integration.test_turns import new_session, stream_turn, user

LEASE_S = 2.0  # short for the tests, long enough for a loaded machine to renew in time



def short_lease(database_url, tmp_path, fake) -> Settings:
    """The settings of an in-process replica whose model is `fake`, with a short lease."""
    return make_settings(database_url, tmp_path, providers=fake_model_providers(fake), run_lease_s=LEASE_S)


@contextlib.asynccontextmanager
async def replica(database_url, tmp_path, fake):
    """One in-process replica with a short lease, and a stub to call it."""
    async with running_with_agents(short_lease(database_url, tmp_path, fake)) as pair:
        yield pair


@contextlib.asynccontextmanager
async def two(replica_of, database_url, tmp_path, fake):
    """Two replicas of one database, each `replica_of(database_url, tmp_path, fake)`:
    ((server, stub), (server, stub))."""
    async with (
        replica_of(database_url, tmp_path, fake) as one,
        replica_of(database_url, tmp_path, fake) as other,
    ):
        yield one, other


async def expire_lease(server: Agentd, table, run_id: str) -> None:
    """What a replica paused past its lease leaves: the run's lease in the past, so that
    another replica's recovery takes it."""
    expire = update(table).where(table.c.id == run_id).values(lease_until=0)
    await server.db.write(lambda conn: conn.execute(expire))


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


@contextlib.asynccontextmanager
async def dying_replica(database_url, tmp_path, *replies: Reply, lease_s: float = LEASE_S):
    """A replica that dies: an `agentd serve` process of the shipped test kit, whose own model
    answers `replies`, and a channel to it and that model. At exit it is killed with SIGKILL
    (no drain, nothing marked; its leases just stop) before the channel closes, so streams
    still open then do not cancel their runs."""
    model = FakeOpenAIServer().start()  # its own: a hung answer holds a request thread
    model.script(*replies)
    env = {
        "AGENTD_DATABASE_URL": database_url,
        "AGENTD_PROVIDERS": json.dumps(fake_model_providers(model)),
        "AGENTD_RUN_LEASE_S": str(lease_s),
    }
    (tmp_path / "dying").mkdir()
    dying = start_agentd(tmp_path / "dying", env)
    try:
        await serving(dying)
        async with grpc.aio.insecure_channel(dying.grpc_target) as channel:
            try:
                yield channel, model
            finally:
                dying.process.kill()
                dying.process.wait()
    finally:
        dying.process.kill()
        dying.process.wait()
        model.close()


async def turn_of_a_dead_replica(database_url, tmp_path, reply: Reply, *, lease_s: float = LEASE_S,
                                  seen: int = 1) -> tuple[str, str, str, list]:
    """A turn left in_progress by a replica that died (dying_replica): it starts the turn
    (the model answers `reply`), its stream is read to its `seen`-th event, then it is
    killed. Returns the agent, session and turn ids and the events seen."""
    async with dying_replica(database_url, tmp_path, reply, lease_s=lease_s) as (channel, _):
        stub = agents_pb2_grpc.AgentsServiceStub(channel)
        agent_id, session_id = await new_session(stub)
        call = stream_turn(stub, agent_id, session_id, user("hi"), background=True)
        events = []
        async for response in call:
            events.append(response.event)
            if len(events) == seen:
                break
        call.cancel()
    return agent_id, session_id, events[0].payload.turn_start.turn_id, events


def follow_turn(stub, agent_id: str, session_id: str, turn_id: str, starting_after: int | None = None):
    request = pb.StreamTurnEventsRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id)
    if starting_after is not None:
        request.starting_after = starting_after
    return stub.StreamTurnEvents(request)


async def followed(call) -> list:
    """The events of a follow stream, heartbeats left out, within a bound (a regression that
    never ends the stream fails instead of hanging)."""
    async with asyncio.timeout(LEASE_S * 30):
        return [r.event async for r in call if not r.event.payload.HasField("heartbeat")]


def assert_interrupted(event, sequence_number: int) -> None:
    """`event` is recovery's end of an interrupted turn: turn_failed, TURN_INTERRUPTED."""
    assert event.payload.HasField("turn_failed") and event.sequence_number == sequence_number
    failed = event.payload.turn_failed
    assert failed.turn.status == t.TURN_STATUS_INTERRUPTED and failed.turn.error == failed.error
    assert failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert details_of(failed.error)[0] == "TURN_INTERRUPTED"


async def test_the_turn_of_a_replica_that_died_is_interrupted_by_a_live_one(database_url, tmp_path, fake):
    agent_id, session_id, turn_id, seen = await turn_of_a_dead_replica(
        database_url, tmp_path, Reply(text="never", hang=True), seen=2)  # turn_start, step_start
    async with replica(database_url, tmp_path, fake) as (live, stub):
        # Its lease may still run at this start; the periodic recovery then takes it. The
        # follower gets what the dead replica kept (likely nothing: its turn_start waited in
        # its buffer for the first step boundary), then recovery's turn_failed, numbered next.
        events = await followed(follow_turn(stub, agent_id, session_id, turn_id))
        kept, end = events[:-1], events[-1]
        assert kept == seen[:len(kept)]
        assert_interrupted(end, len(kept))
        turn = await live.agent_store.get_turn(LOCAL_PRINCIPAL, session_id, turn_id)
        assert turn == end.payload.turn_failed.turn
        # The session is free again, on any replica.
        fake.script(Reply(text="back"))
        done = await stub.CreateTurn(
            pb.CreateTurnRequest(agent_id=agent_id, session_id=session_id, messages=[user("again")])
        )
        assert done.turn.output_message.content.text == "back"


async def test_a_follower_of_a_turn_its_replica_left_gets_its_kept_events_then_turn_failed(
        database_url, tmp_path, fake):
    # The model streams one character every 50 ms, then hangs: the dying replica keeps its
    # events as they age (a second at most), so some of the deltas are kept before the kill.
    reply = Reply(text="x" * 60, chunk_size=1, chunk_delay=0.05, hang_after_chunks=50)
    agent_id, session_id, turn_id, seen = await turn_of_a_dead_replica(database_url, tmp_path, reply, seen=40)
    assert seen[-1].payload.HasField("step_progress")
    async with replica(database_url, tmp_path, fake) as (_, stub):
        events = await followed(follow_turn(stub, agent_id, session_id, turn_id))
        kept, end = events[:-1], events[-1]
        assert len(kept) > 2 and kept[:2] == seen[:2]  # turn_start, step_start, then deltas
        assert kept == seen[:len(kept)]  # what the dead replica kept, as it streamed it
        assert_interrupted(end, len(kept))  # numbered right after them
        got = await stub.GetTurn(pb.GetTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id))
        assert got.turn == end.payload.turn_failed.turn
        # Following again, from any point, ends the same way (it is kept, not made up per stream).
        again = follow_turn(stub, agent_id, session_id, turn_id, starting_after=len(kept) - 1)
        assert await followed(again) == [end]


async def test_two_replicas_recovering_at_once_keep_one_turn_failed(database_url, tmp_path, fake):
    # A long lease: the turn's outlives this test unless expired below, so neither replica's
    # recovery (at start, or periodic) takes it before both recover at once.
    agent_id, session_id, turn_id, _ = await turn_of_a_dead_replica(
        database_url, tmp_path, Reply(text="never", hang=True), lease_s=600)
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (second, _)):
        assert await status_of(first, session_id, turn_id) == "in_progress"
        await expire_lease(first, schema.turns, turn_id)
        counts = await asyncio.gather(first.turns.recover(), second.turns.recover())
        assert sorted(counts) == [0, 1]
        rows = await first.runs.store.read_after(LOCAL_PRINCIPAL, turn_id, -1, 100)
        kept = [TurnEvent.FromString(body) for _, body in rows]
        assert [e.payload.WhichOneof("payload") for e in kept].count("turn_failed") == 1
        assert_interrupted(kept[-1], len(kept) - 1)
        assert await followed(follow_turn(a, agent_id, session_id, turn_id)) == kept


async def test_a_turn_another_replica_recovered_stops_here(database_url, tmp_path, fake):
    fake.script(Reply(text="never", hang=True))
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (second, _)):
        agent_id, session_id = await new_session(a)
        call, turn_id = await started(a, agent_id, session_id)
        await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
        run = first.runs.get(LOCAL_PRINCIPAL, turn_id)
        # The first replica pauses (no renewal) past its lease: the second recovers the turn.
        await first.turns.leases.close()
        await expire_lease(first, schema.turns, turn_id)
        assert await second.turns.recover() == 1
        assert await status_of(second, session_id, turn_id) == "interrupted"
        # Back from its pause, the first sees that at its next renewal and stops the run; its
        # client's stream ends rather than hangs, and the store keeps the recovery's end.
        await first.turns.leases.start()
        async with asyncio.timeout(LEASE_S * 5):
            await run.wait()
            events = [r.event async for r in call if not r.event.payload.HasField("heartbeat")]
        assert events[-1].payload.HasField("turn_failed")
        kept = [TurnEvent.FromString(body)
                for _, body in await first.runs.store.read_after(LOCAL_PRINCIPAL, turn_id, -1, 100)]
        assert [e.payload.WhichOneof("payload") for e in kept].count("turn_failed") == 1
        assert_interrupted(kept[-1], len(kept) - 1)
        got = await a.GetTurn(pb.GetTurnRequest(agent_id=agent_id, session_id=session_id, turn_id=turn_id))
        assert got.turn == kept[-1].payload.turn_failed.turn


async def test_a_replica_never_recovers_the_runs_it_runs_itself(database_url, tmp_path, fake):
    """A database stall can outlast the lease this replica would have renewed: its own
    recovery must still leave its live turn alone (it interrupted it, and the turn's next
    events then collided with the recovery's turn_failed)."""
    fake.script(Reply(text="slow answer", chunk_size=2, chunk_delay=0.1))
    async with replica(database_url, tmp_path, fake) as (server, stub):
        agent_id, session_id = await new_session(stub)
        call, turn_id = await started(stub, agent_id, session_id)
        await server.turns.leases.close()
        await expire_lease(server, schema.turns, turn_id)
        assert await server.turns.recover() == 0
        events = [r.event async for r in call if not r.event.payload.HasField("heartbeat")]
        assert events[-1].payload.HasField("turn_complete")
        assert await status_of(server, session_id, turn_id) == "completed"


async def test_a_session_is_busy_across_replicas(database_url, tmp_path, fake):
    fake.script(*[Reply(text="never", hang=True)] * 4)
    async with two(replica, database_url, tmp_path, fake) as ((_, a), (_, b)):
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
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (_, b)):
        agent_id, session_id = await new_session(a)
        call, turn_id = await started(a, agent_id, session_id)
        await b.DeleteSession(pb.DeleteSessionRequest(agent_id=agent_id, session_id=session_id))
        # The run on the first replica ended (cancelled, its end kept) before the rows went.
        assert first.runs.get(LOCAL_PRINCIPAL, turn_id) is None
        events = [r.event async for r in call]
        assert events[-1].payload.HasField("turn_failed")
        assert events[-1].payload.turn_failed.turn.status == t.TURN_STATUS_CANCELLED
        assert await first.agent_store.turn_status(LOCAL_PRINCIPAL, session_id, turn_id) is None


async def test_a_cancel_that_meets_a_delete_is_not_found_at_once(database_url, tmp_path, fake):
    """The turn runs on the first replica, which stops renewing (so it sees neither the
    cancel's mark nor the delete); the cancel on the second, waiting for that replica to
    end the turn, learns of the delete at its next poll instead of after two leases."""
    fake.script(Reply(text="never", hang=True))
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (second, b)):
        agent_id, session_id = await new_session(a)
        call, turn_id = await started(a, agent_id, session_id)
        await first.turns.leases.close()
        ids = {"agent_id": agent_id, "session_id": session_id, "turn_id": turn_id}
        cancel = asyncio.ensure_future(b.CancelTurn(pb.CancelTurnRequest(**ids)))
        for _ in range(1000):  # until the cancel has marked the row
            if await second.agent_store.turn_status(LOCAL_PRINCIPAL, session_id, turn_id) == "cancelled":
                break
            await asyncio.sleep(0.01)
        gone = delete(schema.turns).where(schema.turns.c.id == turn_id)  # as a delete takes them
        await second.db.write(lambda conn: conn.execute(gone))
        loop = asyncio.get_running_loop()
        asked = loop.time()
        code, reason, _ = await error_of(cancel)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "TURN_NOT_FOUND")
        assert loop.time() - asked < LEASE_S
        call.cancel()
