"""AgentStore: agents, their sessions, the sessions' turns and the turns' steps.

Steps live in one place, the `steps` table (one row per step, in `position` order): a stored
turn body carries no steps, and reading a turn assembles them. The turn engine appends a step
when it completes, so a crash loses at most the step in flight.

Deleting an agent or a session cascades (foreign keys) to its sessions, turns, steps and the
turns' run events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Set
from functools import partial
from typing import NamedTuple

from sqlalchemy import and_, bindparam, func, or_, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError

from agentd.clock import now_micros
from agentd.paging import Cursor
from agentd.storage import schema
from agentd.storage.database import Prepared
from agentd.storage.events import append_next
from agentd.storage.repository import Page, Repository, body_of
from agentd.v1 import agent_resources_pb2 as types

IN_PROGRESS = "in_progress"  # the status of a turn the engine has started
AWAITING_INPUT = "awaiting_input"
INTERRUPTED = "interrupted"
CANCELLED = "cancelled"
# What another replica may set on a turn that runs here (CancelTurn, recovery).
ENDED_ELSEWHERE = (CANCELLED, INTERRUPTED)
OPEN_STATUSES = (IN_PROGRESS, AWAITING_INPUT)  # a session with such a turn is busy

TurnRow = tuple[str, str, int]  # a turn's id, status column and created_at (microseconds)


class KnownTurns(NamedTuple):
    """The first `count` turns of a session, the last of them (created_at, turn_id)."""

    count: int
    created_at: int
    turn_id: str


NO_TURNS = KnownTurns(0, -1, "")


class StartedTurn(NamedTuple):
    """What AgentStore.start_turn read and stored."""

    stored: types.Turn  # the new turn, or the one a first call with the same request_id made
    rows: list[TurnRow]  # the session's turns after the known ones, before this one
    from_start: bool  # rows are all of the session's turns (see turns_after)
    bodies: list[types.Turn]  # those of rows not cached, with their steps, oldest first


class OpenTurnExists(Exception):
    """The session already has an open (in_progress or awaiting_input) turn: the database
    holds at most one per session, whichever replica started it."""


def step_id_of(step: types.AgentStep) -> str:
    return getattr(step, step.WhichOneof("step")).step_id


class AgentStore:
    def __init__(self, repo: Repository):
        self.repo = repo
        self.db = repo.db

    # ------------------------------------------------------------------ agents

    async def create_agent(self, owner: str, agent: types.Agent,
                           request_id: str | None = None) -> types.Agent:
        """Stores a new agent; with a request_id already used by this owner, stores nothing
        and returns the agent that first call created."""
        body = await self.repo.create(schema.agents, key=("owner", "request_id"), id=agent.agent_id,
                                      owner=owner, request_id=request_id,
                                      created_at=agent.created_at.ToMicroseconds(),
                                      body=body_of(agent))
        return types.Agent.FromString(body)

    async def get_agent(self, owner: str, agent_id: str) -> types.Agent | None:
        body = await self.repo.get_body(schema.agents, owner, agent_id)
        return types.Agent.FromString(body) if body is not None else None

    async def agent_exists(self, owner: str, agent_id: str) -> bool:
        return await self.repo.exists(schema.agents, owner, agent_id)

    async def list_agents(self, owner: str, cursor: Cursor, limit: int) -> tuple[list[types.Agent], Page]:
        page = await self.repo.page(schema.agents, owner, cursor, limit)
        return [types.Agent.FromString(b) for b in page.bodies], page

    async def delete_agent(self, owner: str, agent_id: str) -> bool:
        return await self.repo.delete(schema.agents, owner, agent_id)

    # ---------------------------------------------------------------- sessions

    async def create_session(self, owner: str, agent_id: str, session: types.AgentSession,
                             request_id: str | None = None) -> types.AgentSession | None:
        """Stores a new session of the owner's agent (None: no such agent); with a
        request_id already used in this agent, returns the session the first call created."""
        body = await self.repo.create(schema.sessions, key=("agent_id", "request_id"),
                                      parent=schema.agents, parent_id=agent_id,
                                      id=session.session_id, owner=owner, agent_id=agent_id,
                                      request_id=request_id,
                                      created_at=session.started_at.ToMicroseconds(),
                                      body=body_of(session))
        return types.AgentSession.FromString(body) if body is not None else None

    async def get_session(self, owner: str, agent_id: str, session_id: str) -> types.AgentSession | None:
        """The session without its turns (session_turns reads those)."""
        body = await self.repo.get_body(schema.sessions, owner, session_id, agent_id=agent_id)
        return types.AgentSession.FromString(body) if body is not None else None

    async def agent_of_session(self, owner: str, agent_id: str, session_id: str) -> types.Agent | None:
        """The owner's agent when that session of it exists (one read for both); None when
        either is missing (get_agent and get_session then say which)."""
        agents, sessions = schema.agents, schema.sessions
        query = _statement("agent_of_session", lambda: (
            select(agents.c.body).join(sessions, sessions.c.agent_id == agents.c.id)
            .where(agents.c.owner == bindparam("owner"), agents.c.id == bindparam("agent_id"),
                   sessions.c.owner == bindparam("owner"), sessions.c.id == bindparam("session_id"))))
        params = {"owner": owner, "agent_id": agent_id, "session_id": session_id}
        body = await self.db.read(lambda conn: conn.execute(query, params).scalar_one_or_none())
        return types.Agent.FromString(body) if body is not None else None

    async def list_sessions(self, owner: str, agent_id: str, cursor: Cursor,
                            limit: int) -> tuple[list[types.AgentSession], Page]:
        page = await self.repo.page(schema.sessions, owner, cursor, limit, agent_id=agent_id)
        return [types.AgentSession.FromString(b) for b in page.bodies], page

    async def delete_session(self, owner: str, agent_id: str, session_id: str) -> bool:
        return await self.repo.delete(schema.sessions, owner, session_id, agent_id=agent_id)

    # ------------------------------------------------------------ turns, steps

    async def insert_turn(self, owner: str, turn: types.Turn, request_id: str | None = None,
                          settings: bytes | None = None, lease_until: int | None = None) -> types.Turn | None:
        """Stores a turn the engine starts (status in_progress, leased until `lease_until`) in
        its session (None: the owner has no such session), with its own settings (see
        `turn_resume_state`). With a request_id already used in this session, stores nothing
        and returns the turn the first call created (without steps). OpenTurnExists when the
        session has an open turn (checked by the database: also across replicas)."""
        try:
            body = await self.repo.create(schema.turns, key=("session_id", "request_id"),
                                          parent=schema.sessions, parent_id=turn.session_id,
                                          **self._turn_row(owner, turn, request_id, settings, lease_until))
        except IntegrityError as e:
            return await self._conflict(owner, turn, request_id, e)
        return types.Turn.FromString(body) if body is not None else None

    @staticmethod
    def _turn_row(owner: str, turn: types.Turn, request_id: str | None, settings: bytes | None,
                  lease_until: int | None) -> dict:
        return dict(id=turn.turn_id, owner=owner, session_id=turn.session_id, request_id=request_id,
                    status=IN_PROGRESS, created_at=turn.started_at.ToMicroseconds(), settings=settings,
                    lease_until=lease_until, body=body_of(_without_steps(turn)))

    async def _conflict(self, owner: str, turn: types.Turn, request_id: str | None,
                        error: IntegrityError) -> types.Turn | None:
        """Why a turn's insert failed its constraints. The one-open-turn index: a concurrent
        retry with the same request_id may be what holds it (the index can be checked before
        the key), then that turn is the answer; else OpenTurnExists. The session's foreign key
        (deleted meanwhile): None."""
        first = await self.turn_by_request_id(owner, turn.session_id, request_id) if request_id else None
        if first is not None:
            return types.Turn(turn_id=first, session_id=turn.session_id)
        if await self.open_turn(owner, turn.session_id) is not None:
            raise OpenTurnExists(turn.session_id) from None
        if not await self.repo.exists(schema.sessions, owner, turn.session_id):
            return None
        raise error  # a bug

    async def update_turn(self, owner: str, turn: types.Turn, status: str, *,
                          resume: tuple[str | None, int] | None = None,
                          lease_until: int | None = None, keep_interrupted: bool = False) -> bool:
        """Replaces a turn's body (its steps are not part of it) and status. With `resume`,
        the last resume's (request_id, first sequence number) too, the lease, and only if the
        turn is still awaiting input (so of two replicas resuming it at once, one does). With
        `keep_interrupted`, a turn that recovery interrupted stays as recovery stored it. False
        if the owner has no such turn (or it was not to be changed)."""
        return await self.db.write(self.update_turn_work(owner, turn, status, resume=resume,
                                                         lease_until=lease_until,
                                                         keep_interrupted=keep_interrupted))

    def update_turn_work(self, owner: str, turn: types.Turn, status: str, *,
                         resume: tuple[str | None, int] | None = None, lease_until: int | None = None,
                         keep_interrupted: bool = False, if_in_progress: bool = False):
        """update_turn as a function of a connection, for a caller's own transaction.
        `if_in_progress`: only a turn still in progress (an end written late must not replace
        one a cancel stored meanwhile)."""
        values: dict = dict(status=status, body=body_of(_without_steps(turn)))
        if resume is not None:
            values.update(resume_request_id=resume[0], resume_sequence=resume[1], lease_until=lease_until)

        def build():
            statement = update(schema.turns).where(schema.turns.c.owner == bindparam("match_owner"),
                                                   schema.turns.c.id == bindparam("match_id"))
            if resume is not None:
                statement = statement.where(schema.turns.c.status == AWAITING_INPUT)
            if keep_interrupted:
                statement = statement.where(schema.turns.c.status != INTERRUPTED)
            if if_in_progress:
                statement = statement.where(schema.turns.c.status == IN_PROGRESS)
            return statement

        name = f"update_turn_{resume is not None}_{keep_interrupted}_{if_in_progress}"
        statement = _statement(name, lambda: Prepared(build()))
        params = {"match_owner": owner, "match_id": turn.turn_id, **values}
        return lambda conn: statement.run(conn, params).rowcount > 0

    async def renew_leases(self, turn_ids: list[str], lease_until: int) -> dict[str, str]:
        """The replica running these turns vouches for them until `lease_until` (those still
        in_progress). Returns the status of those another replica ended meanwhile (cancelled
        by a CancelTurn it served, or interrupted by its recovery): their runs must stop."""
        turns = schema.turns
        renew = _statement("renew_leases", lambda: (
            update(turns)
            .where(turns.c.id.in_(bindparam("ids", expanding=True)), turns.c.status == IN_PROGRESS)
            .values(lease_until=bindparam("until"))))
        ended = _statement("ended_elsewhere", lambda: (
            select(turns.c.id, turns.c.status)
            .where(turns.c.id.in_(bindparam("ids", expanding=True)), turns.c.status.in_(ENDED_ELSEWHERE))))

        def work(conn) -> dict[str, str]:
            conn.execute(renew, {"ids": turn_ids, "until": lease_until})
            return {row.id: row.status for row in conn.execute(ended, {"ids": turn_ids})}
        return await self.db.write(work)

    async def runs_elsewhere(self, owner: str, turn_id: str, now: int) -> bool:
        """Whether the turn is in progress under a lease that has not expired: a live
        replica runs it (when it does not run here)."""
        turns = schema.turns
        query = select(turns.c.id).where(turns.c.owner == owner, turns.c.id == turn_id,
                                         turns.c.status == IN_PROGRESS, turns.c.lease_until >= now)
        return await self.db.read(lambda conn: conn.execute(query).first() is not None)

    async def request_cancel(self, owner: str, turn_id: str, cancelled: types.Turn | None = None) -> bool:
        """Asks the replica running the turn to cancel it: the status becomes cancelled, which
        that replica sees at its next lease renewal; its run then ends and writes the turn's
        end. `cancelled`: the turn as cancelled, stored now in case that replica dies first.
        False if the turn is no longer in progress."""
        turns = schema.turns
        values: dict = {"status": CANCELLED}
        if cancelled is not None:
            values["body"] = body_of(_without_steps(cancelled))
        statement = (update(turns).where(turns.c.owner == owner, turns.c.id == turn_id,
                                         turns.c.status == IN_PROGRESS).values(**values))
        return await self.db.write(lambda conn: conn.execute(statement).rowcount > 0)

    async def turn_resume_state(self, owner: str, session_id: str,
                                turn_id: str) -> tuple[bytes | None, str | None, int | None]:
        """What a resume of the turn reads besides the turn: its settings (a serialized
        CreateTurnRequest holding only the turn's instructions, tool_config and toolgroups;
        None for turns stored before they were kept), and the last resume's request_id and
        first sequence number. All None when there is no such turn."""
        turns = schema.turns
        query = select(turns.c.settings, turns.c.resume_request_id, turns.c.resume_sequence).where(
            turns.c.owner == owner, turns.c.id == turn_id, turns.c.session_id == session_id)
        row = await self.db.read(lambda conn: conn.execute(query).first())
        if row is None:
            return None, None, None
        return row.settings, row.resume_request_id, row.resume_sequence

    async def append_step(self, owner: str, turn_id: str, step: types.AgentStep) -> bool:
        """Appends a completed step after the turn's last one. False if the owner has no
        such turn."""
        return await self.db.write(self.append_step_work(owner, turn_id, step))

    def append_step_work(self, owner: str, turn_id: str, step: types.AgentStep):
        """append_step as a function of a connection, for a caller's own transaction."""
        turns, steps = schema.turns, schema.steps
        # One engine task writes a turn; still, two appends must never share a position:
        # PostgreSQL locks the turn row first, and on SQLite the unique (turn_id, position)
        # index refuses the second one. The insert reads the position and checks the turn
        # in the same statement (no row inserted: no such turn of the owner).
        lock = _statement("lock_turn", lambda: select(turns.c.id).where(
            turns.c.owner == bindparam("owner"), turns.c.id == bindparam("turn_id")).with_for_update())
        insert = _statement("append_step", lambda: Prepared(steps.insert().from_select(
            ["id", "owner", "turn_id", "created_at", "position", "body"],
            select(bindparam("step_id", type_=steps.c.id.type),
                   bindparam("owner", type_=steps.c.owner.type),
                   turns.c.id,
                   bindparam("created_at", type_=steps.c.created_at.type),
                   select(func.coalesce(func.max(steps.c.position) + 1, 0))
                   .where(steps.c.turn_id == bindparam("turn_id")).scalar_subquery(),
                   bindparam("body", type_=steps.c.body.type))
            .where(turns.c.owner == bindparam("owner"), turns.c.id == bindparam("turn_id")))))
        params = {"owner": owner, "turn_id": turn_id, "step_id": step_id_of(step),
                  "created_at": now_micros(), "body": body_of(step)}

        def work(conn) -> bool:
            if conn.dialect.name == "postgresql" and conn.execute(lock, params).first() is None:
                return False
            return insert.run(conn, params).rowcount > 0
        return work

    async def session_turn_statuses(self, owner: str, session_id: str) -> list[tuple[str, str]]:
        """The (id, status column) of the session's turns, oldest first: no bodies read."""
        statement = _statement("turn_statuses", lambda: (
            select(schema.turns.c.id, schema.turns.c.status)
            .where(schema.turns.c.owner == bindparam("owner"),
                   schema.turns.c.session_id == bindparam("session_id"))
            .order_by(schema.turns.c.created_at, schema.turns.c.id)))
        params = {"owner": owner, "session_id": session_id}
        return await self.db.read(lambda conn: [tuple(r) for r in conn.execute(statement, params)])

    async def turns_after(self, owner: str, agent_id: str, session_id: str,
                          known: KnownTurns = NO_TURNS) -> tuple[list[TurnRow], bool] | None:
        """The session's turns after the first `known.count` of them, the last of which is
        (`known.created_at`, `known.turn_id`) in (created_at, id) order: their (id, status
        column, created_at), oldest first, and False. A caller that knows a session's first
        turns (e.g. ended ones, which never change) reads only the rest, since a session's
        turns are only ever added (or deleted with it). When the session no longer has
        exactly that many turns up to that one (another replica added one in between), all
        of its turns, and True. None: the owner has no such session of that agent. One read."""
        return await self.db.read(self._turns_after_work(owner, agent_id, session_id, known))

    def _turns_after_work(self, owner: str, agent_id: str, session_id: str, known: KnownTurns):
        # One statement: the session's row, joined to its turns after the known ones (none:
        # one row of NULLs), each row with the number of turns up to the last known one.
        statement = _statement("turns_after", lambda: Prepared(_turns_after_statement()))
        params = {"owner": owner, "agent_id": agent_id, "session_id": session_id,
                  "created_at": known.created_at, "turn_id": known.turn_id}

        def work(conn) -> tuple[list[TurnRow], bool] | None:
            rows = statement.run(conn, params).all()
            if not rows:
                return None
            from_start = rows[0].known != known.count
            if from_start:
                rows = statement.run(conn, {**params, "created_at": NO_TURNS.created_at,
                                                "turn_id": NO_TURNS.turn_id}).all()
            return [(row.id, row.status, row.created_at) for row in rows if row.id is not None], from_start
        return work

    async def start_turn(self, owner: str, agent_id: str, turn: types.Turn, *, known: KnownTurns,
                         cached: Set[str], request_id: str | None = None, settings: bytes | None = None,
                         lease_until: int | None = None) -> StartedTurn | None:
        """What starting a turn reads and writes, in one transaction: the session's turns
        after `known` (turns_after), the bodies of those of them not in `cached`, with their
        steps, and the new turn, stored as insert_turn does. None, and nothing stored: the
        owner's agent has no such session. OpenTurnExists, and nothing stored: the session
        has an open turn. With a request_id already used in the session, `stored` is the turn
        the first call created (without steps)."""
        after = self._turns_after_work(owner, agent_id, turn.session_id, known)
        insert = self.repo.insert_work(schema.turns, key=("session_id", "request_id"), **self._turn_row(
            owner, turn, request_id, settings, lease_until))

        def work(conn) -> StartedTurn | None:
            found = after(conn)
            if found is None:
                return None
            rows, from_start = found
            if any(status in OPEN_STATUSES for _, status, _ in rows):
                raise OpenTurnExists(turn.session_id)
            missing = [turn_id for turn_id, _, _ in rows if turn_id not in cached]
            bodies = self._session_turns_work(owner, turn.session_id, missing)(conn) if missing else []
            return StartedTurn(types.Turn.FromString(insert(conn)), rows, from_start, bodies)
        try:
            return await self.db.write(work)
        except IntegrityError as e:
            # The one-open-turn index (another replica started one since the read), or the
            # session's foreign key (deleted since): as insert_turn.
            return await self._conflict(owner, turn, request_id, e)

    async def get_turn(self, owner: str, session_id: str, turn_id: str) -> types.Turn | None:
        """The turn of that session, with its steps."""
        turns = await self.session_turns(owner, session_id, [turn_id])
        return turns[0] if turns else None

    async def session_turns(self, owner: str, session_id: str,
                            turn_ids: list[str] | None = None) -> list[types.Turn]:
        """The session's turns (or those of them in turn_ids), oldest first, with their steps."""
        return await self.db.scan(self._session_turns_work(owner, session_id, turn_ids))

    def _session_turns_work(self, owner: str, session_id: str, turn_ids: list[str] | None):
        turns, steps = schema.turns, schema.steps

        def build(by_ids: bool):
            query = select(turns.c.id, turns.c.body).where(turns.c.owner == bindparam("owner"),
                                                           turns.c.session_id == bindparam("session_id"))
            if by_ids:
                query = query.where(turns.c.id.in_(bindparam("turn_ids", expanding=True)))
            return query.order_by(turns.c.created_at, turns.c.id)
        by_ids = turn_ids is not None
        query = _statement(f"session_turns_{by_ids}", lambda: build(by_ids))
        steps_query = _statement("steps_of_turns", lambda: (
            select(steps.c.turn_id, steps.c.body)
            .where(steps.c.turn_id.in_(bindparam("turn_ids", expanding=True)))
            .order_by(steps.c.turn_id, steps.c.position)))
        params = {"owner": owner, "session_id": session_id}
        if by_ids:
            params["turn_ids"] = list(turn_ids)

        def work(conn) -> list[types.Turn]:
            rows = conn.execute(query, params).all()
            if not rows:
                return []
            found = conn.execute(steps_query, {"turn_ids": [r.id for r in rows]}).all()
            steps_of = defaultdict(list)
            for step in found:
                steps_of[step.turn_id].append(types.AgentStep.FromString(step.body))
            result = []
            for row in rows:
                turn = types.Turn.FromString(row.body)
                turn.steps.extend(steps_of[row.id])
                result.append(turn)
            return result
        return work

    async def get_step(self, owner: str, session_id: str, turn_id: str,
                       step_id: str) -> types.AgentStep | None:
        """One step of a turn of that session, read from its own row."""
        turns, steps = schema.turns, schema.steps
        query = (select(steps.c.body).join(turns, turns.c.id == steps.c.turn_id)
                 .where(steps.c.owner == owner, steps.c.id == step_id, steps.c.turn_id == turn_id,
                        turns.c.session_id == session_id))
        body = await self.db.read(lambda conn: conn.execute(query).scalar_one_or_none())
        return types.AgentStep.FromString(body) if body is not None else None

    async def turn_status(self, owner: str, session_id: str, turn_id: str) -> str | None:
        """The turn's status column (None: no such turn of that session)."""
        turns = schema.turns
        query = _statement("turn_status", lambda: select(turns.c.status).where(
            turns.c.owner == bindparam("owner"), turns.c.id == bindparam("turn_id"),
            turns.c.session_id == bindparam("session_id")))
        params = {"owner": owner, "turn_id": turn_id, "session_id": session_id}
        return await self.db.read(lambda conn: conn.execute(query, params).scalar_one_or_none())

    async def open_turn(self, owner: str, session_id: str) -> str | None:
        """The id of a turn of the session that is in progress or awaiting input, if any."""
        turns = schema.turns
        query = (select(turns.c.id).where(turns.c.owner == owner, turns.c.session_id == session_id,
                                          turns.c.status.in_(OPEN_STATUSES)).limit(1))
        return await self.db.read(lambda conn: conn.execute(query).scalar_one_or_none())

    async def running_turns(self, owner: str, agent_id: str, session_id: str | None = None) -> list[str]:
        """The ids of the in-progress turns of the agent's sessions (or of that session)."""
        turns, sessions = schema.turns, schema.sessions
        query = (select(turns.c.id).join(sessions, sessions.c.id == turns.c.session_id)
                 .where(turns.c.owner == owner, sessions.c.agent_id == agent_id,
                        turns.c.status == IN_PROGRESS))
        if session_id is not None:
            query = query.where(turns.c.session_id == session_id)
        return await self.db.read(lambda conn: list(conn.execute(query).scalars()))

    async def is_stored(self, owner: str, turn_id: str) -> bool:
        return await self.repo.exists(schema.turns, owner, turn_id)

    async def existing_turns(self, owner: str, turn_ids: list[str]) -> set[str]:
        """Those of the owner's turns that are still stored."""
        return await self.repo.existing(schema.turns, owner, turn_ids)

    async def turn_by_request_id(self, owner: str, session_id: str, request_id: str) -> str | None:
        """The id of the turn a create with this idempotency key started in the session."""
        turns = schema.turns
        query = select(turns.c.id).where(turns.c.owner == owner, turns.c.session_id == session_id,
                                         turns.c.request_id == request_id)
        return await self.db.read(lambda conn: conn.execute(query).scalar_one_or_none())

    async def interrupt_running_turns(self, now: int, interrupt: Callable[[types.Turn, int], bytes],
                                      live_here: frozenset[str] = frozenset()) -> int:
        """Recovery: every turn still in progress whose lease expired before `now` (its
        replica died, or stopped renewing) becomes interrupted, with the terminal event its
        run never kept. Turns that live replicas run keep renewed leases and are left alone.
        Rows without a lease (written before leases) count as expired. Returns how many.

        `interrupt(turn, n)` is the engine's: it ends the turn given (read with its steps) as
        interrupted, in place, and returns its terminal event numbered n, right after the
        last event the run kept (serialized). Storage builds no event itself: the engine
        owns their form. Per turn, the status, the body and that event are written in this
        one transaction, so a turn never shows interrupted without its terminal event. The
        status update (WHERE status is still in_progress) comes first and decides who
        writes: of two replicas recovering at once, the one whose update changed the row
        writes the event; the other finds the turn ended and writes nothing. `live_here`:
        turns the caller's own process runs, left alone."""
        turns, steps = schema.turns, schema.steps
        # The status test is the partial index's own text: SQLite uses that index only then
        # (with a bound status it scans every turn, at every renewal tick of every replica).
        expired = (select(turns.c.id)
                   .where(text(schema.TURN_RUNNING),
                          or_(turns.c.lease_until.is_(None), turns.c.lease_until < now)))
        claim = _statement("claim_interrupted", lambda: (
            update(turns).where(turns.c.id == bindparam("row_id"), turns.c.status == IN_PROGRESS)
            .values(status=INTERRUPTED)))
        read = _statement("interrupted_turn", lambda: (
            select(turns.c.owner, turns.c.body).where(turns.c.id == bindparam("row_id"))))
        read_steps = _statement("steps_of_turn", lambda: (
            select(steps.c.body).where(steps.c.turn_id == bindparam("row_id")).order_by(steps.c.position)))
        store_body = _statement("interrupted_body", lambda: (
            update(turns).where(turns.c.id == bindparam("row_id")).values(body=bindparam("new_body"))))

        def work(conn) -> int:
            interrupted = 0
            for turn_id in conn.execute(expired).scalars().all():
                if turn_id in live_here:
                    continue
                key = {"row_id": turn_id}
                if conn.execute(claim, key).rowcount == 0:
                    continue  # another replica's recovery, or the run's own end, came first
                row = conn.execute(read, key).one()
                turn = types.Turn.FromString(row.body)
                step_bodies = conn.execute(read_steps, key).scalars()
                turn.steps.extend(types.AgentStep.FromString(body) for body in step_bodies)
                append_next(conn, row.owner, turn_id, partial(interrupt, turn))
                conn.execute(store_body, {**key, "new_body": body_of(_without_steps(turn))})
                interrupted += 1
            return interrupted
        return await self.db.write(work, bulk=True)

    async def turn_exists(self, owner: str, session_id: str, turn_id: str) -> bool:
        return await self.repo.exists(schema.turns, owner, turn_id, session_id=session_id)


_STATEMENTS: dict[str, object] = {}


def _turns_after_statement():
    sessions, turns = schema.sessions, schema.turns
    position = tuple_(turns.c.created_at, turns.c.id)
    last_known = tuple_(bindparam("created_at"), bindparam("turn_id"))
    # The count reads only the (session_id, created_at, id) index: a session's turns are its
    # owner's (the outer query checks the session's), so testing each turn's owner would
    # fetch every earlier turn's row, a cost that grew with the session (~0.25 ms a start at
    # 3,000 turns).
    return (select(turns.c.id, turns.c.status, turns.c.created_at,
                   select(func.count()).select_from(turns)
                   .where(turns.c.session_id == bindparam("session_id"),
                          position <= last_known).scalar_subquery().label("known"))
            .select_from(sessions.outerjoin(turns, and_(turns.c.session_id == sessions.c.id,
                                                        turns.c.owner == sessions.c.owner,
                                                        position > last_known)))
            .where(sessions.c.owner == bindparam("owner"), sessions.c.id == bindparam("session_id"),
                   sessions.c.agent_id == bindparam("agent_id"))
            .order_by(turns.c.created_at, turns.c.id))


def _statement(name: str, build):
    """A statement built once (with bound parameters): building a select costs more than
    running it on SQLite."""
    statement = _STATEMENTS.get(name)
    if statement is None:
        statement = _STATEMENTS[name] = build()
    return statement


def _without_steps(turn: types.Turn) -> types.Turn:
    stored = types.Turn()
    stored.CopyFrom(turn)
    stored.ClearField("steps")
    return stored
