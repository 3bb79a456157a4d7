"""The typed stores against the real databases (SQLite and PostgreSQL): turns and steps,
run events, responses, conversations."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agentd import paging
from agentd.errors import InvalidArgument, NotFound
from agentd.storage import Database, Repository, schema
from agentd.storage.agents import AgentStore, KnownTurns, OpenTurnExists
from agentd.storage.conversations import ConversationStore
from agentd.storage.events import EventStore
from agentd.storage.responses import ResponseStore
from agentd.v1 import agent_resources_pb2 as t
from agentd.v1 import conversations_pb2 as cv
from agentd.v1 import response_items_pb2 as item_types
from agentd.v1 import response_resource_pb2 as rt


async def count(repo, table, **where) -> int:
    query = select(func.count()).select_from(table).where(*(table.c[k] == v for k, v in where.items()))
    return await repo.db.read(lambda conn: conn.execute(query).scalar())


async def session_of(store: AgentStore, owner: str = "alice") -> tuple[str, str]:
    agent = t.Agent(agent_id="agent_1")
    agent.created_at.FromMicroseconds(1)
    await store.create_agent(owner, agent)
    session = t.AgentSession(session_id="sess_1", session_name="s")
    session.started_at.FromMicroseconds(1)
    assert await store.create_session(owner, "agent_1", session)
    return "agent_1", "sess_1"


def turn(turn_id: str, at: int = 1) -> t.Turn:
    value = t.Turn(turn_id=turn_id, session_id="sess_1")
    value.started_at.FromMicroseconds(at)
    return value


def inference(turn_id: str, step_id: str) -> t.AgentStep:
    return t.AgentStep(inference=t.InferenceStep(turn_id=turn_id, step_id=step_id))


def message(item_id: str) -> item_types.ResponseItem:
    item = item_types.ResponseItem()
    item.message.id = item_id
    item.message.role = item_types.RESPONSE_MESSAGE_ROLE_USER
    return item


# ---------------------------------------------------------------- turns and steps

async def test_a_turn_is_read_with_its_steps_in_order_and_stores_none_in_its_body(repo):
    store = AgentStore(repo)
    _, session_id = await session_of(store)
    started = await store.insert_turn("alice", turn("turn_1"))
    assert started.turn_id == "turn_1"
    for step_id in ("step_a", "step_b"):
        assert await store.append_step("alice", "turn_1", inference("turn_1", step_id))
    done = turn("turn_1")
    done.steps.append(inference("turn_1", "ignored"))  # steps live in the steps table only
    done.completed_at.FromMicroseconds(5)
    assert await store.update_turn("alice", done, "completed")
    read = await store.get_turn("alice", session_id, "turn_1")
    assert [s.inference.step_id for s in read.steps] == ["step_a", "step_b"]
    assert read.completed_at.ToMicroseconds() == 5
    stored = await repo.get_body(schema.turns, "alice", "turn_1")
    assert not t.Turn.FromString(stored).steps
    status = select(schema.turns.c.status)
    assert await repo.db.read(lambda conn: conn.execute(status).scalar()) == "completed"
    step = await store.get_step("alice", session_id, "turn_1", "step_b")
    assert step.inference.step_id == "step_b"
    assert await store.get_step("alice", session_id, "turn_1", "step_x") is None
    assert await store.get_step("alice", "sess_other", "turn_1", "step_b") is None


async def test_a_sessions_turns_come_oldest_first_each_with_its_steps(repo):
    store = AgentStore(repo)
    _, session_id = await session_of(store)
    for i in (2, 1, 3):
        await store.insert_turn("alice", turn(f"turn_{i}", at=i))
        await store.append_step("alice", f"turn_{i}", inference(f"turn_{i}", f"step_{i}"))
        await store.update_turn("alice", turn(f"turn_{i}", at=i), "completed")  # one open turn at a time
    turns = await store.session_turns("alice", session_id)
    assert [(x.turn_id, x.steps[0].inference.step_id) for x in turns] == [
        ("turn_1", "step_1"), ("turn_2", "step_2"), ("turn_3", "step_3")]
    assert await store.session_turns("bob", session_id) == []


async def test_a_sessions_turns_after_the_known_ones_are_read_and_all_when_one_came_between(repo):
    store = AgentStore(repo)
    agent_id, session_id = await session_of(store)
    assert await store.turns_after("alice", agent_id, session_id) == ([], False)
    # A session holds one open turn at most: each ends before the next starts, the last runs.
    for i in (1, 3, 4):
        await store.insert_turn("alice", turn(f"turn_{i}", at=i * 10))
        if i != 4:
            await store.update_turn("alice", turn(f"turn_{i}", at=i * 10), "completed")
    everything = [("turn_1", "completed", 10), ("turn_3", "completed", 30), ("turn_4", "in_progress", 40)]
    assert await store.turns_after("alice", agent_id, session_id) == (everything, False)
    known = KnownTurns(2, 30, "turn_3")
    assert await store.turns_after("alice", agent_id, session_id, known) == (everything[2:], False)
    # Another replica adds a turn among the known ones: they are no longer what the caller
    # knows, so every turn comes back.
    await store.update_turn("alice", turn("turn_4", at=40), "completed")
    await store.insert_turn("alice", turn("turn_2", at=20))
    everything[2] = ("turn_4", "completed", 40)
    assert await store.turns_after("alice", agent_id, session_id, known) == (
        [*everything[:1], ("turn_2", "in_progress", 20), *everything[1:]], True)
    # No such session of that agent, or not the owner's: None.
    assert await store.turns_after("alice", agent_id, "sess_x") is None
    assert await store.turns_after("alice", "agent_x", session_id) is None
    assert await store.turns_after("bob", agent_id, session_id) is None


async def test_starting_a_turn_reads_the_turns_not_held_and_stores_it_in_one_transaction(repo):
    store = AgentStore(repo)
    agent_id, session_id = await session_of(store)
    for i in (1, 2):
        await store.insert_turn("alice", turn(f"turn_{i}", at=i * 10))
        await store.append_step("alice", f"turn_{i}", inference(f"turn_{i}", f"step_{i}"))
        await store.update_turn("alice", turn(f"turn_{i}", at=i * 10), "completed")
    # turn_1 is held by the caller (known and cached): only turn_2 is read, with its steps.
    started = await store.start_turn("alice", agent_id, turn("turn_3", at=30),
                                     known=KnownTurns(1, 10, "turn_1"), cached={"turn_1"})
    assert started.stored.turn_id == "turn_3"
    assert (started.rows, started.from_start) == ([("turn_2", "completed", 20)], False)
    assert [(b.turn_id, b.steps[0].inference.step_id) for b in started.bodies] == [("turn_2", "step_2")]
    assert await store.open_turn("alice", session_id) == "turn_3"
    # The session has an open turn now: refused, nothing stored.
    with pytest.raises(OpenTurnExists):
        await store.start_turn("alice", agent_id, turn("turn_4", at=40), known=KnownTurns(0, -1, ""),
                               cached=set())
    assert await count(repo, schema.turns, session_id=session_id) == 3
    # No such session of that agent, or not the owner's: None, nothing stored.
    for owner, agent in (("alice", "agent_x"), ("bob", agent_id)):
        assert await store.start_turn(owner, agent, turn("turn_5", at=50), known=KnownTurns(0, -1, ""),
                                      cached=set()) is None
    assert await count(repo, schema.turns) == 3


async def test_a_retried_turn_start_answers_the_turn_the_first_one_stored(repo):
    store = AgentStore(repo)
    agent_id, session_id = await session_of(store)
    first = await store.start_turn("alice", agent_id, turn("turn_1"), known=KnownTurns(0, -1, ""),
                                   cached=set(), request_id="req-1")
    await store.update_turn("alice", turn("turn_1"), "completed")
    again = await store.start_turn("alice", agent_id, turn("turn_2", at=2), known=KnownTurns(0, -1, ""),
                                   cached=set(), request_id="req-1")
    assert first.stored.turn_id == again.stored.turn_id == "turn_1"
    assert await count(repo, schema.turns, session_id=session_id) == 1


async def test_turns_and_steps_of_missing_or_foreign_parents_are_refused(repo):
    store = AgentStore(repo)
    await session_of(store)
    assert await store.insert_turn("bob", turn("turn_1")) is None
    assert await store.append_step("alice", "turn_x", inference("turn_x", "step_1")) is False
    assert await store.update_turn("alice", turn("turn_x"), "completed") is False
    assert await store.get_turn("alice", "sess_1", "turn_x") is None


async def test_a_retried_turn_insert_returns_the_first_turn(repo):
    store = AgentStore(repo)
    await session_of(store)
    first, second = await asyncio.gather(store.insert_turn("alice", turn("turn_1"), "key"),
                                         store.insert_turn("alice", turn("turn_2"), "key"))
    assert first.turn_id == second.turn_id
    assert await count(repo, schema.turns) == 1


async def test_a_session_holds_one_open_turn_whoever_inserts_it(repo):
    # Two replicas starting a turn in one session at once: the database lets one in.
    store = AgentStore(repo)
    await session_of(store)
    results = await asyncio.gather(store.insert_turn("alice", turn("turn_1")),
                                   store.insert_turn("alice", turn("turn_2")), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["OpenTurnExists", "Turn"]
    assert await count(repo, schema.turns) == 1
    (opened,) = [r for r in results if isinstance(r, t.Turn)]
    await store.update_turn("alice", opened, "awaiting_input")  # paused: still open
    with pytest.raises(OpenTurnExists):
        await store.insert_turn("alice", turn("turn_3", at=3))
    await store.update_turn("alice", opened, "completed")
    assert await store.insert_turn("alice", turn("turn_3", at=3))


async def test_of_two_resumes_of_a_paused_turn_one_wins(repo):
    store = AgentStore(repo)
    await session_of(store)
    await store.insert_turn("alice", turn("turn_1"))
    await store.update_turn("alice", turn("turn_1"), "awaiting_input")
    resumes = [("resume-a", 5), ("resume-b", 6)]
    won = await asyncio.gather(*(store.update_turn("alice", turn("turn_1"), "in_progress", resume=resume,
                                                   lease_until=10) for resume in resumes))
    assert sorted(won) == [False, True]
    # The row holds the winner's resume alone, running under its lease.
    columns = schema.turns.c
    query = select(columns.status, columns.resume_request_id, columns.resume_sequence, columns.lease_until)
    row = await repo.db.read(lambda conn: conn.execute(query.where(columns.id == "turn_1")).one())
    assert tuple(row) == ("in_progress", *resumes[won.index(True)], 10)


def interrupting(seen: list[tuple[t.Turn, int]]):
    """A recovery's `interrupt` callback (the engine's role): marks the turn, records what
    it was given, and returns an event body naming the turn and its number."""
    def interrupt(turn: t.Turn, number: int) -> bytes:
        turn.status = t.TURN_STATUS_INTERRUPTED
        seen.append((t.Turn.FromString(turn.SerializeToString()), number))
        return f"{turn.turn_id} ended at {number}".encode()
    return interrupt


async def test_recovery_interrupts_only_running_turns_whose_lease_expired(repo):
    store, events = AgentStore(repo), EventStore(repo)
    await session_of(store)
    leases = {"turn_1": None, "turn_2": 100, "turn_3": 300}  # None: a row from before leases
    for n, (turn_id, lease) in enumerate(leases.items(), start=1):
        session = t.AgentSession(session_id=f"sess_l{n}", session_name="s")  # one open turn each
        await store.create_session("alice", "agent_1", session)
        running = t.Turn(turn_id=turn_id, session_id=session.session_id)
        await store.insert_turn("alice", running, lease_until=lease)
    await store.renew_leases(["turn_3"], 400)
    seen: list[tuple[t.Turn, int]] = []
    assert await store.interrupt_running_turns(200, interrupting(seen)) == 2  # no lease, and the one of 100
    assert await store.turn_status("alice", "sess_l1", "turn_1") == "interrupted"
    assert await store.turn_status("alice", "sess_l3", "turn_3") == "in_progress"
    assert sorted((turn.turn_id, number) for turn, number in seen) == [("turn_1", 0), ("turn_2", 0)]
    assert await events.read_after("alice", "turn_1", -1, 10) == [(0, b"turn_1 ended at 0")]
    # The next one has kept events and steps: its end is numbered after them, and the
    # callback gets the turn with its steps (the row keeps none: they have their own).
    await events.append("alice", "turn_3", [(0, b"start"), (1, b"step")])
    assert await store.append_step("alice", "turn_3", inference("turn_3", "step_1"))
    await store.renew_leases(["turn_3"], 150)
    assert await store.interrupt_running_turns(200, interrupting(seen)) == 1
    assert [step.inference.step_id for step in seen[-1][0].steps] == ["step_1"] and seen[-1][1] == 2
    assert [n for n, _ in await events.read_after("alice", "turn_3", -1, 10)] == [0, 1, 2]
    ended = await store.get_turn("alice", "sess_l3", "turn_3")
    assert ended.status == t.TURN_STATUS_INTERRUPTED and len(ended.steps) == 1
    assert await store.interrupt_running_turns(200, interrupting(seen)) == 0  # ended: left alone


async def test_of_two_recoveries_at_once_one_ends_the_turn(repo):
    # Two replicas (two database handles, as two processes have) recover the same turn.
    url = repo.db.url.render_as_string(hide_password=False)
    store, other = AgentStore(repo), AgentStore(Repository(Database(url)))
    try:
        await session_of(store)
        await store.insert_turn("alice", turn("turn_1"), lease_until=100)
        seen: list[tuple[t.Turn, int]] = []
        counts = await asyncio.gather(store.interrupt_running_turns(200, interrupting(seen)),
                                      other.interrupt_running_turns(200, interrupting(seen)))
        assert sorted(counts) == [0, 1] and len(seen) == 1
        assert await EventStore(repo).read_after("alice", "turn_1", -1, 10) == [(0, b"turn_1 ended at 0")]
    finally:
        await other.db.close()


# ---------------------------------------------------------------------- run events

async def test_events_are_kept_in_batches_and_read_after_a_number(repo):
    agents, events = AgentStore(repo), EventStore(repo)
    await session_of(agents)
    await agents.insert_turn("alice", turn("turn_1"))
    await events.append("alice", "turn_1", [(1, b"a"), (2, b"b"), (3, b"c")])
    await events.append("alice", "turn_1", [(4, b"d")])
    await events.append("alice", "turn_1", [])
    assert await events.read_after("alice", "turn_1", 0, 100) == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")]
    assert await events.read_after("alice", "turn_1", 2, 1) == [(3, b"c")]
    assert await events.read_after("bob", "turn_1", 0, 100) == []


async def test_a_batch_with_a_number_kept_before_is_refused_whole(repo):
    agents, events = AgentStore(repo), EventStore(repo)
    await session_of(agents)
    await agents.insert_turn("alice", turn("turn_1"))
    await events.append("alice", "turn_1", [(1, b"a")])
    with pytest.raises(IntegrityError):
        await events.append("alice", "turn_1", [(2, b"b"), (1, b"again")])
    assert await events.read_after("alice", "turn_1", 0, 100) == [(1, b"a")]


async def test_events_of_a_missing_run_are_not_found(repo):
    events = EventStore(repo)
    with pytest.raises(NotFound) as caught:
        await events.append("alice", "turn_gone", [(1, b"a")])
    assert caught.value.reason == "TURN_NOT_FOUND"
    with pytest.raises(NotFound) as caught:
        await events.append("alice", "resp_gone", [(1, b"a")])
    assert caught.value.reason == "RESPONSE_NOT_FOUND"
    with pytest.raises(ValueError):
        await events.append("alice", "sess_1", [(1, b"a")])


@pytest.mark.parametrize("deleted", ["agent", "session"])
async def test_deleting_what_holds_a_turn_deletes_its_events(repo, deleted):
    agents, events = AgentStore(repo), EventStore(repo)
    agent_id, session_id = await session_of(agents)
    await agents.insert_turn("alice", turn("turn_1"))
    await events.append("alice", "turn_1", [(1, b"a"), (2, b"b")])
    if deleted == "agent":
        assert await agents.delete_agent("alice", agent_id)
    else:
        assert await agents.delete_session("alice", agent_id, session_id)
    assert await count(repo, schema.run_events) == 0


async def test_deleting_a_response_deletes_its_items_and_events(repo):
    responses, events = ResponseStore(repo), EventStore(repo)
    await responses.create("alice", rt.Response(id="resp_1", model="m"), [message("msg_1")])
    await events.append("alice", "resp_1", [(1, b"a")])
    assert await responses.delete("alice", "resp_1")
    assert not await responses.delete("alice", "resp_1")
    for table in (schema.run_events, schema.response_items):
        assert await count(repo, table) == 0, table.name


# ----------------------------------------------------------------------- responses

async def test_a_response_is_stored_updated_and_read(repo):
    store = ResponseStore(repo)
    response = rt.Response(id="resp_1", model="m", status=rt.RESPONSE_STATUS_IN_PROGRESS)
    response.conversation.id = "conv_1"
    created = await store.create("alice", response, [message("msg_1"), message("msg_2")])
    assert created == response
    response.status = rt.RESPONSE_STATUS_COMPLETED
    response.output.append(message("msg_3"))
    assert await store.update("alice", response)
    assert await store.get("alice", "resp_1") == response
    assert await store.get("bob", "resp_1") is None
    assert not await store.update("bob", response)
    inputs = await store.input_items("alice", "resp_1")
    assert [i.message.id for i in inputs] == ["msg_1", "msg_2"]
    assert await store.input_items("bob", "resp_1") is None
    row = select(schema.responses.c.status, schema.responses.c.conversation_id)
    assert tuple(await repo.db.read(lambda conn: conn.execute(row).one())) == ("completed", "conv_1")


async def test_a_long_input_is_listed_a_page_at_a_time(repo):
    store = ResponseStore(repo)
    ids = [f"msg_{i:03d}" for i in range(250)]
    await store.create("alice", rt.Response(id="resp_1", model="m"), [message(i) for i in ids])

    async def walk(descending: bool) -> list[str]:
        seen, cursor = [], paging.Cursor()
        while True:
            items, page = await store.input_items_page("alice", "resp_1", cursor, 100, descending)
            seen += [i.message.id for i in items]
            assert (page.first_id, page.last_id) == (seen[-len(items)], seen[-1])
            if not page.has_more:
                return seen
            cursor = paging.decode(page.next_page_token)
    assert await walk(descending=False) == ids
    assert await walk(descending=True) == ids[::-1]
    after, page = await store.input_items_page("alice", "resp_1", paging.Cursor(after="msg_247"), 100, False)
    assert [i.message.id for i in after] == ["msg_248", "msg_249"] and not page.has_more
    before, page = await store.input_items_page("alice", "resp_1", paging.Cursor(before="msg_005"), 3, False)
    assert [i.message.id for i in before] == ["msg_002", "msg_003", "msg_004"] and page.has_more
    with pytest.raises(InvalidArgument, match="no item with id 'msg_nope'"):
        await store.input_items_page("alice", "resp_1", paging.Cursor(after="msg_nope"), 10, False)
    # A forged key beyond the position column (32 bits on PostgreSQL): refused, not INTERNAL.
    with pytest.raises(InvalidArgument, match="not a page token"):
        await store.input_items_page("alice", "resp_1", paging.Cursor(key=(2**40, "x")), 10, False)
    assert await store.input_items_page("bob", "resp_1", paging.Cursor(), 10, False) is None


async def test_a_response_is_stored_without_its_secrets(repo):
    """MCP headers and tokens are `sensitive`: the run keeps them in memory; the row never has them."""
    store = ResponseStore(repo)
    response = rt.Response(id="resp_1", model="m")
    mcp = response.tools.add().mcp
    mcp.server_label, mcp.server_url, mcp.authorization = "docs", "http://mcp", "tok-123"
    mcp.headers["X-Key"] = "secret-456"
    await store.create("alice", response, [message("msg_1")])
    response.status = rt.RESPONSE_STATUS_COMPLETED
    await store.update("alice", response)
    stored = await store.get("alice", "resp_1")
    assert stored.tools[0].mcp.server_label == "docs"
    assert not stored.tools[0].mcp.HasField("authorization") and not stored.tools[0].mcp.headers
    body = await repo.db.read(lambda conn: conn.execute(select(schema.responses.c.body)).scalar_one())
    assert b"tok-123" not in body and b"secret-456" not in body
    assert response.tools[0].mcp.authorization == "tok-123"  # the caller's message is untouched


async def test_a_retried_response_create_returns_the_first_and_writes_nothing(repo):
    store = ResponseStore(repo)
    first, second = await asyncio.gather(
        store.create("alice", rt.Response(id="resp_1", model="m"), [message("msg_1")], "key"),
        store.create("alice", rt.Response(id="resp_2", model="m"), [message("msg_2")], "key"))
    assert first.id == second.id
    assert await count(repo, schema.responses) == 1
    assert await count(repo, schema.response_items) == 1


def running_response(response_id: str, status: int = rt.RESPONSE_STATUS_IN_PROGRESS,
                     store: bool = True) -> rt.Response:
    return rt.Response(id=response_id, model="m", status=status, store=store)


async def test_response_leases_decide_what_recovery_ends(repo):
    store, events = ResponseStore(repo), EventStore(repo)
    leases = {"resp_old": None, "resp_dead": 100, "resp_live": 300}  # None: a row from before leases
    for response_id, lease in leases.items():
        await store.create("alice", running_response(response_id), [], lease_until=lease)
    for response in (running_response("resp_queued", rt.RESPONSE_STATUS_QUEUED),
                     running_response("resp_done", rt.RESPONSE_STATUS_COMPLETED),
                     running_response("resp_unstored", store=False)):
        await store.create("alice", response, [], lease_until=100)
    assert await store.renew_leases(["resp_live"], 400) == {}
    assert sorted(r.id for _, r in await store.expired(200)) == ["resp_dead", "resp_old", "resp_queued",
                                                                 "resp_unstored"]
    # A replica that renews after recovery's scan keeps its response: recovery's writes are
    # guarded by the expired lease.
    assert await store.renew_leases(["resp_dead"], 400) == {}
    failed = running_response("resp_dead", rt.RESPONSE_STATUS_FAILED)
    assert not await store.end_expired("alice", failed, 200, lambda n: b"never")
    assert not await store.delete_expired("alice", "resp_dead", 200)
    assert await store.status("alice", "resp_dead") == "in_progress"
    # An expired one ends with its terminal event, once.
    await events.append("alice", "resp_old", [(0, b"created")])
    failed = running_response("resp_old", rt.RESPONSE_STATUS_FAILED)
    assert await store.end_expired("alice", failed, 200, lambda n: f"failed at {n}".encode())
    assert not await store.end_expired("alice", failed, 200, lambda n: b"again")
    assert await store.status("alice", "resp_old") == "failed"
    assert await events.read_after("alice", "resp_old", -1, 10) == [(0, b"created"), (1, b"failed at 1")]
    assert await store.delete_expired("alice", "resp_unstored", 200)
    assert await store.get("alice", "resp_unstored") is None


async def test_a_response_renewal_reports_those_ended_elsewhere(repo):
    store = ResponseStore(repo)
    for response_id in ("resp_1", "resp_2", "resp_3", "resp_4"):
        await store.create("alice", running_response(response_id), [], lease_until=100)
    assert await store.runs_elsewhere("alice", "resp_1", 50)
    assert not await store.runs_elsewhere("alice", "resp_1", 150)  # expired: no live replica
    assert not await store.runs_elsewhere("bob", "resp_1", 50)
    # Another replica cancels one (stored cancelled at once), recovers one, deletes one.
    cancelled = running_response("resp_1", rt.RESPONSE_STATUS_CANCELLED)
    assert await store.request_cancel("alice", cancelled)
    assert not await store.request_cancel("alice", cancelled)  # no longer running
    assert (await store.get("alice", "resp_1")).status == rt.RESPONSE_STATUS_CANCELLED
    assert await store.end_expired("alice", running_response("resp_2", rt.RESPONSE_STATUS_FAILED), 200,
                                   lambda n: b"failed")
    assert await store.delete("alice", "resp_3")
    ended = await store.renew_leases(["resp_1", "resp_2", "resp_3", "resp_4"], 300)
    assert ended == {"resp_1": "cancelled", "resp_2": "failed", "resp_3": None}
    assert await store.runs_elsewhere("alice", "resp_4", 250)  # renewed


async def test_responses_list_newest_first_in_pages_and_by_model(repo):
    store = ResponseStore(repo)
    for i, model in enumerate(["a", "b", "a"]):
        await store.create("alice", rt.Response(id=f"resp_{i}", model=model), [])
    await store.create("bob", rt.Response(id="resp_x", model="a"), [])
    first, page = await store.list("alice", paging.Cursor(), 2)
    assert [r.id for r in first] == ["resp_2", "resp_1"] and page.has_more
    rest, page = await store.list("alice", page.next_cursor, 2)
    assert [r.id for r in rest] == ["resp_0"] and not page.has_more
    only_a, _ = await store.list("alice", paging.Cursor(), 10, descending=False, model="a")
    assert [r.id for r in only_a] == ["resp_0", "resp_2"]


# -------------------------------------------------------------------- conversations

async def test_a_conversation_is_created_with_items_and_deleted_with_them(repo):
    store = ConversationStore(repo)
    conversation = cv.Conversation(id="conv_1", created_at=7, metadata={"k": "v"})
    assert await store.create("alice", conversation, [message("msg_1")]) == conversation
    assert await store.get("alice", "conv_1") == conversation
    assert await store.get("bob", "conv_1") is None
    assert not await store.delete("bob", "conv_1")
    await store.append_items("alice", "conv_1", [message("msg_2")], "key")
    assert await store.delete("alice", "conv_1")
    for table in (schema.conversation_items, schema.conversation_item_requests):
        assert await count(repo, table) == 0, table.name


async def test_a_retried_conversation_create_returns_the_first(repo):
    store = ConversationStore(repo)
    first, second = await asyncio.gather(
        store.create("alice", cv.Conversation(id="conv_1"), [message("msg_1")], "key"),
        store.create("alice", cv.Conversation(id="conv_2"), [message("msg_2")], "key"))
    assert first.id == second.id
    assert await count(repo, schema.conversation_items) == 1


async def test_items_append_in_order_and_an_existing_id_is_replaced_in_place(repo):
    store = ConversationStore(repo)
    await store.create("alice", cv.Conversation(id="conv_1"), [message("msg_1"), message("msg_2")])
    appended = await store.append_items("alice", "conv_1", [message("msg_3"), message("msg_4")])
    assert [i.message.id for i in appended] == ["msg_3", "msg_4"]
    replacement = message("msg_2")
    replacement.message.role = item_types.RESPONSE_MESSAGE_ROLE_ASSISTANT
    await store.append_items("alice", "conv_1", [replacement])
    items, page = await store.list_items("alice", "conv_1", paging.Cursor(), 3, descending=False)
    assert [i.message.id for i in items] == ["msg_1", "msg_2", "msg_3"] and page.has_more
    assert items[1].message.role == item_types.RESPONSE_MESSAGE_ROLE_ASSISTANT
    rest, page = await store.list_items("alice", "conv_1", page.next_cursor, 3, descending=False)
    assert [i.message.id for i in rest] == ["msg_4"] and not page.has_more
    newest, _ = await store.list_items("alice", "conv_1", paging.Cursor(after="msg_3"), 10)
    assert [i.message.id for i in newest] == ["msg_2", "msg_1"]
    assert await store.list_items("bob", "conv_1", paging.Cursor(), 10) is None
    assert await store.append_items("bob", "conv_1", [message("msg_9")]) is None


async def test_a_retried_append_returns_the_first_items_and_appends_nothing(repo):
    store = ConversationStore(repo)
    await store.create("alice", cv.Conversation(id="conv_1"), [])
    first, second = await asyncio.gather(
        store.append_items("alice", "conv_1", [message("msg_1")], "key"),
        store.append_items("alice", "conv_1", [message("msg_2")], "key"))
    assert first == second
    assert await count(repo, schema.conversation_items) == 1


async def test_conversation_items_are_read_and_deleted_one_by_one(repo):
    store = ConversationStore(repo)
    await store.create("alice", cv.Conversation(id="conv_1"), [message("msg_1")])
    assert (await store.get_item("alice", "conv_1", "msg_1")).message.id == "msg_1"
    assert await store.get_item("bob", "conv_1", "msg_1") is None
    assert not await store.delete_item("bob", "conv_1", "msg_1")
    assert await store.delete_item("alice", "conv_1", "msg_1")
    assert await store.get_item("alice", "conv_1", "msg_1") is None
    assert not await store.delete_item("alice", "conv_1", "msg_1")
