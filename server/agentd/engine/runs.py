"""Runs: the machinery a turn and a response share, written once (DESIGN.md section 4).

A run is one asyncio task, the *producer* (later the turn loop or the response loop), that
produces the run's events: TurnEvent or ResponseStreamEvent messages, whose top-level
`sequence_number` this module assigns. Everything else a stream needs is here, with no grpc
and no caller context (a background or resumed run has no caller):

Numbering. `Run.emit` gives each event the next dense number, from `first_sequence` (0 for a
new run; a resumed turn continues its sequence). Heartbeats are never emitted: each consumer
makes its own, carrying the number of the last event it got (-1 before any), never kept.

Flush policy. Emitted events wait in the run's in-memory buffer; `Run.flush` keeps the whole
buffer with ONE `EventStore.append` (one multi-row INSERT). The producer flushes at its
step/item boundaries; the terminal event is kept before any consumer sees it, in one
commit with the producer's own last write when it gives one (`emit(event, also=...)`, e.g.
the turn's final status); as a safety net `emit` also flushes when the buffer holds
`flush_every` events or its oldest event is `flush_after_s` old, so a long
silent-to-the-store step never holds unbounded memory nor hides from other replicas for
long. Events leave the buffer only after their batch is committed, and a write
finishes even if the producer is cancelled during it (so the buffer never lies about what
is kept, and a retry never writes a number twice).

Fan-out and re-attach without gaps or repeats. Every consumer (the owner stream or an
attached follower) of a run live in this process:
  1. registers a listener first (from then on every emitted event is pushed to it),
  2. reads what it missed: kept events after `starting_after` from the store, page by page,
     until the run's unflushed buffer starts at or before the next number it needs; then the
     rest from the buffer,
  3. then drains its listener queue, skipping numbers it already sent.
Step 1 before step 2 is what closes the gap: an event emitted during the reads is in the
queue. Step 2 cannot miss a batch flushed while it reads, because a batch leaves the buffer
only once committed (it is then in the store for the next page).
A consumer's queue is bounded (`queue_limit`): when a slow consumer lets it overflow, the
queue is dropped (memory freed; the run is never blocked) and that consumer goes back to
step 2 from where it was. A stream ends after the terminal event, or when the run ended
without one (the producer failed and its `on_stop` wrote nothing): consumers never hang.

Other replicas. A run is owned by the process that runs it. `Runs.attach` for a run not
live here (finished, or running on another replica) reads the store; while no terminal
event is kept it polls every `poll_s` (later: PostgreSQL LISTEN/NOTIFY), with heartbeats,
until the terminal event, or until the caller's `still_running()` says the run is over (the
engine checks the run's status row), or until the run starts here (a resume), which it then
follows live. A stream ends at the first terminal event after `starting_after`; a turn
resumed since continues in the store after its `turn_awaiting_input` and is read by
attaching again after that number. A follower past the run's kept end (it saw events live
that a replica died before keeping; recovery numbered the end after the kept ones) gets
that end anyway, as kept, when the run is over: every stream ends with the run's end.

Cancel semantics. `Runs.cancel` (CancelTurn / CancelResponse), or the owner stream (`Run.
events()`) closed before the terminal event unless the run is `background`, cancels the
task. Other followers detaching never cancel. The producer sees CancelledError; it may catch
it and emit its own terminal event, or let it go: then the machinery calls the run's
`on_stop(run, reason, error)` with reason "cancelled", "interrupted" (drained at shutdown)
or "failed" (the producer raised `error`, or returned without a terminal event), and
`on_stop` marks the turn/response and emits the terminal event (turn_failed with
TURN_CANCELLED / TURN_INTERRUPTED, response.failed, ...). Whatever `on_stop` does, the
buffer is flushed and the run ends.

Drain. `Runs.drain(grace_s)` on SIGTERM: no new runs; running ones get `grace_s` to finish;
the rest are stopped with reason "interrupted". A call that would start a run writes its
row (the turn, the response) inside `Runs.admission()`: once the drain began, admission
fails with UNAVAILABLE (SHUTTING_DOWN) before anything is written, and the drain lets the
calls admitted before it store and start their runs (which it then drains like the
others), so none is left half-written. An owner stream cut by the server's own
shutdown also counts as "interrupted", not "cancelled": the client did not leave.

Unary RPCs consume the same stream: `await run_to_end(run.events(), kind)` returns the
terminal event (the unary call going away cancels the run like a dropped stream).

Consumers share the emitted message objects: they must not modify them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf.message import Message

from agentd.errors import Unavailable, log_failure
from agentd.storage.events import EventStore
from agentd.v1 import response_events_pb2, turn_events_pb2

log = logging.getLogger("agentd.runs")

StopReason = Literal["cancelled", "interrupted", "failed"]
Producer = Callable[["Run"], Awaitable[None]]
OnStop = Callable[["Run", StopReason, "BaseException | None"], Awaitable[None]]


@dataclass(frozen=True)
class RunKind:
    """What differs between turns and responses: the event message and its special members."""

    name: str
    event_type: type[Message]
    heartbeat: Callable[[str, int], Message]  # (run_id, last sequence number) -> a heartbeat
    is_terminal: Callable[[Message], bool]
    is_heartbeat: Callable[[Message], bool]


# A run's end the database refused is retried after this long, doubling up to the max.
KEEP_RETRY_FIRST_S = 0.5
KEEP_RETRY_MAX_S = 5.0

_TURN_TERMINAL = frozenset({"turn_complete", "turn_awaiting_input", "turn_failed"})
_RESPONSE_TERMINAL = frozenset({"completed", "failed", "incomplete", "error"})

TURNS = RunKind(
    "turn", turn_events_pb2.TurnEvent,
    heartbeat=lambda run_id, seq: turn_events_pb2.TurnEvent(
        payload=turn_events_pb2.TurnEventPayload(heartbeat=turn_events_pb2.HeartbeatPayload()),
        sequence_number=seq, turn_id=run_id),
    is_terminal=lambda event: event.payload.WhichOneof("payload") in _TURN_TERMINAL,
    is_heartbeat=lambda event: event.payload.HasField("heartbeat"))

RESPONSES = RunKind(
    "response", response_events_pb2.ResponseStreamEvent,
    heartbeat=lambda run_id, seq: response_events_pb2.ResponseStreamEvent(
        sequence_number=seq, heartbeat=response_events_pb2.ResponseHeartbeatEvent()),
    is_terminal=lambda event: event.WhichOneof("event") in _RESPONSE_TERMINAL,
    is_heartbeat=lambda event: event.HasField("heartbeat"))


class _Flag:
    """asyncio.Event's set/clear/wait, with its list of waiters made only when a task waits:
    every live run holds one and every consumer another, and an idle stream should cost
    little (asyncio.Event makes a deque, ~600 bytes, at once)."""

    __slots__ = ("_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        self._waiters: list[asyncio.Future] | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        self._is_set = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    async def wait(self) -> None:
        if self._is_set:
            return
        if self._waiters is None:
            self._waiters = []
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)


class _Listener:
    """One consumer's bounded queue of live events. On overflow it drops everything and stops
    taking events until its consumer has caught up from the store: the run never waits.
    A list its consumer takes whole (`take`), not a deque: an empty deque costs ~600 bytes
    per idle stream, an empty list ~60."""

    __slots__ = ("items", "limit", "overflowed", "wake")

    def __init__(self, limit: int):
        self.items: list[Message] = []
        self.limit = limit
        self.overflowed = False
        self.wake = _Flag()

    def push(self, event: Message) -> None:
        if self.overflowed:
            return
        if len(self.items) >= self.limit:
            self.items.clear()
            self.overflowed = True
        else:
            self.items.append(event)
        self.wake.set()

    def take(self) -> list[Message]:
        """The queued events, in order; the queue is then empty."""
        items, self.items = self.items, []
        return items


class Run:
    """One live run in this process: its task, its numbering, its unflushed buffer."""

    def __init__(self, runs: Runs, owner: str, run_id: str, kind: RunKind, *, background: bool,
                 first_sequence: int, on_stop: OnStop | None):
        self.runs = runs
        self.owner = owner
        self.run_id = run_id
        self.kind = kind
        self.background = background
        self.on_stop = on_stop
        self.first_sequence = first_sequence
        self.next_sequence = first_sequence
        self.terminal: Message | None = None  # the terminal event, once emitted
        self.stop_reason: StopReason | None = None  # why the machinery stopped it, if it did
        self.error: BaseException | None = None  # what the producer raised, if it did
        self.ended = _Flag()  # the task is over and its events are flushed (or lost)
        self.task: asyncio.Task | None = None
        self.began = False  # the task took its first step (a cancel before that skips its body)
        self._buffer: list[Message] = []
        self._buffer_since = 0.0
        self._writes: list[Callable[[Any], object]] = []  # the producer's, for the next flush
        self._listeners: set[_Listener] = set()
        self._flush_lock = asyncio.Lock()
        self._terminal_kept = False

    @property
    def last_sequence(self) -> int:
        """The number of the last emitted event (first_sequence - 1 before any)."""
        return self.next_sequence - 1

    async def emit(self, event: Message, also: Callable[[Any], object] | None = None) -> None:
        """Numbers the event, fans it out to every consumer and buffers it for the store.
        Flushes if it is terminal (or the buffer is full or old: see the module docstring).
        `also` (terminal events only): the producer's own write that goes with the terminal
        event (e.g. the turn's final status), committed in the same transaction. If that
        transaction fails, the event was not emitted: the producer gets the error and its
        run can still end with another terminal event (on_stop)."""
        if also is not None and not self.kind.is_terminal(event):
            raise ValueError("only a terminal event carries the producer's own write")
        if self.terminal is not None:
            raise RuntimeError(f"{self.kind.name} {self.run_id} already emitted its terminal event")
        if self.kind.is_heartbeat(event):
            raise ValueError("heartbeats are made per consumer, never emitted")
        event.sequence_number = self.next_sequence
        self.next_sequence += 1
        loop = asyncio.get_running_loop()
        if not self._buffer:
            self._buffer_since = loop.time()
        self._buffer.append(event)
        if self.kind.is_terminal(event):
            # Kept before anyone sees it: a stream that ended can always be replayed to its end.
            # (If the write fails, consumers still get it from the buffer when the run ends.)
            self.terminal = event
            try:
                await self.flush(also)
            except BaseException:
                # Still buffered: its transaction failed (a cancel during a write that went
                # through raises too, with the event kept). With the producer's own write,
                # such an event was not emitted at all: it was neither kept nor seen.
                if also is not None and self._buffer and self._buffer[-1] is event:
                    self._buffer.pop()
                    self.terminal = None
                    self.next_sequence -= 1
                raise
            self._terminal_kept = True
        for listener in self._listeners:
            listener.push(event)
        if (len(self._buffer) >= self.runs.flush_every
                or (self._buffer and loop.time() - self._buffer_since >= self.runs.flush_after_s)):
            await self.flush()

    async def let_consumers_send(self) -> None:
        """One turn of the event loop, when someone follows the run, so that its consumers
        send what was emitted before the producer starts work that runs long without
        awaiting: building a model request costs the SDK a millisecond or more, which
        response.created and turn_start would otherwise wait behind."""
        if self._listeners:
            await asyncio.sleep(0)

    def write_with_next_flush(self, work: Callable[[Any], object]) -> None:
        """A write of the producer's (e.g. the step that just completed) that the next flush,
        whichever it is (the producer's, the terminal event's, on_stop's), commits with the
        events: one commit fewer when that flush comes at once. Like the buffer, it stays
        for the flush after if its flush fails."""
        self._writes.append(work)

    async def flush(self, also: Callable[[Any], object] | None = None) -> None:
        """Keeps every buffered event with one EventStore.append. A failed write leaves them
        buffered (the next flush retries) and raises to the producer. `also`: more of the
        producer's writes, done in the same transaction (EventStore.append), after those
        given to write_with_next_flush."""
        async with self._flush_lock:
            batch = list(self._buffer)
            writes = [*self._writes, also] if also is not None else list(self._writes)
            if not batch and not writes:
                return
            rows = [(event.sequence_number, event.SerializeToString()) for event in batch]
            pending = len(self._writes)
            work = None if not writes else writes[0] if len(writes) == 1 else _in_order(writes)
            write = asyncio.ensure_future(self.runs.store.append(self.owner, self.run_id, rows, work))
            try:
                await asyncio.shield(write)
            finally:
                # Cancelled mid-write: let the write finish, so the buffer tells the truth.
                if not write.done():
                    await asyncio.wait([write])
                if not write.cancelled() and write.exception() is None:
                    del self._buffer[:len(batch)]
                    del self._writes[:pending]
                    self.runs.appends += 1
                    if self._buffer:
                        self._buffer_since = asyncio.get_running_loop().time()

    def events(self, starting_after: int | None = None) -> AsyncIterator[Message]:
        """The owner stream (the call that started the run): its events from first_sequence
        (a resume stream starts at the resume), or after `starting_after`. Closing it before
        the terminal event cancels the run unless it is background. Iterate it under
        contextlib.aclosing so a dropped call closes it at once, not at garbage collection."""
        after = self.first_sequence - 1 if starting_after is None else starting_after
        return self.runs._stream(self.owner, self.run_id, self.kind, after, None, owned=self)

    async def wait(self) -> Message | None:
        """Waits for the run's end; its terminal event, if it emitted one."""
        await self.ended.wait()
        return self.terminal


class Runs:
    """The process-wide registry of live runs (one per Agentd), and the way to follow any run."""

    def __init__(self, store: EventStore, *, heartbeat_s: float = 15.0, flush_every: int = 256,
                 flush_after_s: float = 1.0, queue_limit: int = 1024, poll_s: float = 0.25,
                 page_size: int = 500, stop_timeout_s: float = 10.0):
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.flush_every = flush_every
        self.flush_after_s = flush_after_s
        self.queue_limit = queue_limit
        self.poll_s = poll_s
        self.page_size = page_size
        self.stop_timeout_s = stop_timeout_s
        self.appends = 0  # batches written (a metric; tests count them)
        self._live: dict[tuple[str, str], Run] = {}
        self._accepting = True  # new calls may start runs (false once a drain began)
        self._draining = False  # no run starts at all (the admitted calls have started theirs)
        self._admitted = 0  # calls inside admission() now
        self._none_admitted = asyncio.Event()
        self._none_admitted.set()
        # Retries of ends the database refused (_keep), each with its run: this process still
        # vouches for those (live_ids, keeping()) until their end is kept.
        self._keeping: dict[asyncio.Task, Run] = {}

    # ------------------------------------------------------------------ running

    @property
    def accepting(self) -> bool:
        """False once a drain began: calls that would start a run are refused."""
        return self._accepting

    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        """Around a call's first write up to its `start`: UNAVAILABLE (SHUTTING_DOWN) if a
        drain began, before anything is written; else the drain waits for the call to have
        started its run (see the module docstring)."""
        if not self._accepting:
            raise shutting_down()
        self._admitted += 1
        self._none_admitted.clear()
        try:
            yield
        finally:
            self._admitted -= 1
            if not self._admitted:
                self._none_admitted.set()

    def start(self, owner: str, run_id: str, producer: Producer, *, kind: RunKind,
              background: bool = False, first_sequence: int = 0,
              on_stop: OnStop | None = None) -> Run:
        """Starts `producer(run)` as the run's task. The caller then iterates `run.events()`
        (the owner stream) unless the run is background and nobody waits."""
        key = (owner, run_id)
        if self._draining:
            raise shutting_down()
        if key in self._live and self._live[key].terminal is None:
            # (One that emitted its terminal event is over for everyone: a resume may follow
            # before its task has returned.)
            raise RuntimeError(f"{kind.name} {run_id} is already running")
        run = Run(self, owner, run_id, kind, background=background, first_sequence=first_sequence,
                  on_stop=on_stop)
        self._live[key] = run
        run.task = asyncio.get_running_loop().create_task(self._main(run, producer),
                                                          name=f"run {run_id}")
        return run

    def running(self, kind: RunKind) -> list[Run]:
        """This process's runs of `kind` that run on: not ended, not being stopped."""
        return [run for run in self._live.values()
                if run.kind is kind and run.terminal is None and run.stop_reason is None]

    def live_ids(self, kind: RunKind) -> frozenset[str]:
        """The ids of this process's runs of `kind` not yet over (being stopped included, and
        those whose end is yet to be kept): recovery leaves them alone whatever their lease
        says (a database stall may outlast a lease that this process would have renewed)."""
        return frozenset(run.run_id for run in (*self._live.values(), *self._keeping.values())
                         if run.kind is kind)

    def keeping(self, kind: RunKind) -> list[Run]:
        """This process's ended runs of `kind` whose end the database refused and is retried
        (_keep): their leases are renewed as those of running runs are."""
        return [run for run in self._keeping.values() if run.kind is kind]

    def get(self, owner: str, run_id: str) -> Run | None:
        """The run if it is live in this process."""
        return self._live.get((owner, run_id))

    async def _main(self, run: Run, producer: Producer) -> None:
        run.began = True
        try:
            if run.stop_reason is not None:  # stopped before its first step: nothing ran
                await self._stopped(run, run.stop_reason, None)
                return
            await producer(run)
            if run.terminal is None:
                await self._stopped(run, "failed", RuntimeError("the producer ended with no terminal event"))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._stopped(run, run.stop_reason or "cancelled", None)
        except Exception as error:  # noqa: BLE001 - a failed producer ends its run, never the process
            # A model that went away is routine (one line); a bug gets its traceback.
            log_failure(log, error, "%s %s failed", run.kind.name, run.run_id)
            run.error = error
            await self._stopped(run, "failed", error)
        finally:
            try:
                await run.flush()
            except Unavailable as error:  # the database is away for now: keep its end later
                log_failure(log, error, "%s %s: its end will be kept when the database answers",
                            run.kind.name, run.run_id)
                self._keep_later(run)
            except Exception as error:  # noqa: BLE001 - the run ends anyway; consumers had the events
                log_failure(log, error, "%s %s: its last events could not be kept", run.kind.name, run.run_id)
            finally:
                if self._live.get((run.owner, run.run_id)) is run:
                    del self._live[(run.owner, run.run_id)]
                run.ended.set()
                for listener in run._listeners:
                    listener.wake.set()

    async def _stopped(self, run: Run, reason: StopReason, error: BaseException | None) -> None:
        """The producer stopped without its terminal event: on_stop may write one."""
        if run.stop_reason is None:
            run.stop_reason = reason
        if run.terminal is not None or run.on_stop is None:
            return
        try:
            await run.on_stop(run, reason, error)
        except Exception as error:  # noqa: BLE001 - the run ends anyway; consumers must not hang
            log_failure(log, error, "%s %s: on_stop failed", run.kind.name, run.run_id)

    def _keep_later(self, run: Run) -> None:
        """A run that ended while the database was away: its unkept events and writes (its
        on_stop's status among them) are retried in the background, so its row is not left
        in_progress (its session busy) until its lease runs out. Live consumers had its end.
        Not once a drain began: the database closes next, and the lease ends the run."""
        if self._draining:
            return
        task = asyncio.get_running_loop().create_task(self._keep(run), name=f"keep {run.run_id}")
        self._keeping[task] = run
        task.add_done_callback(self._keeping.pop)

    async def _keep(self, run: Run) -> None:
        delay = KEEP_RETRY_FIRST_S
        while True:
            await asyncio.sleep(delay)
            try:
                if await self._kept_elsewhere(run):
                    log.info("%s %s: another replica ended it meanwhile; its end there stands",
                             run.kind.name, run.run_id)
                    return
                await run.flush()
            except Unavailable:
                delay = min(delay * 2, KEEP_RETRY_MAX_S)
                continue
            except Exception as error:  # noqa: BLE001 - e.g. deleted meanwhile
                log_failure(log, error, "%s %s: its end could not be kept", run.kind.name, run.run_id)
                return
            log.info("%s %s: its end is kept", run.kind.name, run.run_id)
            return

    async def _kept_elsewhere(self, run: Run) -> bool:
        """Whether events numbered as the run's unkept ones were kept meanwhile by someone
        else: another replica's recovery, once the run's lease ran out, keeps a terminal
        event numbered after the last one kept here."""
        return bool(run._buffer) and (
            await self.store.last_sequence(run.owner, run.run_id) >= run._buffer[0].sequence_number)

    def _request_stop(self, run: Run, reason: StopReason) -> None:
        # Once only: a run with a stop_reason is already stopping (or failed), and a second
        # cancel would interrupt its on_stop mid-write, leaving its end unstored.
        if run.task is None or run.task.done() or run.ended.is_set() or run.stop_reason is not None:
            return
        run.stop_reason = reason
        if run.began:  # else _main sees stop_reason (a task cancelled unstarted never runs _main)
            run.task.cancel()

    async def cancel(self, owner: str, run_id: str, reason: StopReason = "cancelled") -> Run | None:
        """Cancels the run if it is live here and waits for its end (its terminal event is
        then kept: `run.terminal`); `reason` is what on_stop gets. None if no such run runs
        here."""
        run = self._live.get((owner, run_id))
        if run is None:
            return None
        self._request_stop(run, reason)
        await run.ended.wait()
        return run

    async def drain(self, grace_s: float) -> None:
        """At shutdown: no new runs; running ones get grace_s to finish, the rest are stopped
        as interrupted (their on_stop writes the terminal event) before the database closes.
        The calls admitted before it first store and start their runs: a few writes, waited
        for up to stop_timeout_s even with no grace."""
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.stop_timeout_s):
                await self._none_admitted.wait()
        self._draining = True
        for keeping in self._keeping:  # the database still away: their leases end them
            keeping.cancel()
        if self._keeping:  # a write of theirs under way ends before the database closes
            await asyncio.wait(list(self._keeping), timeout=self.stop_timeout_s)
        runs = list(self._live.values())
        tasks = {run.task for run in runs if run.task is not None}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s) if grace_s > 0 else (set(), tasks)
        for run in runs:
            if run.task in pending:
                log.warning("%s %s interrupted by shutdown", run.kind.name, run.run_id)
                self._request_stop(run, "interrupted")
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=self.stop_timeout_s)
            for task in stuck:  # its on_stop hangs: give up on it
                log.error("%s did not stop within %.0f s", task.get_name(), self.stop_timeout_s)
                task.cancel()

    # ------------------------------------------------------------------ following

    def attach(self, owner: str, run_id: str, *, kind: RunKind, starting_after: int | None = None,
               still_running: Callable[[], Awaitable[bool]] | None = None,
               ends_on_drain: bool = True) -> AsyncIterator[Message]:
        """Follows a run from after `starting_after` (None: from its first event) to its
        terminal event, live if it runs here, else from the store (see the module
        docstring). Detaching never cancels the run. The caller checks that the run exists
        and belongs to `owner`; `still_running` (e.g. "its status is in_progress") lets a
        stream of a run that ended without a kept terminal event end instead of polling.
        `ends_on_drain`: once this replica drains, a stream waiting for another replica's run
        ends UNAVAILABLE SHUTTING_DOWN (its client re-attaches elsewhere); off for agentd's own
        waits (a cancel waiting for that replica's end)."""
        return self._stream(owner, run_id, kind, starting_after, still_running, owned=None,
                            ends_on_drain=ends_on_drain)

    async def _stream(self, owner: str, run_id: str, kind: RunKind, starting_after: int | None,
                      still_running: Callable[[], Awaitable[bool]] | None,
                      owned: Run | None, ends_on_drain: bool = True) -> AsyncIterator[Message]:
        loop = asyncio.get_running_loop()
        last = -1 if starting_after is None else starting_after
        quiet_since = loop.time()
        finished = False
        try:
            run = owned or self._live.get((owner, run_id))
            if run is not None:
                listener = _Listener(self.queue_limit)
                run._listeners.add(listener)  # 1. listen first
                try:
                    catch_up = True
                    while True:
                        if catch_up:  # 2. what was emitted before: the store, then the buffer
                            catch_up = listener.overflowed = False
                            while events := await self._missing(run, last):
                                for event in events:
                                    yield event
                                    last, quiet_since = event.sequence_number, loop.time()
                                    if kind.is_terminal(event):
                                        finished = True
                                        return
                            if run.ended.is_set() and not listener.items:
                                return
                        elif listener.items:  # 3. live
                            for event in listener.take():
                                if event.sequence_number <= last:
                                    continue
                                yield event
                                last, quiet_since = event.sequence_number, loop.time()
                                if kind.is_terminal(event):
                                    finished = True
                                    return
                        elif listener.overflowed or run.ended.is_set():
                            catch_up = True  # fell behind, or the run ended: the rest is kept
                        else:
                            listener.wake.clear()
                            # A timeout scope, not wait_for: wait_for wraps the wait in a task
                            # of its own, one per event a consumer waits for (a task and its
                            # frame per idle stream, and its scheduling on every event).
                            try:
                                async with asyncio.timeout_at(quiet_since + self.heartbeat_s):
                                    await listener.wake.wait()
                            except TimeoutError:
                                yield kind.heartbeat(run_id, last)
                                quiet_since = loop.time()
                finally:
                    run._listeners.discard(listener)
            # Not live here: follow the store until the terminal event.
            over = False
            while True:
                if (run := self._live.get((owner, run_id))) is not None:  # (re)started here
                    live = self._stream(owner, run_id, kind, last, still_running, None, ends_on_drain)
                    async with contextlib.aclosing(live):
                        async for event in live:
                            yield event
                    finished = True
                    return
                rows = await self.store.read_after(owner, run_id, last, self.page_size)
                for sequence_number, body in rows:
                    event = kind.event_type.FromString(body)
                    yield event
                    last, quiet_since = sequence_number, loop.time()
                    if kind.is_terminal(event):
                        finished = True
                        return
                if rows:
                    continue
                if over:
                    if (end := await self._end_before(owner, run_id, kind, last)) is not None:
                        finished = True
                        yield end
                    return
                if still_running is not None and not await still_running():
                    over = True  # one more read: its last batch may have landed just now
                    continue
                if self._draining and ends_on_drain:  # caught up, and it goes on elsewhere:
                    raise Unavailable("agentd is shutting down; re-attach on another replica after "
                                      "the last event received.", reason="SHUTTING_DOWN")
                await asyncio.sleep(max(0.0, min(self.poll_s, quiet_since + self.heartbeat_s - loop.time())))
                if loop.time() - quiet_since >= self.heartbeat_s:
                    yield kind.heartbeat(run_id, last)
                    quiet_since = loop.time()
        finally:
            if owned is not None and not finished and not owned.background:
                # The owner stream went away before the end: the run goes with it.
                self._request_stop(owned, "interrupted" if self._draining else "cancelled")

    async def _end_before(self, owner: str, run_id: str, kind: RunKind, last: int) -> Message | None:
        """The kept terminal event of a run that is over, if it is numbered before `last`:
        the follower saw events live that its dead replica never kept (recovery numbered the
        end after the kept ones), and its stream must still end with the run's end. (Numbered
        `last` itself, the follower has seen it: nothing more.)"""
        found = await self.store.last_event(owner, run_id)
        if found is None or found[0] >= last:
            return None
        event = kind.event_type.FromString(found[1])
        return event if kind.is_terminal(event) else None

    async def _missing(self, run: Run, last: int) -> list[Message]:
        """The next events after `last` that a consumer of a live run may have missed: a page
        from the store, else the buffer's tail; [] once it is up to date."""
        buffer = run._buffer
        # The terminal event shows once kept (or once the run is over if it never was).
        hold = run.terminal if not (run._terminal_kept or run.ended.is_set()) else None
        if buffer and buffer[0].sequence_number <= last + 1:
            return [event for event in buffer if event.sequence_number > last and event is not hold]
        if last >= run.last_sequence:
            return []
        rows = await self.store.read_after(run.owner, run.run_id, last, self.page_size)
        if not rows:  # the kept events went with the run's rows (a delete): what is left here,
            # the end at least (kept or not), so the stream does not just stop
            left = [event for event in buffer if event.sequence_number > last and event is not hold]
            end = run.terminal
            if not left and end is not None and end is not hold and end.sequence_number > last:
                left = [end]
            return left
        return [run.kind.event_type.FromString(body) for _, body in rows]


def shutting_down() -> Unavailable:
    return Unavailable("agentd is shutting down and starts no new run; retry on another replica.",
                       reason="SHUTTING_DOWN")


def _in_order(writes: list[Callable[[Any], object]]) -> Callable[[Any], None]:
    def work(conn: Any) -> None:
        for write in writes:
            write(conn)
    return work


async def run_to_end(events: AsyncIterator[Message], kind: RunKind) -> Message | None:
    """Drains a run's stream: what the unary RPCs do, so both forms never disagree. Returns
    the terminal event, or None if the run ended without one."""
    last = None
    async with contextlib.aclosing(events):
        async for event in events:
            if not kind.is_heartbeat(event):
                last = event
    return last if last is not None and kind.is_terminal(last) else None
