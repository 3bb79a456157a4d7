"""The run machinery (engine/runs.py) against the real EventStore on SQLite and PostgreSQL:
numbering and batched keeping, fan-out, re-attach without gaps or repeats (live, finished,
from another replica), heartbeats, cancel, slow consumers, drain, failing producers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest
import pytest_asyncio
from google.rpc import status_pb2
from sqlalchemy.exc import DBAPIError

from agentd.app import Agentd
from agentd.engine import runs as runs_module
from agentd.engine.runs import RESPONSES, TURNS, Run, Runs, run_to_end
from agentd.errors import Unavailable
from agentd.storage import Database, Repository
from agentd.storage.agents import AgentStore
from agentd.storage.events import EventStore
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import response_events_pb2 as re
from agentd.v1 import turn_events_pb2 as te
from tests.conftest import database_refusing_connections, make_settings

OWNER, TURN = "alice", "turn_1"


async def make_turn(repo: Repository, turn_id: str = TURN) -> None:
    """A turn row for the events to hang on (events need their run to exist), in a session of
    its own (a session holds one open turn)."""
    store = AgentStore(repo)
    if not await store.agent_exists(OWNER, "agent_1"):
        agent = t.Agent(agent_id="agent_1")
        agent.created_at.FromMicroseconds(1)
        await store.create_agent(OWNER, agent)
    session = t.AgentSession(session_id=f"sess_{turn_id}", session_name="s")
    session.started_at.FromMicroseconds(1)
    assert await store.create_session(OWNER, "agent_1", session)
    turn = t.Turn(turn_id=turn_id, session_id=session.session_id)
    turn.started_at.FromMicroseconds(1)
    assert await store.insert_turn(OWNER, turn)


@pytest_asyncio.fixture
async def store(repo):
    await make_turn(repo)
    return EventStore(repo)


def runs_of(store: EventStore, **overrides) -> Runs:
    values = dict(heartbeat_s=30.0, flush_after_s=60.0, poll_s=0.02)
    values.update(overrides)
    return Runs(store, **values)


def started() -> te.TurnEvent:
    payload = te.TurnEventPayload(turn_start=te.TurnStartPayload(turn_id=TURN))
    return te.TurnEvent(turn_id=TURN, payload=payload)


def delta(text: str) -> te.TurnEvent:
    progress = te.StepProgressPayload(step_id="step_1", delta=te.ContentDelta(text=te.TextDelta(text=text)))
    return te.TurnEvent(turn_id=TURN, payload=te.TurnEventPayload(step_progress=progress))


def complete() -> te.TurnEvent:
    return te.TurnEvent(turn_id=TURN, payload=te.TurnEventPayload(
        turn_complete=te.TurnCompletePayload(turn=t.Turn(turn_id=TURN))))


def failed(reason: str) -> te.TurnEvent:
    return te.TurnEvent(turn_id=TURN, payload=te.TurnEventPayload(turn_failed=te.TurnFailedPayload(
        turn=t.Turn(turn_id=TURN), error=status_pb2.Status(message=reason))))


def kind_of(event: te.TurnEvent) -> str:
    return event.payload.WhichOneof("payload")


async def collect(stream) -> list[te.TurnEvent]:
    """Every event of a stream; a stream that hangs fails the test."""
    async with asyncio.timeout(20), contextlib.aclosing(stream):
        return [event async for event in stream]


def numbers(events) -> list[int]:
    return [e.sequence_number for e in events if kind_of(e) != "heartbeat"]


async def kept(store: EventStore, turn_id: str = TURN) -> list[te.TurnEvent]:
    return [te.TurnEvent.FromString(body) for _, body in await store.read_after(OWNER, turn_id, -1, 10_000)]


async def stop_writes_failed(run: Run, reason: str, error: BaseException | None) -> None:
    """What the engine's on_stop does: write the terminal event saying why."""
    await run.emit(failed(reason))


def recording_on_stop():
    """stop_writes_failed that also records each reason it is given: (reasons, on_stop)."""
    reasons: list[str] = []

    async def on_stop(run: Run, reason: str, error: BaseException | None) -> None:
        reasons.append(reason)
        await stop_writes_failed(run, reason, error)
    return reasons, on_stop


# ---------------------------------------------------------------- numbering and keeping

async def test_events_are_numbered_densely_and_kept_in_one_write_per_flush(store):
    runs = runs_of(store)

    async def producer(run):
        await run.emit(started())
        for i in range(50):
            await run.emit(delta(str(i)))
        await run.flush()
        for i in range(50, 100):
            await run.emit(delta(str(i)))
        await run.flush()
        await run.emit(complete())  # the terminal event flushes itself

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    events = await collect(run.events())
    assert numbers(events) == list(range(102))
    assert runs.appends == 3
    stored = await kept(store)
    assert stored == events
    assert [e.payload.step_progress.delta.text.text for e in stored[1:101]] == [str(i) for i in range(100)]
    assert run.terminal == events[-1] and kind_of(events[-1]) == "turn_complete"
    assert runs.get(OWNER, TURN) is None  # ended runs leave the registry


async def test_a_resumed_run_continues_its_sequence(store):
    runs = runs_of(store)

    async def first(run):
        await run.emit(started())
        await run.emit(te.TurnEvent(turn_id=TURN, payload=te.TurnEventPayload(
            turn_awaiting_input=te.TurnAwaitingInputPayload())))

    async def resumed(run):
        await run.emit(delta("after"))
        await run.emit(complete())

    assert numbers(await collect(runs.start(OWNER, TURN, first, kind=TURNS).events())) == [0, 1]
    run = runs.start(OWNER, TURN, resumed, kind=TURNS, first_sequence=2)
    assert numbers(await collect(run.events())) == [2, 3]
    assert numbers(await kept(store)) == [0, 1, 2, 3]


async def test_the_buffer_is_flushed_when_full(store):
    runs = runs_of(store, flush_every=10)

    async def producer(run):
        for i in range(25):
            await run.emit(delta(str(i)))
        await run.emit(complete())

    await collect(runs.start(OWNER, TURN, producer, kind=TURNS).events())
    assert runs.appends == 3  # 10, 10, then 5 + the terminal event
    assert numbers(await kept(store)) == list(range(26))


async def test_the_buffer_is_flushed_when_its_oldest_event_is_old(store):
    runs = runs_of(store, flush_after_s=0.5)
    seen_kept = []

    async def producer(run):
        await run.emit(started())
        await run.emit(delta("a"))  # young: stays buffered
        seen_kept.append(numbers(await kept(store)))
        await asyncio.sleep(0.6)
        await run.emit(delta("b"))  # the buffer's oldest is now old: all three are kept
        seen_kept.append(numbers(await kept(store)))
        await run.emit(complete())

    await collect(runs.start(OWNER, TURN, producer, kind=TURNS).events())
    assert seen_kept == [[], [0, 1, 2]]
    assert runs.appends == 2 and numbers(await kept(store)) == [0, 1, 2, 3]


# ---------------------------------------------------------------- fan-out and re-attach

async def test_every_consumer_gets_every_event(store):
    runs = runs_of(store)
    go = asyncio.Event()

    async def producer(run):
        await go.wait()
        await run.emit(started())
        for i in range(20):
            await run.emit(delta(str(i)))
            if i % 7 == 0:
                await run.flush()
        await run.emit(complete())

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    owner = asyncio.create_task(collect(run.events()))
    follower = asyncio.create_task(collect(runs.attach(OWNER, TURN, kind=TURNS)))
    await asyncio.sleep(0.05)
    go.set()
    first, second = await owner, await follower
    assert numbers(first) == numbers(second) == list(range(22))
    assert first == second


@pytest.mark.parametrize("queue_limit", [1000, 3])
async def test_re_attaching_anywhere_while_the_run_is_live_misses_and_repeats_nothing(store, queue_limit):
    """A fast producer, consumers attaching at random points with random starting_after;
    with tiny queues they overflow again and again and catch up from the store."""
    rng = random.Random(7)
    runs = runs_of(store, queue_limit=queue_limit)
    total = 1500
    consumers: list[tuple[int, asyncio.Task]] = []

    async def producer(run):
        await run.emit(started())
        for i in range(1, total - 1):
            await run.emit(delta(str(i)))
            if rng.random() < 0.03:
                await run.flush()
            if rng.random() < 0.1:
                await asyncio.sleep(0)
            if rng.random() < 0.03:
                after = rng.choice([None, -1, rng.randint(0, run.last_sequence)])
                follow = runs.attach(OWNER, TURN, kind=TURNS, starting_after=after)
                consumers.append((-1 if after is None else after, asyncio.create_task(collect(follow))))
        await run.emit(complete())

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    assert numbers(await collect(run.events())) == list(range(total))
    assert len(consumers) > 10
    for after, task in consumers:
        assert numbers(await task) == list(range(after + 1, total)), after


async def test_re_attaching_after_the_end_reads_the_store(store):
    runs = runs_of(store)

    async def producer(run):
        await run.emit(started())
        for i in range(10):
            await run.emit(delta(str(i)))
        await run.emit(complete())

    await collect(runs.start(OWNER, TURN, producer, kind=TURNS).events())
    writes = runs.appends
    for after, expected in [(None, list(range(12))), (0, list(range(1, 12))), (5, list(range(6, 12))),
                            (10, [11])]:
        assert numbers(await collect(runs.attach(OWNER, TURN, kind=TURNS, starting_after=after))) == expected

    async def over() -> bool:
        return False

    # After the terminal event there is nothing to wait for: the caller says the run is over.
    assert await collect(runs.attach(OWNER, TURN, kind=TURNS, starting_after=11, still_running=over)) == []
    assert runs.appends == writes  # reading never writes
    assert await collect(runs.attach("bob", TURN, kind=TURNS, still_running=over)) == []


async def test_a_follower_past_the_kept_end_of_a_run_that_is_over_still_gets_its_end(store):
    """A replica died after emitting events it never kept; recovery kept the end right after
    the kept ones. A client that saw more live and re-attaches past them gets that end."""
    runs = runs_of(store)
    await store.append(OWNER, TURN, [(0, started().SerializeToString())])
    end = failed("interrupted")
    end.sequence_number = 1
    await store.append(OWNER, TURN, [(1, end.SerializeToString())])

    async def over() -> bool:
        return False

    got = await collect(runs.attach(OWNER, TURN, kind=TURNS, starting_after=5, still_running=over))
    assert [(e.sequence_number, e.payload.WhichOneof("payload")) for e in got] == [(1, "turn_failed")]
    # A follower that saw the end itself gets nothing more.
    assert await collect(runs.attach(OWNER, TURN, kind=TURNS, starting_after=1, still_running=over)) == []
    # Without a kept end (the run ended some other way), the stream ends without one.
    await make_turn(store.repo, "turn_2")
    await store.append(OWNER, "turn_2", [(0, started().SerializeToString())])
    assert await collect(runs.attach(OWNER, "turn_2", kind=TURNS, starting_after=5, still_running=over)) == []


async def test_another_replica_follows_the_run_through_the_store(store, database_url):
    here = runs_of(store)
    other_db = Database(database_url)
    try:
        there = runs_of(EventStore(Repository(other_db)), heartbeat_s=0.1)
        steps = [asyncio.Event() for _ in range(3)]

        async def producer(run):
            await run.emit(started())
            await run.flush()
            await steps[0].wait()
            for i in range(30):
                await run.emit(delta(str(i)))
            await run.flush()
            await steps[1].wait()
            await run.emit(complete())

        run = here.start(OWNER, TURN, producer, kind=TURNS, background=True)
        following = asyncio.create_task(collect(there.attach(OWNER, TURN, kind=TURNS)))
        late = asyncio.create_task(collect(there.attach(OWNER, TURN, kind=TURNS, starting_after=20)))
        await asyncio.sleep(0.3)  # silence: the follower polls and gets heartbeats
        steps[0].set()
        await asyncio.sleep(0.2)
        steps[1].set()
        await run.wait()
        events = await following
        assert numbers(events) == list(range(32))
        heartbeats = [e for e in events if kind_of(e) == "heartbeat"]
        assert heartbeats and all(e.sequence_number == 0 and e.turn_id == TURN for e in heartbeats[:1])
        assert numbers(await late) == list(range(21, 32))
    finally:
        await other_db.close()


# ---------------------------------------------------------------- heartbeats

async def test_silence_brings_heartbeats_that_repeat_the_last_number_and_are_not_kept(store):
    runs = runs_of(store, heartbeat_s=0.05)
    go = asyncio.Event()

    async def producer(run):
        await run.emit(started())
        await run.emit(delta("a"))
        await go.wait()
        await run.emit(complete())

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    owner = asyncio.create_task(collect(run.events()))
    follower = asyncio.create_task(collect(runs.attach(OWNER, TURN, kind=TURNS)))
    await asyncio.sleep(0.4)
    go.set()
    for events in (await owner, await follower):
        beats = [e for e in events if kind_of(e) == "heartbeat"]
        assert len(beats) >= 3
        assert {e.sequence_number for e in beats} == {1}
        assert numbers(events) == [0, 1, 2]
    assert numbers(await kept(store)) == [0, 1, 2]
    with pytest.raises(ValueError):
        await Run(runs, OWNER, TURN, TURNS, background=False, first_sequence=0, on_stop=None).emit(
            TURNS.heartbeat(TURN, 0))


# ---------------------------------------------------------------- cancel

async def forever(run):
    await run.emit(started())
    await run.flush()
    await asyncio.Event().wait()


async def test_an_explicit_cancel_stops_the_run_and_on_stop_writes_its_terminal_event(store):
    runs = runs_of(store)
    reasons, on_stop = recording_on_stop()
    run = runs.start(OWNER, TURN, forever, kind=TURNS, on_stop=on_stop, background=True)
    follower = asyncio.create_task(collect(runs.attach(OWNER, TURN, kind=TURNS)))
    await asyncio.sleep(0.05)
    assert await runs.cancel(OWNER, TURN) is run
    assert reasons == ["cancelled"] and run.stop_reason == "cancelled"
    assert kind_of(run.terminal) == "turn_failed"
    events = await follower
    assert [kind_of(e) for e in events] == ["turn_start", "turn_failed"]
    assert await kept(store) == events
    assert await runs.cancel(OWNER, TURN) is None  # not running any more


async def test_a_run_cancelled_before_its_first_step_still_ends_through_on_stop(store):
    # A task cancelled before it starts never runs its coroutine: the run must not wait for
    # an end that never comes.
    runs = runs_of(store)
    reasons, on_stop = recording_on_stop()
    run = runs.start(OWNER, TURN, forever, kind=TURNS, on_stop=on_stop, background=True)
    async with asyncio.timeout(5):
        assert await runs.cancel(OWNER, TURN) is run  # no step between the start and the cancel
    assert reasons == ["cancelled"] and kind_of(run.terminal) == "turn_failed"
    assert [kind_of(e) for e in await kept(store)] == ["turn_failed"]  # the producer never ran


async def test_a_second_stop_does_not_interrupt_the_first_ones_on_stop(store):
    runs = runs_of(store)
    writing, release, reasons = asyncio.Event(), asyncio.Event(), []

    async def slow_on_stop(run, reason, error):
        reasons.append(reason)
        writing.set()
        await release.wait()  # its end being written
        await run.emit(failed(reason))

    run = runs.start(OWNER, TURN, forever, kind=TURNS, on_stop=slow_on_stop, background=True)
    await asyncio.sleep(0.05)
    first = asyncio.create_task(runs.cancel(OWNER, TURN))
    await writing.wait()
    second = asyncio.create_task(runs.cancel(OWNER, TURN, "interrupted"))
    await asyncio.sleep(0.05)
    release.set()
    assert await first is run and await second is run
    assert reasons == ["cancelled"] and kind_of(run.terminal) == "turn_failed"
    assert [kind_of(e) for e in await kept(store)] == ["turn_start", "turn_failed"]


async def test_a_producer_may_write_its_own_cancelled_event(store):
    runs = runs_of(store)
    called = []

    async def producer(run):
        await run.emit(started())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await run.emit(failed("cancelled by the producer"))
            raise

    async def on_stop(run, reason, error):
        called.append(reason)

    runs.start(OWNER, TURN, producer, kind=TURNS, on_stop=on_stop)
    await asyncio.sleep(0.05)
    run = await runs.cancel(OWNER, TURN)
    assert run.terminal.payload.turn_failed.error.message == "cancelled by the producer"
    assert called == []  # the terminal event was written: on_stop is not needed
    assert numbers(await kept(store)) == [0, 1]


async def test_the_owner_stream_going_away_cancels_the_run_but_followers_never_do(store):
    runs = runs_of(store)
    run = runs.start(OWNER, TURN, forever, kind=TURNS, on_stop=stop_writes_failed)
    follower = asyncio.create_task(collect(runs.attach(OWNER, TURN, kind=TURNS)))
    leaving = runs.attach(OWNER, TURN, kind=TURNS)
    assert kind_of(await anext(leaving)) == "turn_start"
    await leaving.aclose()  # a follower leaving: the run goes on
    await asyncio.sleep(0.05)
    assert not run.ended.is_set()

    owner = run.events()
    assert kind_of(await anext(owner)) == "turn_start"
    await owner.aclose()
    terminal = await asyncio.wait_for(run.wait(), 5)
    assert terminal.payload.turn_failed.error.message == "cancelled"
    assert [kind_of(e) for e in await follower] == ["turn_start", "turn_failed"]


async def test_a_cancelled_call_reading_the_owner_stream_cancels_the_run(store):
    """What a gRPC handler sees when its client cancels: CancelledError while it waits."""
    runs = runs_of(store)
    run = runs.start(OWNER, TURN, forever, kind=TURNS, on_stop=stop_writes_failed)
    handler = asyncio.create_task(collect(run.events()))
    await asyncio.sleep(0.05)
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert kind_of(await asyncio.wait_for(run.wait(), 5)) == "turn_failed"
    assert run.stop_reason == "cancelled"


@pytest.mark.parametrize("deleted_before_the_end", [True, False])
async def test_a_stream_behind_a_run_deleted_meanwhile_still_gets_its_end(
        store, repo, deleted_before_the_end):
    """Its agent or session deleted, the run's kept events go with the rows; its end is still
    in memory (kept and deleted, or never kept): a consumer behind the rows that went gets
    that end, not a stream that just stops (which a unary call answered INTERNAL)."""
    runs = runs_of(store)
    go = asyncio.Event()

    async def producer(run):
        for text in ("a", "b"):
            await run.emit(delta(text))
        await run.flush()
        await go.wait()
        await run.emit(failed("deleted meanwhile"))

    run = runs.start(OWNER, TURN, producer, kind=TURNS, background=True)
    owner = run.events()  # read only once the run is over: behind what was kept and deleted
    await asyncio.sleep(0.05)
    if deleted_before_the_end:
        assert await AgentStore(repo).delete_session(OWNER, "agent_1", f"sess_{TURN}")
    go.set()
    await asyncio.wait_for(run.ended.wait(), 5)
    if not deleted_before_the_end:
        assert await AgentStore(repo).delete_session(OWNER, "agent_1", f"sess_{TURN}")
    assert [kind_of(e) for e in await collect(owner)] == ["turn_failed"]


async def test_a_background_run_survives_its_owner_stream(store):
    runs = runs_of(store)
    go = asyncio.Event()

    async def producer(run):
        await run.emit(started())
        await go.wait()
        await run.emit(complete())

    run = runs.start(OWNER, TURN, producer, kind=TURNS, background=True, on_stop=stop_writes_failed)
    owner = run.events()
    assert kind_of(await anext(owner)) == "turn_start"
    await owner.aclose()
    await asyncio.sleep(0.05)
    assert not run.ended.is_set()
    go.set()
    assert kind_of(await asyncio.wait_for(run.wait(), 5)) == "turn_complete"
    assert run.stop_reason is None
    assert numbers(await collect(runs.attach(OWNER, TURN, kind=TURNS))) == [0, 1]


# ---------------------------------------------------------------- slow consumers

async def test_a_slow_consumer_overflows_without_holding_memory_and_catches_up(store):
    runs = runs_of(store, queue_limit=5)
    go = asyncio.Event()
    total = 300

    async def producer(run):
        await run.emit(started())
        await go.wait()
        for i in range(1, total - 1):
            await run.emit(delta(str(i)))
            if i % 40 == 0:
                await run.flush()
        await run.emit(complete())

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    slow = run.events()
    got = [await anext(slow)]
    go.set()
    await run.wait()  # the run never waited for the slow consumer
    (listener,) = run._listeners
    assert listener.overflowed and len(listener.items) == 0
    got += await collect(slow)
    assert numbers(got) == list(range(total))


# ---------------------------------------------------------------- drain

async def test_drain_lets_runs_finish_within_grace_and_interrupts_the_rest(store, repo):
    await make_turn(repo, "turn_2")
    runs = runs_of(store)
    reasons = {}

    async def on_stop(run, reason, error):
        reasons[run.run_id] = reason
        await run.emit(failed(reason))

    async def quick(run):
        await run.emit(started())
        await asyncio.sleep(0.05)
        await run.emit(complete())

    finishing = runs.start(OWNER, TURN, quick, kind=TURNS, on_stop=on_stop)
    stuck = runs.start(OWNER, "turn_2", forever, kind=TURNS, on_stop=on_stop)
    owner = asyncio.create_task(collect(stuck.events()))
    await runs.drain(0.3)
    assert kind_of(finishing.terminal) == "turn_complete"
    assert reasons == {"turn_2": "interrupted"}
    assert [kind_of(e) for e in await kept(store, "turn_2")] == ["turn_start", "turn_failed"]
    assert [kind_of(e) for e in await owner] == ["turn_start", "turn_failed"]
    with pytest.raises(Unavailable) as refused:
        runs.start(OWNER, "turn_3", quick, kind=TURNS)
    assert refused.value.reason == "SHUTTING_DOWN"


async def test_drain_refuses_new_calls_before_they_write_and_waits_for_those_admitted(store, repo):
    """A call admitted before the drain stores and starts its run (then drained like the
    others); one that comes after is UNAVAILABLE (SHUTTING_DOWN) before its first write."""
    await make_turn(repo, "turn_2")
    runs = runs_of(store)
    written = asyncio.Event()
    go_on = asyncio.Event()

    async def admitted_call() -> Run:
        with runs.admission():
            written.set()  # stands for the call's row insert, still under way
            await go_on.wait()
            return runs.start(OWNER, "turn_2", forever, kind=TURNS, on_stop=stop_writes_failed)

    call = asyncio.create_task(admitted_call())
    await written.wait()
    draining = asyncio.create_task(runs.drain(0))
    await asyncio.sleep(0.05)
    assert not runs.accepting and not draining.done()  # it waits for the admitted call
    with pytest.raises(Unavailable) as refused, runs.admission():
        pytest.fail("a call admitted during the drain")
    assert refused.value.reason == "SHUTTING_DOWN"
    go_on.set()
    run = await call
    await draining
    assert run.stop_reason == "interrupted"
    assert [kind_of(e) for e in await kept(store, "turn_2")][-1] == "turn_failed"


async def test_agentd_stop_interrupts_its_runs_before_the_database_closes(database_url, tmp_path):
    server = Agentd(make_settings(database_url, tmp_path, http_addr=""))
    await server.start()
    try:
        await make_turn(server.repo)
        run = server.runs.start(OWNER, TURN, forever, kind=TURNS, on_stop=stop_writes_failed)
        await asyncio.sleep(0.05)
    finally:
        await server.stop(0.1)
    assert run.stop_reason == "interrupted"
    db = Database(database_url)
    try:
        assert [kind_of(e) for e in await kept(EventStore(Repository(db)))] == ["turn_start", "turn_failed"]
    finally:
        await db.close()


# ---------------------------------------------------------------- failing producers

async def test_a_failing_producer_ends_every_stream(store):
    runs = runs_of(store)
    go = asyncio.Event()

    async def producer(run):
        await run.emit(started())
        await go.wait()
        raise ValueError("the model broke")

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    owner = asyncio.create_task(collect(run.events()))
    follower = asyncio.create_task(collect(runs.attach(OWNER, TURN, kind=TURNS)))
    await asyncio.sleep(0.05)
    go.set()
    assert numbers(await owner) == numbers(await follower) == [0]  # no terminal: they end anyway
    assert isinstance(run.error, ValueError) and run.stop_reason == "failed"
    assert numbers(await kept(store)) == [0]  # what was emitted is kept


async def test_a_run_that_fails_as_expected_takes_one_log_line_and_a_bug_its_traceback(store, repo, caplog):
    await make_turn(repo, "turn_2")
    runs = runs_of(store)

    async def model_down(run):
        raise Unavailable("Model 'm' is unavailable (HTTP 503): overloaded", reason="MODEL_UNAVAILABLE")

    async def bug(run):
        raise KeyError("oops")

    with caplog.at_level("INFO", logger="agentd.runs"):
        await runs.start(OWNER, TURN, model_down, kind=TURNS).wait()
        await runs.start(OWNER, "turn_2", bug, kind=TURNS).wait()
    down, broken = [r for r in caplog.records if r.name == "agentd.runs"]
    assert (down.levelname, down.exc_info) == ("WARNING", None)
    assert down.getMessage() == (
        f"turn {TURN} failed: UNAVAILABLE Model 'm' is unavailable (HTTP 503): overloaded")
    assert broken.levelname == "ERROR" and broken.exc_info[0] is KeyError


async def test_an_end_the_database_refused_is_not_kept_over_one_another_replica_kept_meanwhile(
        store, database_url, caplog, monkeypatch):
    """The run's unkept events are retried in the background; when another replica's recovery
    kept a terminal event with the same number meanwhile, that end stands: the retry stops with
    one line, not a failed write logged as a bug."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL connections can be refused from outside; an SQLite file cannot")
    monkeypatch.setattr(runs_module, "KEEP_RETRY_FIRST_S", 3.0)  # the other replica comes first
    runs, emitted, go = runs_of(store), asyncio.Event(), asyncio.Event()

    async def produce(run):
        await run.emit(started())
        await run.flush()
        await run.emit(delta("unkept"))  # buffered: the flush at the run's end is refused
        emitted.set()
        await go.wait()

    with caplog.at_level("INFO", logger="agentd.runs"):
        run = runs.start(OWNER, TURN, produce, kind=TURNS)
        await emitted.wait()
        async with database_refusing_connections(database_url):
            go.set()
            await run.ended.wait()
        recovered = failed("interrupted by another replica's recovery")
        recovered.sequence_number = 1
        while True:  # the first call after the outage may meet a connection it cut
            try:
                await store.append(OWNER, TURN, [(1, recovered.SerializeToString())])
                break
            except Unavailable:
                await asyncio.sleep(0.1)
        async with asyncio.timeout(10):
            while runs.keeping(TURNS):  # noqa: ASYNC110 - nothing outside Runs signals its end
                await asyncio.sleep(0.1)
    assert [kind_of(e) for e in await kept(store)] == ["turn_start", "turn_failed"]
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "agentd.runs"]
    assert ("INFO", f"turn {TURN}: another replica ended it meanwhile; its end there stands") in logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_on_stop_writes_the_failure_of_a_producer_that_raised_or_just_returned(store, repo):
    await make_turn(repo, "turn_2")
    runs = runs_of(store)
    seen = []

    async def on_stop(run, reason, error):
        seen.append((run.run_id, reason, type(error).__name__))
        await run.emit(failed(str(error)))

    async def raising(run):
        await run.emit(started())
        raise ValueError("the model broke")

    async def returning(run):
        await run.emit(started())

    first = runs.start(OWNER, TURN, raising, kind=TURNS, on_stop=on_stop)
    assert [kind_of(e) for e in await collect(first.events())] == ["turn_start", "turn_failed"]
    second = runs.start(OWNER, "turn_2", returning, kind=TURNS, on_stop=on_stop)
    assert await run_to_end(second.events(), TURNS) == second.terminal
    assert seen == [(TURN, "failed", "ValueError"), ("turn_2", "failed", "RuntimeError")]


async def test_a_terminal_event_and_the_producers_own_write_are_kept_in_one_commit(store, repo):
    runs = runs_of(store)
    turn = t.Turn(turn_id=TURN, session_id=f"sess_{TURN}")

    async def producer(run):
        await run.emit(started())
        await run.emit(complete(), also=AgentStore(repo).update_turn_work(OWNER, turn, "completed"))

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    assert [kind_of(e) for e in await collect(run.events())] == ["turn_start", "turn_complete"]
    assert runs.appends == 1
    assert await AgentStore(repo).turn_status(OWNER, f"sess_{TURN}", TURN) == "completed"
    assert numbers(await kept(store)) == [0, 1]


async def test_a_terminal_event_whose_own_write_fails_is_not_emitted_and_on_stop_ends_the_run(store, repo):
    runs = runs_of(store)

    def failing_write(conn):
        conn.exec_driver_sql("UPDATE no_such_table SET x = 1")

    async def producer(run):
        await run.emit(started())
        await run.emit(complete(), also=failing_write)

    run = runs.start(OWNER, TURN, producer, kind=TURNS, on_stop=stop_writes_failed)
    events = await collect(run.events())
    # The turn_complete was never seen nor kept; on_stop's turn_failed took its number.
    assert [(kind_of(e), e.sequence_number) for e in events] == [("turn_start", 0), ("turn_failed", 1)]
    assert run.stop_reason == "failed"
    assert [kind_of(e) for e in await kept(store)] == ["turn_start", "turn_failed"]
    assert await AgentStore(repo).turn_status(OWNER, f"sess_{TURN}", TURN) == "in_progress"


async def test_a_write_for_the_next_flush_goes_with_it_and_waits_for_the_next_if_it_fails(store, repo):
    runs = runs_of(store)
    turn = t.Turn(turn_id=TURN, session_id=f"sess_{TURN}")
    agents = AgentStore(repo)

    def failing_write(conn):
        conn.exec_driver_sql("UPDATE no_such_table SET x = 1")

    async def producer(run):
        await run.emit(started())
        run.write_with_next_flush(agents.update_turn_work(OWNER, turn, "awaiting_input"))
        with pytest.raises((Unavailable, DBAPIError)):  # SQLite's error is "unavailable"
            await run.flush(also=failing_write)
        assert await agents.turn_status(OWNER, f"sess_{TURN}", TURN) == "in_progress"  # nothing committed
        await run.emit(complete())  # the terminal event's flush commits the pending write

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    assert [kind_of(e) for e in await collect(run.events())] == ["turn_start", "turn_complete"]
    assert runs.appends == 1
    assert await agents.turn_status(OWNER, f"sess_{TURN}", TURN) == "awaiting_input"
    assert numbers(await kept(store)) == [0, 1]


async def test_only_a_terminal_event_carries_the_producers_own_write(store):
    runs = runs_of(store)
    refused = []

    async def producer(run):
        try:
            await run.emit(delta("x"), also=lambda conn: None)
        except ValueError as e:
            refused.append(str(e))
        await run.emit(complete())

    await runs.start(OWNER, TURN, producer, kind=TURNS).wait()
    assert refused == ["only a terminal event carries the producer's own write"]


async def test_run_to_end_is_the_unary_form_of_the_stream(store):
    runs = runs_of(store, heartbeat_s=0.02)

    async def producer(run):
        await run.emit(started())
        await asyncio.sleep(0.1)
        await run.emit(complete())

    run = runs.start(OWNER, TURN, producer, kind=TURNS)
    terminal = await run_to_end(run.events(), TURNS)
    assert kind_of(terminal) == "turn_complete" and terminal.sequence_number == 1
    assert terminal == (await kept(store))[-1]


def test_the_response_kind_knows_its_terminal_and_heartbeat_events():
    assert RESPONSES.is_terminal(re.ResponseStreamEvent(completed=re.ResponseLifecycleEvent()))
    assert RESPONSES.is_terminal(re.ResponseStreamEvent(error=re.ResponseErrorEvent()))
    assert not RESPONSES.is_terminal(re.ResponseStreamEvent(in_progress=re.ResponseLifecycleEvent()))
    beat = RESPONSES.heartbeat("resp_1", 7)
    assert RESPONSES.is_heartbeat(beat) and beat.sequence_number == 7
    assert TURNS.is_heartbeat(TURNS.heartbeat(TURN, 3))
