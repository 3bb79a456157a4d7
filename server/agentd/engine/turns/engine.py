"""The turn engine: a turn is a run (engine/runs.py, kind TURNS) whose producer is the loop
below. No grpc here: the owner is passed explicitly, errors are agentd errors.

One run of a turn (a create, or a resume after a pause on client tools):

    turn_start (create only; sequence 0)       | tool_execution step of the client results (resume)
    input shields (if the agent names any): one shield_call step over the whole conversation
    loop:
        inference step: step_start, step_progress (text; tool_call "name(" with the
                        arguments that came with it, fragments, ")",
                        then the parsed call: succeeded, or failed for arguments that are not
                        a JSON object), step_complete
        tool calls and max_infer_iters reached (counted across resumes: the turn's stored
            inference steps) -> turn_complete, stop_reason max_infer_iters, calls NOT run
        server tool calls -> one tool_execution step each (step_start, step_progress with the
            call, step_complete), then, if the message also called client tools, the pause:
            turn_awaiting_input with output_message = those calls (all of them, batched);
            else the next inference
        no tool calls -> turn_complete (stop_reason end_of_turn, or out_of_tokens)
    output shields (if any): one shield_call step before the turn completes or pauses
A blocking shield violation ends the turn at its step: turn_complete with the violation's
message as output_message (stop_reason shield_violation), as Llama Stack does. Server tool
calls end by `tool_timeout_s` (or the caller's deadline): a late one is a failed result.

Replicas: a running turn carries the lease of the replica that runs it, renewed while the
run lives; recovery (at start and on each renewal tick) interrupts only turns whose lease
expired, and keeps the turn_failed their run never kept (see recover). A session has one
open turn at most (the database holds it), and a turn another replica cancelled or
interrupted is stopped here at the next renewal.

Persistence as it runs: the turn row (in_progress) exists before turn_start; each step is
appended when it completes and the run's events are flushed at every step boundary, except
that a step the turn ends right after goes into the turn's last commit; the status,
output_message and completed_at are written in the commit that keeps the terminal event.
A run that stops without its terminal event (cancelled, interrupted at shutdown, failed:
the model went away, a database write failed) is finished by `on_stop`: the turn is stored
cancelled / interrupted / failed with its completed steps and `error`, and turn_failed ends
the stream.

History for the model: the instructions (the turn's override, else the agent's) as the
system message, then every earlier turn of the session rebuilt from its stored steps
(history.py), then this turn's messages (on resume: rebuilt from its steps as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from agentd import codec, ids
from agentd.clock import now_micros, timestamp
from agentd.config import DocumentsConfig, Settings
from agentd.engine.agent_config import check_toolgroup_names
from agentd.engine.completion import Completion, arguments_object
from agentd.engine.images import check_agent_image
from agentd.engine.leases import DEFAULT_LEASE_S, Leases
from agentd.engine.lru import LRU
from agentd.engine.runs import TURNS, Run, Runs, StopReason
from agentd.engine.shields import DeclaredShields, Shields, require_declared
from agentd.engine.turns.documents import with_documents
from agentd.engine.turns.history import (
    assistant_message,
    content_items,
    input_message,
    paired,
    refusal_text,
    turn_messages,
    weight,
)
from agentd.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    log_failure,
    status_of,
)
from agentd.inference import (
    ChatMessage,
    ChatRequest,
    InferenceProvider,
    ModelRegistry,
    Sampling,
    ToolSpec,
    response_format_from,
    sampling_from,
)
from agentd.sensitive import redact
from agentd.storage.agents import (
    AWAITING_INPUT,
    IN_PROGRESS,
    NO_TURNS,
    OPEN_STATUSES,
    AgentStore,
    KnownTurns,
    OpenTurnExists,
    TurnRow,
)
from agentd.tools.base import ResolvedTool, ToolResult, ToolRuntime
from agentd.v1 import agent_messages_pb2 as msg
from agentd.v1 import agent_resources_pb2 as types
from agentd.v1 import agents_pb2, common_pb2, safety_pb2
from agentd.v1 import turn_events_pb2 as te

T = TypeVar("T")
log = logging.getLogger("agentd.turns")

DEFAULT_MAX_INFER_ITERS = 10
DEFAULT_TOOL_TIMEOUT_S = Settings.model_fields["tool_timeout_s"].default
# Sessions whose ended turns' history messages are kept in memory (least recently used out),
# and how many messages they may keep in all (a few long sessions would otherwise hold memory
# without bound: ~0.65 KB a message of a few words).
HISTORY_CACHE_SESSIONS = 1024
HISTORY_CACHE_MESSAGES = 100_000
# Agents kept in memory by (owner, agent id): an agent never changes once created.
AGENT_CACHE_SIZE = 1024
INFERENCE = types.AGENT_STEP_TYPE_INFERENCE
TOOL_EXECUTION = types.AGENT_STEP_TYPE_TOOL_EXECUTION
SHIELD_CALL = types.AGENT_STEP_TYPE_SHIELD_CALL
USER_INPUT = types.SHIELD_TOUCHPOINT_USER_INPUT
ASSISTANT_OUTPUT = types.SHIELD_TOUCHPOINT_ASSISTANT_OUTPUT
# A shield step's step_start metadata names its touchpoint as Llama Stack does.
TOUCHPOINT_NAMES = {USER_INPUT: "user-input", ASSISTANT_OUTPUT: "assistant-output"}
VIOLATION_LEVELS = {
    "info": safety_pb2.VIOLATION_LEVEL_INFO,
    "warn": safety_pb2.VIOLATION_LEVEL_WARN,
    "error": safety_pb2.VIOLATION_LEVEL_ERROR,
}
IN_PROGRESS_PARSE = te.TOOL_CALL_PARSE_STATUS_IN_PROGRESS
# A model call ends this long before the caller's deadline, so the turn fails with its own
# error (and is stored failed) before the call itself is cut. It covers the HTTP client's
# own cancellation (10-30 ms measured on a 2-core machine), storing the end and sending it:
# 50 ms was too short on a loaded machine, and the call ended DEADLINE_EXCEEDED instead.
DEADLINE_MARGIN_S = 0.15

# Stored status column values, by the proto status.
# A turn's output_message while it runs, or when it ended without an answer (failed,
# cancelled, interrupted): an empty one rather than none, since Llama Stack's Turn requires
# a CompletionMessage and its SDKs fail to parse a turn without one.
NO_ANSWER = msg.CompletionMessage(content=msg.InterleavedContent(text=""),
                                  stop_reason=msg.STOP_REASON_END_OF_TURN)
STATUS_NAMES = {
    types.TURN_STATUS_IN_PROGRESS: IN_PROGRESS,
    types.TURN_STATUS_AWAITING_INPUT: AWAITING_INPUT,
    types.TURN_STATUS_COMPLETED: "completed",
    types.TURN_STATUS_FAILED: "failed",
    types.TURN_STATUS_CANCELLED: "cancelled",
    types.TURN_STATUS_INTERRUPTED: "interrupted",
}


def _cancelled() -> Cancelled:
    """Why a cancelled turn ended (the error of its turn_failed event)."""
    return Cancelled("The turn was cancelled.", reason="TURN_CANCELLED")


def _interrupted() -> Unavailable:
    return Unavailable("The server stopped while the turn ran; start a new turn.", reason="TURN_INTERRUPTED")


def _tool_execution_step(turn_id: str, step_id: str, started: Timestamp,
                         calls: Sequence[msg.AgentToolCall],
                         responses: Sequence[msg.AgentToolResponse]) -> types.AgentStep:
    """A completed tool_execution step: client tools answered on resume, or one server call."""
    return types.AgentStep(tool_execution=types.ToolExecutionStep(
        turn_id=turn_id, step_id=step_id, started_at=started, completed_at=timestamp(),
        tool_calls=calls, tool_responses=responses))


def _event(turn_id: str, **payload: Any) -> te.TurnEvent:
    return te.TurnEvent(turn_id=turn_id, payload=te.TurnEventPayload(**payload))


def _check_inputs(messages: Sequence[msg.TurnInputMessage]) -> None:
    """What the field behaviours cannot say: each message is a user or a tool message, with
    content; a user message's images are ones a model can be sent, a tool message is text.
    Over REST the codec already asks for a role and content (a "role", and content's JSON
    is the member); a gRPC client can send an empty one."""
    for i, message in enumerate(messages):
        kind = message.WhichOneof("message")
        if kind is None:
            raise InvalidArgument(f"messages[{i}].role", "required: a user or a tool message")
        if getattr(message, kind).content.WhichOneof("content") is None:
            raise InvalidArgument(f"messages[{i}].content", "required")
        _check_items(getattr(message, kind).content, f"messages[{i}].content", images=kind == "user")


def _check_items(content: msg.InterleavedContent, where: str, *, images: bool) -> None:
    """Each item with its member set (a gRPC client can send one empty, which no JSON reader
    could take back), and each image item's url or data, checked (images.check_agent_image).
    Where images are not allowed (a tool's response) one is INVALID_ARGUMENT: the
    chat-completions protocol sends tool results as text, and a model would answer as if there
    were no image."""
    single = content.WhichOneof("content") == "item"
    for j, item in enumerate(content_items(content)):
        kind = item.WhichOneof("item")
        if kind is None:
            raise InvalidArgument(where + (".item" if single else f".items[{j}]") + ".type",
                                  "required: the item's type and its fields")
        if kind == "image":
            field = where + (".item" if single else f".items[{j}]")
            if not images:
                raise InvalidArgument(field, "a tool's response is text: models are sent tool results "
                                             "as text, with no images")
            check_agent_image(item.image.image, field + ".image.image")


def _answers_no_call(inputs: Sequence[msg.TurnInputMessage], index: int) -> InvalidArgument:
    return InvalidArgument(
        f"messages[{index}]",
        f"the tool response for call '{inputs[index].tool.call_id}' answers no tool call: a turn's tool "
        "messages may answer only the calls the session's last answer left unexecuted (a turn that "
        "stopped at max_infer_iters); a paused turn's calls are answered by resuming it",
        reason="TOOL_RESPONSES_MISMATCH")


_CHOICE_MODES = frozenset({"auto", "required", "none"})


def _step_start(step_type: int, step_id: str) -> te.StepStartPayload:
    """With its metadata set even when empty: Llama Stack's step_start has "metadata": {}."""
    start = te.StepStartPayload(step_type=step_type, step_id=step_id)
    start.metadata.SetInParent()
    return start


def _turn_failed(turn: types.Turn) -> te.TurnEvent:
    """The terminal event of a turn that ended with an error (cancelled, interrupted, failed)."""
    return _event(turn.turn_id, turn_failed=te.TurnFailedPayload(turn=turn, error=turn.error))


def _busy(session_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"Session '{session_id}' has a turn in progress or awaiting input; resume or cancel it first.",
        reason="SESSION_BUSY",
    )


@dataclass
class Plan:
    """What a run of a turn needs, resolved before it starts (so bad references fail the
    call before any event)."""

    agent: types.Agent
    provider: InferenceProvider
    server_tools: dict[str, ResolvedTool]
    client_tools: set[str]
    specs: tuple[ToolSpec, ...]
    tool_choice: str | None
    instructions: str
    sampling: Sampling
    response_format: dict[str, Any] | None
    max_infer_iters: int
    input_shields: tuple[str, ...] = ()
    output_shields: tuple[str, ...] = ()


@dataclass
class _SessionHistory:
    """What a session's history keeps in memory: the messages of its ended turns, and its
    first turns (`settled`: (id, status), each ended with its messages kept), the last of
    them `known`, and the messages of all of them in order (`settled_messages`: a turn's
    start copies them at once instead of walking a long session's turns one by one)."""

    messages: dict[str, tuple[ChatMessage, ...]] = field(default_factory=dict)
    settled: list[tuple[str, str]] = field(default_factory=list)
    known: KnownTurns = NO_TURNS
    settled_messages: list[ChatMessage] = field(default_factory=list)


@dataclass
class TurnState:
    """One run of a turn: the turn as it grows (with its steps) and the conversation."""

    owner: str
    turn: types.Turn
    plan: Plan
    messages: list[ChatMessage] = field(default_factory=list)
    # The caller's deadline (the event loop's clock); None: no limit (background turns, HTTP).
    deadline: float | None = None

    def timeout_s(self) -> float | None:
        """The time a model call may take: what is left of the caller's deadline."""
        if self.deadline is None:
            return None
        left = self.deadline - asyncio.get_running_loop().time() - DEADLINE_MARGIN_S
        if left <= 0:
            raise DeadlineExceeded("The call's deadline passed before the model was called.",
                                   reason="MODEL_TIMEOUT")
        return left

    def tool_time_limit(self, configured_s: float) -> float:
        """The time a server tool call may take: the configured limit, or what is left of the
        caller's deadline if that is sooner (the next model call then fails with it)."""
        if self.deadline is None:
            return configured_s
        left = self.deadline - asyncio.get_running_loop().time() - DEADLINE_MARGIN_S
        return max(0.0, min(configured_s, left))

    @property
    def inference_count(self) -> int:
        return sum(1 for step in self.turn.steps if step.HasField("inference"))


class TurnEngine:
    def __init__(
        self,
        store: AgentStore,
        runs: Runs,
        registry: ModelRegistry,
        tools: ToolRuntime | None = None,
        shields: Shields | None = None,
        documents: DocumentsConfig | None = None,
        tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        lease_s: float = DEFAULT_LEASE_S,
    ):
        self.store = store
        self.runs = runs
        self.registry = registry
        self.tools = tools
        self.shields = shields or DeclaredShields()
        self.documents = documents or DocumentsConfig()
        self.tool_timeout_s = tool_timeout_s
        self.leases = Leases(runs, TURNS, store, self.recover, lease_s)
        # Sessions whose turn is being started, resumed or cancelled right now in this
        # process, each with the future that completes with it (_start_slot): a second start
        # in the same session meanwhile is SESSION_BUSY at once, unless it carries a
        # request_id (see _first_try); a cancel waits its turn. Across replicas the
        # database's one-open-turn index is what guards (OpenTurnExists).
        self._starting: dict[tuple[str, str], asyncio.Future[None]] = {}
        # (owner, session id) -> what is kept of its history (see _history), the least
        # recently used session first.
        self._histories: LRU[tuple[str, str], _SessionHistory] = LRU(
            HISTORY_CACHE_SESSIONS, HISTORY_CACHE_MESSAGES)
        # (owner, agent id) -> an agent a turn was started with, oldest first. Only a start
        # uses it, and it still checks the session (a deleted agent has none left).
        self._agents: dict[tuple[str, str], types.Agent] = {}

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Recovery at start, then the lease keeper (engine/leases.py) until close()."""
        await self.leases.start()

    async def close(self) -> None:
        await self.leases.close()

    async def recover(self) -> int:
        """Turns left in_progress whose lease expired (the replica that ran them died)
        become interrupted; those live replicas run are left alone. Each ends as a shutdown
        would have ended it (on_stop): its turn_failed (TURN_INTERRUPTED, the turn with its
        kept steps) is kept, numbered after the run's last kept event, in the transaction
        that marks the turn, so a follower's stream ends with it, not by just stopping.
        (Events the dead replica had not kept yet are lost; the numbering goes on from the
        kept ones.)"""
        count = await self.store.interrupt_running_turns(now_micros(), self._interrupted_by_recovery,
                                                         live_here=self.runs.live_ids(TURNS))
        if count:
            log.warning("%d turn(s) left running by a stopped replica marked interrupted", count)
        return count

    def _lease_end(self) -> int:
        return self.leases.until()

    # ------------------------------------------------------------------ lookups

    async def _agent_and_session(self, owner: str, agent_id: str, session_id: str) -> types.Agent:
        agent = await self.store.agent_of_session(owner, agent_id, session_id)
        if agent is not None:
            return agent
        # One of them is missing: which one.
        agent = await self.store.get_agent(owner, agent_id)
        if agent is None:
            raise NotFound("agent", agent_id)
        if await self.store.get_session(owner, agent_id, session_id) is None:
            raise NotFound("session", session_id)
        return agent

    async def _turn(self, owner: str, agent_id: str, session_id: str, turn_id: str) -> types.Turn:
        await self._agent_and_session(owner, agent_id, session_id)
        turn = await self.store.get_turn(owner, session_id, turn_id)
        if turn is None:
            raise NotFound("turn", turn_id)
        return turn

    def _plan(
        self,
        agent: types.Agent,
        *,
        toolgroups: Sequence[types.AgentToolGroup] = (),
        tool_config: types.AgentToolConfig | None = None,
        instructions: str | None = None,
    ) -> Plan:
        cfg = agent.agent_config
        provider = self.registry.provider_for(cfg.model)  # NOT_FOUND (MODEL_NOT_FOUND)
        # Shield ids are checked here, at every turn and resume, not at CreateAgent: as in
        # Llama Stack an agent names shields lazily, so configuration may change between.
        require_declared(self.shields, [*cfg.input_shields, *cfg.output_shields])
        # The turn's groups add to the agent's. A group named again (by the turn, or twice by
        # the agent) is taken once, with the args of its last mention, as Llama Stack does:
        # that is how a turn passes its own args to a group of the agent.
        references: dict[str, dict[str, Any]] = {}
        for group in [*cfg.toolgroups, *toolgroups]:
            if group.HasField("with_args"):
                references[group.with_args.name] = codec.to_json(group.with_args.args)
            else:
                references[group.name] = references.get(group.name, {})
        server_tools: dict[str, ResolvedTool] = {}
        if references:
            if self.tools is None:
                raise NotFound("toolgroup", next(iter(references)).split("/")[0])
            for resolved in self.tools.resolve(list(references.items())):
                server_tools[resolved.tool.name] = resolved
        client_tools = {t.name for t in cfg.client_tools}
        # A name the model could call meaning either: the server tool could never run.
        if clash := sorted(server_tools.keys() & client_tools):
            raise InvalidArgument("toolgroups", f"tool '{clash[0]}' is both a client tool of the agent "
                                                f"and a tool of one of the turn's tool groups")
        specs = [
            ToolSpec(
                name=t.name,
                description=t.description if t.HasField("description") else "",
                parameters=(
                    codec.to_json(t.input_schema)
                    if t.HasField("input_schema")
                    else {"type": "object", "properties": {}}
                ),
            )
            for t in cfg.client_tools
        ]
        specs += [
            ToolSpec(name=r.tool.name, description=r.tool.description, parameters=r.tool.parameters)
            for r in server_tools.values()
        ]
        if tool_config is not None and tool_config.HasField("tool_choice"):
            tool_choice: str | None = tool_config.tool_choice
            choice_field = "tool_config.tool_choice"
        elif cfg.tool_config.HasField("tool_choice"):
            tool_choice = cfg.tool_config.tool_choice
            choice_field = "agent_config.tool_config.tool_choice"
        else:
            tool_choice = None
        if tool_choice and tool_choice not in _CHOICE_MODES and tool_choice not in {s.name for s in specs}:
            # The model would be told to call a tool it is not offered (its server refuses, or
            # worse, it answers a call nothing can run).
            raise InvalidArgument(choice_field, f"'{tool_choice}' is none of the turn's tools; "
                                                "auto, required, none or one of their names")
        return Plan(
            agent=agent,
            provider=provider,
            server_tools=server_tools,
            client_tools=client_tools,
            specs=tuple(specs),
            tool_choice=tool_choice or None,
            instructions=cfg.instructions if instructions is None else instructions,
            sampling=sampling_from(cfg.sampling_params if cfg.HasField("sampling_params") else None),
            response_format=response_format_from(
                cfg.response_format if cfg.HasField("response_format") else None,
                field="agent_config.response_format",
            ),
            max_infer_iters=max(1, cfg.max_infer_iters)  # 0 runs one, as in Llama Stack
            if cfg.HasField("max_infer_iters")
            else DEFAULT_MAX_INFER_ITERS,
            input_shields=tuple(cfg.input_shields),
            output_shields=tuple(cfg.output_shields),
        )

    async def _history(
        self,
        owner: str,
        session_id: str,
        plan: Plan,
        until: str | None = None,
        statuses: list[tuple[str, str]] | None = None,
        bodies: list[types.Turn] | None = None,
        settled: _SessionHistory | None = None,
    ) -> list[ChatMessage]:
        """System message + the session's turns before `until` (all when None), rebuilt.
        `statuses`: the session's (turn id, status) when the caller has read them; `bodies`:
        then also the turns among them not cached, with their steps; `settled`: the history
        whose settled turns begin `statuses` (_settle made them so).

        Ended turns never change, so their messages are cached per session in memory; only
        the turns not cached (new ones, or open ones, which may still grow) are read with
        their steps. The list of turns is read every time, so a turn written by another
        replica, or deleted, is seen."""
        messages = [ChatMessage(role="system", content=plan.instructions)] if plan.instructions else []
        if statuses is None:
            statuses = await self.store.session_turn_statuses(owner, session_id)
        key = (owner, session_id)
        kept = self._histories.get(key)
        if kept is None:
            kept = _SessionHistory()
            self._histories.put(key, kept, 0)
        cached = kept.messages
        if settled is not None and settled is kept and until is None:  # (not dropped meanwhile)
            messages.extend(kept.settled_messages)
            statuses = statuses[len(kept.settled):]
        wanted: list[tuple[str, str]] = []
        for turn_id, status in statuses:
            if turn_id == until:
                break
            wanted.append((turn_id, status))
        fresh = {turn.turn_id: turn_messages(turn) for turn in bodies or ()}
        # (Given bodies lack only turns that were cached when they were read, and whose
        # session's cache was dropped since.)
        missing = [turn_id for turn_id, _ in wanted if turn_id not in cached and turn_id not in fresh]
        if missing:
            for turn in await self.store.session_turns(owner, session_id, missing):
                fresh[turn.turn_id] = turn_messages(turn)
        for turn_id, status in wanted:
            found = cached.get(turn_id)
            if found is None:
                rebuilt = fresh.get(turn_id)
                if rebuilt is None:  # deleted meanwhile
                    continue
                found = tuple(rebuilt)
                if status not in OPEN_STATUSES:
                    cached[turn_id] = found
                    self._histories.grew(key, weight(found))
            messages.extend(found)
        return messages

    def _remember(self, state: TurnState) -> None:
        """A turn that just ended, as stored (its steps too), goes into its session's cached
        history (if that session's is kept), so the next turn reads no turn bodies."""
        key = (state.owner, state.turn.session_id)
        kept = self._histories.get(key)
        if kept is not None:
            before = kept.messages.get(state.turn.turn_id, ())
            kept.messages[state.turn.turn_id] = messages = tuple(turn_messages(state.turn))
            self._histories.grew(key, weight(messages) - weight(before))

    @staticmethod
    def _settle(kept: _SessionHistory | None, rows: list[TurnRow], from_start: bool) -> list[tuple[str, str]]:
        """The (id, status) of the session's turns, oldest first, from its turns read after
        the ones `kept` holds (`rows`, AgentStore.turns_after). Its first turns that ended and
        whose messages are kept (`_SessionHistory.settled`) are not read again: a long
        session costs one short read."""
        if kept is None:
            return [(turn_id, status) for turn_id, status, _ in rows]
        if from_start:  # another replica added a turn among the settled ones
            kept.settled, kept.known, kept.settled_messages = [], NO_TURNS, []
        settling = 0
        for turn_id, status, created_at in rows:
            if status in OPEN_STATUSES or turn_id not in kept.messages:
                break
            kept.settled.append((turn_id, status))
            kept.settled_messages.extend(kept.messages[turn_id])
            kept.known = KnownTurns(kept.known.count + 1, created_at, turn_id)
            settling += 1
        return [*kept.settled, *((turn_id, status) for turn_id, status, _ in rows[settling:])]

    def _still_running(self, owner: str, session_id: str, turn_id: str):
        async def still_running() -> bool:
            return await self.store.turn_status(owner, session_id, turn_id) == IN_PROGRESS

        return still_running

    # ------------------------------------------------------------------ the API

    async def start_turn(
        self,
        owner: str,
        agent_id: str,
        session_id: str,
        *,
        messages: Sequence[msg.TurnInputMessage],
        documents: Sequence[msg.AgentDocument] = (),
        toolgroups: Sequence[types.AgentToolGroup] = (),
        tool_config: types.AgentToolConfig | None = None,
        instructions: str | None = None,
        background: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[te.TurnEvent]:
        """Checks, stores the turn and starts its run; returns the owner stream (iterate it
        under contextlib.aclosing: closing it early cancels the turn unless background).
        A retry with a known request_id replays the first call's turn instead. `timeout_s`:
        the caller's time left; its model calls must end by then (ignored when background)."""
        _check_inputs(messages)
        check_toolgroup_names(toolgroups, "toolgroups")
        deadline = _deadline(timeout_s, background)
        # A known agent is not read again: its session is checked below, in the same read as
        # the session's turns.
        agent = self._agents.get((owner, agent_id)) if request_id is None else None
        if agent is None:
            agent = await self._agent_and_session(owner, agent_id, session_id)
        key = (owner, session_id)

        def first_try() -> Awaitable[str | None]:
            return self.store.turn_by_request_id(owner, session_id, request_id)
        existing = await self._first_try(key, request_id, first_try)
        if existing is not None:
            return self.follow_checked(owner, session_id, existing, None)
        plan = self._plan(agent, toolgroups=toolgroups, tool_config=tool_config, instructions=instructions)
        inputs = await with_documents(messages, documents, self.documents) if documents else list(messages)
        if key in self._starting and request_id is not None:  # begun while the documents were read
            existing = await self._first_try(key, request_id, first_try)
            if existing is not None:
                return self.follow_checked(owner, session_id, existing, None)
        if key in self._starting:
            raise _busy(session_id)
        with self._start_slot(key):
            turn = types.Turn(
                turn_id=ids.new_id(ids.TURN),
                session_id=session_id,
                input_messages=inputs,
                output_message=NO_ANSWER,
                started_at=timestamp(),
                status=types.TURN_STATUS_IN_PROGRESS,
                background=background,
            )
            kept = self._histories.get(key)
            with self.runs.admission():  # SHUTTING_DOWN before the turn is written
                # One transaction checks the session, reads its turns not yet held in memory
                # and stores the turn (the one-open-turn check is the database's). `cached`
                # is the live key view, not a copy (a copy costs a long session O(turns) each
                # turn): only this start adds to it while it runs (one start per session).
                try:
                    started = await self.store.start_turn(
                        owner, agent_id, turn, known=kept.known if kept else NO_TURNS,
                        cached=kept.messages.keys() if kept else frozenset(), request_id=request_id,
                        settings=_settings(toolgroups, tool_config, instructions),
                        lease_until=self._lease_end())
                except OpenTurnExists:
                    # The open turn may be this request's first try, started since it looked.
                    existing = None if request_id is None else await first_try()
                    if existing is None:
                        raise _busy(session_id) from None
                    return self.follow_checked(owner, session_id, existing, None)
                if started is None:  # the agent's session is gone, or the agent: which one
                    await self._agent_and_session(owner, agent_id, session_id)
                    raise NotFound("session", session_id)
                if started.stored.turn_id != turn.turn_id:  # a concurrent retry with the same key won
                    return self.follow_checked(owner, session_id, started.stored.turn_id, None)
                self._agents[(owner, agent_id)] = agent  # its own configuration resolved: it will again
                while len(self._agents) > AGENT_CACHE_SIZE:
                    del self._agents[next(iter(self._agents))]
                state = TurnState(owner, turn, plan, [], deadline)

                async def produce(run: Run) -> None:
                    # In the run, as all that follows the turn's write: whatever fails here
                    # ends the turn as failed (on_stop), never leaves it in progress.
                    statuses = self._settle(kept, started.rows, started.from_start)
                    history = await self._history(owner, session_id, plan, statuses=statuses,
                                                  bodies=started.bodies, settled=kept)
                    state.messages, dropped = paired(history + [input_message(m) for m in inputs])
                    await run.emit(_event(turn.turn_id, turn_start=te.TurnStartPayload(turn_id=turn.turn_id)))
                    if unanswerable := [i - len(history) for i in dropped if i >= len(history)]:
                        raise _answers_no_call(inputs, unanswerable[0])
                    if not await self._shield_step(state, run, USER_INPUT):
                        await self._loop(state, run)

                run = self.runs.start(
                    owner,
                    turn.turn_id,
                    produce,
                    kind=TURNS,
                    background=background,
                    on_stop=self._on_stop(state),
                )
        return run.events()

    @contextlib.contextmanager
    def _start_slot(self, key: tuple[str, str]) -> Iterator[None]:
        """Holds the session's slot in _starting (taken when free: the caller checked) for a
        start or a resume; those waiting on it (_first_try, cancel) go on after."""
        release = self._take_start_slot(key)
        try:
            yield
        finally:
            release()

    def _take_start_slot(self, key: tuple[str, str]) -> Callable[[], None]:
        """Takes the session's slot (free: the caller checked); returns what releases it."""
        taken = self._starting[key] = asyncio.get_running_loop().create_future()

        def release() -> None:
            del self._starting[key]
            taken.set_result(None)
        return release

    async def _first_try(self, key: tuple[str, str], request_id: str | None,
                         find: Callable[[], Awaitable[T | None]]) -> T | None:
        """What `find` says the request_id's first try made (a turn, a resume), if it made
        one. A start or resume under way in the session may be that first try (a client
        that retried at once, or sent it twice): wait for it and look again, rather than
        fail as busy. None at once without a request_id."""
        while request_id is not None:
            found = await find()
            if found is not None:
                return found
            starting = self._starting.get(key)
            if starting is None:
                return None
            await asyncio.shield(starting)
        return None

    async def resume_turn(
        self,
        owner: str,
        agent_id: str,
        session_id: str,
        turn_id: str,
        *,
        tool_responses: Sequence[msg.AgentToolResponse],
        background: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[te.TurnEvent]:
        """Checks the resume, then continues the paused turn in a new run whose events are
        numbered on from the turn's last one, with the turn's own settings; returns its
        owner stream. A retry with the request_id of the turn's last resume re-attaches to
        that continuation (from its first event) instead."""
        for i, response in enumerate(tool_responses):
            _check_items(response.content, f"tool_responses[{i}].content", images=False)
        deadline = _deadline(timeout_s, background)
        agent = await self._agent_and_session(owner, agent_id, session_id)
        key = (owner, session_id)

        async def first_resume() -> int | None:
            _, last_key, first = await self.store.turn_resume_state(owner, session_id, turn_id)
            return first if last_key == request_id else None
        first = await self._first_try(key, request_id, first_resume)
        if first is not None:
            return self.follow_checked(owner, session_id, turn_id, first - 1)
        if key in self._starting:
            raise FailedPrecondition(f"Turn '{turn_id}' is being resumed or cancelled.",
                                     reason="TURN_NOT_AWAITING_INPUT")
        with self._start_slot(key):
            turn = await self.store.get_turn(owner, session_id, turn_id)
            if turn is None:
                raise NotFound("turn", turn_id)
            if turn.status != types.TURN_STATUS_AWAITING_INPUT:
                # It may be this request's first try that resumed it since it looked.
                if request_id is not None and (first := await first_resume()) is not None:
                    return self.follow_checked(owner, session_id, turn_id, first - 1)
                raise FailedPrecondition(
                    f"Turn '{turn_id}' is not awaiting input.", reason="TURN_NOT_AWAITING_INPUT"
                )
            pending = list(turn.output_message.tool_calls)
            answered = [r.call_id for r in tool_responses]
            if len(set(answered)) != len(answered) or set(answered) != {c.call_id for c in pending}:
                raise InvalidArgument(
                    "tool_responses",
                    "must answer exactly the pending tool calls, each once: "
                    + ", ".join(c.call_id for c in pending),
                    reason="TOOL_RESPONSES_MISMATCH",
                )
            called = {c.call_id: c.tool_name for c in pending}
            for i, response in enumerate(tool_responses):
                if response.tool_name and response.tool_name != called[response.call_id]:
                    raise InvalidArgument(
                        f"tool_responses[{i}].tool_name",
                        f"call '{response.call_id}' is a call of '{called[response.call_id]}', "
                        f"not of '{response.tool_name}'", reason="TOOL_RESPONSES_MISMATCH")
            # The turn's own overrides (instructions, tool_config, toolgroups) are kept with
            # its row, not in the Turn resource; turns stored before that run with the agent's.
            settings, _, _ = await self.store.turn_resume_state(owner, session_id, turn_id)
            plan = self._plan(agent, **_overrides(settings))
            last = await self.runs.store.last_sequence(owner, turn_id)
            history = await self._history(owner, session_id, plan, until=turn_id)
            turn.status = types.TURN_STATUS_IN_PROGRESS
            turn.ClearField("stop_reason")
            turn.output_message.CopyFrom(NO_ANSWER)
            turn.background = background
            state = TurnState(owner, turn, plan, deadline=deadline)
            by_id = {r.call_id: r for r in tool_responses}

            async def produce(run: Run) -> None:
                # The client ran the tools: the resume stream begins with their step's
                # step_complete, with no step_start, as Llama Stack's does (§3 (c)).
                step_id, started = ids.new_id(ids.STEP), timestamp()
                responses = [by_id[c.call_id] for c in pending]
                for response in responses:
                    if not response.tool_name:
                        response.tool_name = called[response.call_id]
                step = _tool_execution_step(turn_id, step_id, started, pending, responses)
                await self._complete_step(state, run, step, TOOL_EXECUTION)
                # Now that every call of the paused message is answered, the turn so far:
                state.messages, _ = paired(history + turn_messages(turn))
                # As in Llama Stack, the input shields run again, now over the tool results too.
                if not await self._shield_step(state, run, USER_INPUT):
                    await self._loop(state, run)

            with self.runs.admission():  # SHUTTING_DOWN before the turn is written
                resumed = await self.store.update_turn(
                    owner, turn, IN_PROGRESS, resume=(request_id, last + 1), lease_until=self._lease_end()
                )
                if not resumed:  # another replica resumed (or cancelled) it meanwhile
                    raise FailedPrecondition(
                        f"Turn '{turn_id}' is not awaiting input.", reason="TURN_NOT_AWAITING_INPUT"
                    )
                run = self.runs.start(
                    owner,
                    turn_id,
                    produce,
                    kind=TURNS,
                    background=background,
                    first_sequence=last + 1,
                    on_stop=self._on_stop(state),
                )
        return run.events()

    async def follow(
        self, owner: str, agent_id: str, session_id: str, turn_id: str, starting_after: int | None
    ) -> AsyncIterator[te.TurnEvent]:
        """StreamTurnEvents: the kept events after `starting_after`, then the live ones, to
        the turn's next status event. Never cancels the turn."""
        await self._agent_and_session(owner, agent_id, session_id)
        if await self.store.turn_status(owner, session_id, turn_id) is None:
            raise NotFound("turn", turn_id)
        return self.follow_checked(owner, session_id, turn_id, starting_after)

    def follow_checked(
        self, owner: str, session_id: str, turn_id: str, starting_after: int | None
    ) -> AsyncIterator[te.TurnEvent]:
        return self.runs.attach(
            owner,
            turn_id,
            kind=TURNS,
            starting_after=starting_after,
            still_running=self._still_running(owner, session_id, turn_id),
        )

    async def stop_runs(self, owner: str, agent_id: str, session_id: str | None = None) -> None:
        """Before a delete: the running turns of the agent's sessions (or of that session) are
        cancelled, here or by the live replica that runs them, each waited for to its end,
        so none writes after the delete."""
        for turn_id in await self.store.running_turns(owner, agent_id, session_id):
            if await self.runs.cancel(owner, turn_id) is None:
                await self._cancelled_elsewhere(owner, turn_id)

    async def stop_runs_deleted(self, owner: str) -> None:
        """After a delete: the owner's runs here whose turn went with it are cancelled now. A
        turn started while the delete ran, after stop_runs had looked, was stored and then
        deleted with its session; its run would otherwise call the model and stream on until
        its first write found nothing."""
        live = [run.run_id for run in self.runs.running(TURNS) if run.owner == owner]
        if live:
            for turn_id in set(live) - await self.store.existing_turns(owner, live):
                await self.runs.cancel(owner, turn_id)

    async def cancel(self, owner: str, agent_id: str, session_id: str, turn_id: str) -> types.Turn:
        """CancelTurn: a running turn is stopped (its on_stop stores it cancelled and emits
        turn_failed); a paused one is cancelled directly, with a kept turn_failed event. An
        ended turn: FAILED_PRECONDITION (TURN_NOT_RUNNING).
        One at a time per session with its resumes (_starting): two cancels, or a cancel and a
        resume, would each end or continue the turn from the same event number."""
        turn = await self._turn(owner, agent_id, session_id, turn_id)
        if STATUS_NAMES.get(turn.status) not in OPEN_STATUSES and self.runs.get(owner, turn_id) is None:
            raise _not_running(turn_id)  # nothing to cancel: the session's starts go on
        key = (owner, session_id)
        waited = False
        while (starting := self._starting.get(key)) is not None:
            await asyncio.shield(starting)
            waited = True
        # Once it holds the slot, the cancel runs to its end in its own task, even if its
        # caller leaves: the slot is released when the turn's end is written, not before, so
        # a resume can never continue a turn a cancel is ending.
        release = self._take_start_slot(key)

        async def cancel_holding_the_slot() -> types.Turn:
            nonlocal turn
            if waited:  # what the start, resume or cancel it waited for did to the turn
                turn = await self._turn(owner, agent_id, session_id, turn_id)
            return await self._cancel(owner, agent_id, session_id, turn)
        work = asyncio.get_running_loop().create_task(cancel_holding_the_slot(), name=f"cancel {turn_id}")
        work.add_done_callback(lambda _: release())
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:  # the caller left: nobody else would hear of a failure
            work.add_done_callback(_log_if_failed)
            raise

    async def _cancel(self, owner: str, agent_id: str, session_id: str, turn: types.Turn) -> types.Turn:
        turn_id = turn.turn_id
        run = self.runs.get(owner, turn_id)
        if run is not None and run.terminal is None:
            await self.runs.cancel(owner, turn_id)
            turn = await self._turn(owner, agent_id, session_id, turn_id)
            if turn.status != types.TURN_STATUS_AWAITING_INPUT:
                return turn
        elif run is not None or STATUS_NAMES.get(turn.status) in OPEN_STATUSES:
            # A run that is ending, or ended since the first read, has stored its end: read again.
            if run is not None:
                await run.ended.wait()
            turn = await self._turn(owner, agent_id, session_id, turn_id)
        if STATUS_NAMES.get(turn.status) not in OPEN_STATUSES:
            raise _not_running(turn_id)
        in_progress = turn.status == types.TURN_STATUS_IN_PROGRESS  # and not running here
        if in_progress and await self._cancelled_elsewhere(owner, turn_id, turn):
            return await self._turn(owner, agent_id, session_id, turn_id)
        if in_progress:
            await self._turn(owner, agent_id, session_id, turn_id)  # NOT_FOUND if deleted meanwhile
        # Paused, or left in_progress by a run no live replica renews: end it now.
        last = await self.runs.store.last_sequence(owner, turn_id)
        error = _cancelled()

        async def produce(run: Run) -> None:
            self._end_turn(turn, types.TURN_STATUS_CANCELLED, error)
            await self.store.update_turn(owner, turn, STATUS_NAMES[turn.status])
            await run.emit(_turn_failed(turn))

        await self.runs.start(
            owner, turn_id, produce, kind=TURNS, background=True, first_sequence=last + 1
        ).wait()
        return turn

    async def _cancelled_elsewhere(self, owner: str, turn_id: str, turn: types.Turn | None = None) -> bool:
        """A turn another live replica runs: asks it to cancel the turn and waits for its end
        (Leases.stop_elsewhere); with `turn`, stored as cancelled at once. False if no live
        replica runs it, or it did not end in time: the caller ends it itself."""
        cancelled = None
        if turn is not None:
            cancelled = types.Turn()
            cancelled.CopyFrom(turn)
            self._end_turn(cancelled, types.TURN_STATUS_CANCELLED, _cancelled())
        return await self.leases.stop_elsewhere(
            owner, turn_id, lambda: self.store.request_cancel(owner, turn_id, cancelled))

    # ------------------------------------------------------------------ the loop

    async def _loop(self, state: TurnState, run: Run) -> None:
        plan = state.plan
        while True:
            answer = await self._infer(state, run)
            if answer.tool_calls:
                if state.inference_count >= plan.max_infer_iters:
                    # The calls are NOT executed; the turn says so (stop_reason max_infer_iters).
                    # Its output_message ends the turn (end_of_turn), so SDK loops do not resume it.
                    final = msg.CompletionMessage()
                    final.CopyFrom(answer)
                    final.stop_reason = msg.STOP_REASON_END_OF_TURN
                    return await self._finish(state, run, final, types.TURN_STOP_REASON_MAX_INFER_ITERS)
                client = [c for c in answer.tool_calls if c.tool_name in plan.client_tools]
                server = [c for c in answer.tool_calls if c.tool_name not in plan.client_tools]
                if server:
                    await run.flush()  # the inference step is kept before its tools run
                for call in server:
                    await self._execute(state, run, call)
                if client:
                    pending = msg.CompletionMessage(
                        content=answer.content, tool_calls=client, stop_reason=msg.STOP_REASON_END_OF_MESSAGE
                    )
                    return await self._pause(state, run, pending)
                continue
            reason = (
                types.TURN_STOP_REASON_OUT_OF_TOKENS
                if answer.stop_reason == msg.STOP_REASON_OUT_OF_TOKENS
                else types.TURN_STOP_REASON_END_OF_TURN
            )
            return await self._finish(state, run, answer, reason)

    async def _infer(self, state: TurnState, run: Run) -> msg.CompletionMessage:
        plan, turn_id = state.plan, state.turn.turn_id
        step_id, started = ids.new_id(ids.STEP), timestamp()

        async def progress(delta: te.ContentDelta) -> None:
            await run.emit(
                _event(
                    turn_id,
                    step_progress=te.StepProgressPayload(step_type=INFERENCE, step_id=step_id, delta=delta),
                )
            )

        await run.emit(_event(turn_id, step_start=_step_start(INFERENCE, step_id)))
        request = ChatRequest.with_sampling(
            plan.sampling,
            model=plan.agent.agent_config.model,
            messages=state.messages,
            tools=plan.specs,
            tool_choice=plan.tool_choice if plan.specs else None,
            response_format=plan.response_format,
            timeout_s=state.timeout_s(),
        )
        completion = Completion()
        await run.let_consumers_send()
        async with contextlib.aclosing(plan.provider.stream_chat(request)) as chunks:
            async for chunk in chunks:
                for piece in completion.feed(chunk):
                    if isinstance(piece, str):
                        await progress(te.ContentDelta(text=te.TextDelta(text=piece)))
                        continue
                    if piece.started:  # its name and the arguments that came with it
                        await progress(_call_text(f"{piece.call.name}({piece.fragment}"))
                    elif piece.fragment:
                        await progress(_call_text(piece.fragment))
        finish, usage = completion.finish_reason, completion.usage
        parsed: list[msg.AgentToolCall] = []
        unparsed: list[str] = []
        for streamed in completion.calls_in_order():
            call_id, name, arguments = streamed.id, streamed.name, streamed.arguments
            await progress(_call_text(")"))
            if arguments_object(arguments or "{}") is None:
                raw = f"{name}({arguments})"
                unparsed.append(raw)
                await progress(
                    te.ContentDelta(
                        tool_call=te.ToolCallDelta(
                            tool_call=te.ToolCallOrString(text=raw),
                            parse_status=te.TOOL_CALL_PARSE_STATUS_FAILED,
                        )
                    )
                )
                continue
            parsed_call = msg.AgentToolCall(
                call_id=call_id or ids.new_id("call"), tool_name=name, arguments=arguments or "{}"
            )
            parsed.append(parsed_call)
            await progress(
                te.ContentDelta(
                    tool_call=te.ToolCallDelta(
                        tool_call=te.ToolCallOrString(call=parsed_call),
                        parse_status=te.TOOL_CALL_PARSE_STATUS_SUCCEEDED,
                    )
                )
            )
        content = completion.text or "".join(unparsed)
        if finish == "length":
            stop = msg.STOP_REASON_OUT_OF_TOKENS
        elif parsed:
            stop = msg.STOP_REASON_END_OF_MESSAGE
        else:
            stop = msg.STOP_REASON_END_OF_TURN
        answer = msg.CompletionMessage(
            content=msg.InterleavedContent(text=content), stop_reason=stop, tool_calls=parsed
        )
        step = types.InferenceStep(
            turn_id=turn_id,
            step_id=step_id,
            started_at=started,
            completed_at=timestamp(),
            model_response=answer,
            model=plan.agent.agent_config.model,
        )
        if usage is not None:
            step.usage.CopyFrom(
                common_pb2.TokenUsage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    total_tokens=usage.total_tokens,
                )
            )
        # Kept by the loop's next flush: at once if tools run next, else in the commit that
        # ends the turn (one commit fewer per turn).
        await self._complete_step(state, run, types.AgentStep(inference=step), INFERENCE, keep_now=False)
        said = assistant_message(answer)
        if said is not None:
            state.messages.append(said)
        return answer

    async def _execute(self, state: TurnState, run: Run, call: msg.AgentToolCall) -> None:
        """One server tool call: its own tool_execution step."""
        turn_id = state.turn.turn_id
        step_id, started = ids.new_id(ids.STEP), timestamp()
        await run.emit(_event(turn_id, step_start=_step_start(TOOL_EXECUTION, step_id)))
        await run.emit(
            _event(
                turn_id,
                step_progress=te.StepProgressPayload(
                    step_type=TOOL_EXECUTION,
                    step_id=step_id,
                    delta=te.ContentDelta(
                        tool_call=te.ToolCallDelta(
                            tool_call=te.ToolCallOrString(call=call), parse_status=IN_PROGRESS_PARSE
                        )
                    ),
                ),
            )
        )
        resolved = state.plan.server_tools.get(call.tool_name)
        if resolved is None:
            result = ToolResult(
                content=f"Unknown tool '{call.tool_name}'.", error_message=f"unknown tool '{call.tool_name}'"
            )
        else:
            arguments = arguments_object(call.arguments or "{}") or {}
            limit = state.tool_time_limit(self.tool_timeout_s)
            try:
                async with asyncio.timeout(limit):
                    # ResolvedTool merges the group's args over the model's (the group's win).
                    result = await resolved.invoke(arguments, session_id=state.turn.session_id)
            except TimeoutError:
                # Like any failed tool: the step says so, the model is told, the turn goes on.
                log.warning("turn %s: tool %s did not answer within %.3g s", turn_id, call.tool_name, limit)
                result = ToolResult(
                    content=f"Tool '{call.tool_name}' did not answer within {limit:.3g} s.",
                    error_message=f"timed out after {limit:.3g} s",
                )
        response = msg.AgentToolResponse(
            call_id=call.call_id,
            tool_name=call.tool_name,
            content=msg.InterleavedContent(text=result.content),
        )
        if result.metadata:
            response.metadata.update(result.metadata)
        if result.error_message is not None:
            response.error_message = result.error_message
        step = _tool_execution_step(turn_id, step_id, started, [call], [response])
        await self._complete_step(state, run, step, TOOL_EXECUTION)
        state.messages.append(ChatMessage(role="tool", content=result.content, tool_call_id=call.call_id))

    async def _complete_step(self, state: TurnState, run: Run, step: types.AgentStep, step_type: int,
                             keep_now: bool = True) -> None:
        """step_complete, the step stored, the events kept: one step boundary. `keep_now`
        False: the step and the events go with the run's next flush, which the caller makes
        come at once."""
        step_id = getattr(step, step.WhichOneof("step")).step_id
        await run.emit(
            _event(
                state.turn.turn_id,
                step_complete=te.StepCompletePayload(step_type=step_type, step_id=step_id, step_details=step),
            )
        )
        # The step and the run's events so far (its step_complete included) in one commit.
        work = self.store.append_step_work(state.owner, state.turn.turn_id, step)
        if keep_now:
            await run.flush(also=work)
        else:
            run.write_with_next_flush(work)
        state.turn.steps.append(step)

    async def _shield_step(self, state: TurnState, run: Run, touchpoint: int) -> bool:
        """The shields of `touchpoint` over the conversation so far, as one shield_call step
        (none when the agent names no shield there). A blocking violation completes the turn
        with the violation's message as its answer (stop_reason shield_violation; not an
        error, as in Llama Stack): returns True then. A non-blocking one is logged and the
        step records no violation."""
        shield_ids = state.plan.input_shields if touchpoint == USER_INPUT else state.plan.output_shields
        if not shield_ids:
            return False
        turn_id = state.turn.turn_id
        step_id, started = ids.new_id(ids.STEP), timestamp()
        start = _step_start(SHIELD_CALL, step_id)
        start.metadata.update({"touchpoint": TOUCHPOINT_NAMES[touchpoint]})
        await run.emit(_event(turn_id, step_start=start))
        found = await self.shields.check(shield_ids, state.messages)
        step = types.ShieldCallStep(
            turn_id=turn_id, step_id=step_id, started_at=started, completed_at=timestamp(),
            touchpoint=touchpoint, shield_id=shield_ids[0],
        )
        blocking = found is not None and found.blocking
        if found is not None and not blocking:
            log.info("turn %s: shield %s found a %s-level violation (not blocking)",
                     turn_id, found.shield_id, found.level)
        if blocking:
            step.shield_id = found.shield_id
            step.violation.violation_level = VIOLATION_LEVELS[found.level]
            if found.user_message is not None:
                step.violation.user_message = found.user_message
            step.violation.metadata.update(found.metadata)
        await self._complete_step(state, run, types.AgentStep(shield_call=step), SHIELD_CALL)
        if not blocking:
            return False
        refusal = msg.CompletionMessage(
            content=msg.InterleavedContent(text=refusal_text(step.violation, step.shield_id)),
            stop_reason=msg.STOP_REASON_END_OF_TURN,
        )
        await self._complete(state, run, refusal, types.TURN_STOP_REASON_SHIELD_VIOLATION)
        return True

    async def _pause(self, state: TurnState, run: Run, pending: msg.CompletionMessage) -> None:
        """Client calls pending: the output shields see the message that makes them (a
        violation completes the turn instead), then the turn pauses."""
        if await self._shield_step(state, run, ASSISTANT_OUTPUT):
            return
        turn = state.turn
        turn.output_message.CopyFrom(pending)
        turn.status = types.TURN_STATUS_AWAITING_INPUT
        turn.stop_reason = types.TURN_STOP_REASON_CLIENT_TOOL_CALLS
        turn.ClearField("completed_at")
        # The turn's status and its terminal event in one commit.
        await run.emit(_event(turn.turn_id, turn_awaiting_input=te.TurnAwaitingInputPayload(turn=turn)),
                       also=self.store.update_turn_work(state.owner, turn, AWAITING_INPUT))

    async def _finish(self, state: TurnState, run: Run, answer: msg.CompletionMessage, reason: int) -> None:
        """The final answer: the output shields see it (a violation replaces it), then the
        turn completes."""
        if not await self._shield_step(state, run, ASSISTANT_OUTPUT):
            await self._complete(state, run, answer, reason)

    async def _complete(self, state: TurnState, run: Run, answer: msg.CompletionMessage, reason: int) -> None:
        turn = state.turn
        turn.output_message.CopyFrom(answer)
        turn.status = types.TURN_STATUS_COMPLETED
        turn.stop_reason = reason
        turn.completed_at.CopyFrom(timestamp())
        # The turn's status and its terminal event in one commit.
        await run.emit(_event(turn.turn_id, turn_complete=te.TurnCompletePayload(turn=turn)),
                       also=self.store.update_turn_work(state.owner, turn, STATUS_NAMES[turn.status]))
        self._remember(state)

    @staticmethod
    def _end_turn(turn: types.Turn, status: int, error: BaseException) -> None:
        if not turn.HasField("output_message"):  # a turn stored before NO_ANSWER
            turn.output_message.CopyFrom(NO_ANSWER)
        turn.status = status
        turn.stop_reason = types.TURN_STOP_REASON_ERROR
        turn.completed_at.CopyFrom(timestamp())
        turn.error.CopyFrom(status_of(error))

    @staticmethod
    def _interrupted_by_recovery(turn: types.Turn, sequence_number: int) -> bytes:
        """Recovery's end of a turn whose replica died (see recover): the turn as on_stop
        stores an interrupted one, and its turn_failed event, serialized."""
        TurnEngine._end_turn(turn, types.TURN_STATUS_INTERRUPTED, _interrupted())
        event = _turn_failed(turn)
        event.sequence_number = sequence_number
        return event.SerializeToString()

    def _on_stop(self, state: TurnState):
        """What ends a run that stopped without its terminal event (runs.py: on_stop)."""

        async def on_stop(run: Run, reason: StopReason, error: BaseException | None) -> None:
            turn = state.turn
            if reason == "cancelled":
                status, error = types.TURN_STATUS_CANCELLED, _cancelled()
            elif reason == "interrupted":
                status, error = types.TURN_STATUS_INTERRUPTED, _interrupted()
            else:
                status = types.TURN_STATUS_FAILED
                error = error or RuntimeError("the turn ended without an answer")
            self._end_turn(turn, status, error)
            try:
                # A replica paused past its lease finds its turn interrupted by another's
                # recovery, whose turn_failed is kept: the stored turn stays the one that
                # event carries (this run's own end then meets that event's number, and
                # only its live streams get it).
                await self.store.update_turn(state.owner, turn, STATUS_NAMES[status], keep_interrupted=True)
                self._remember(state)
            except Exception as error:  # noqa: BLE001 - the stream still ends with turn_failed
                log_failure(log, error, "turn %s: its end could not be stored", turn.turn_id)
                # Kept with the run's last events, whenever they are (Runs._keep_later).
                run.write_with_next_flush(self.store.update_turn_work(
                    state.owner, turn, STATUS_NAMES[status], if_in_progress=True))
            await run.emit(_turn_failed(turn))

        return on_stop


def _not_running(turn_id: str) -> FailedPrecondition:
    return FailedPrecondition(f"Turn '{turn_id}' has already ended.", reason="TURN_NOT_RUNNING")


def _log_if_failed(work: asyncio.Task) -> None:
    if not work.cancelled() and (error := work.exception()) is not None:
        log_failure(log, error, "%s (its caller had left) failed", work.get_name())


def _deadline(timeout_s: float | None, background: bool) -> float | None:
    """The caller's deadline on the event loop's clock; none for a background turn, which
    outlives its call."""
    if timeout_s is None or background:
        return None
    return asyncio.get_running_loop().time() + timeout_s


def _settings(
    toolgroups: Sequence[types.AgentToolGroup],
    tool_config: types.AgentToolConfig | None,
    instructions: str | None,
) -> bytes | None:
    """What a resume needs of the turn's create request (kept with the turn row): its
    instructions, tool_config and toolgroups, without sensitive fields. None: no override."""
    request = agents_pb2.CreateTurnRequest(toolgroups=toolgroups)
    if tool_config is not None:
        request.tool_config.CopyFrom(tool_config)
    if instructions is not None:
        request.instructions = instructions
    if request.ByteSize() == 0:
        return None
    return redact(request).SerializeToString(deterministic=True)


def _overrides(settings: bytes | None) -> dict[str, Any]:
    """The _plan arguments of a turn's kept settings."""
    if settings is None:
        return {}
    request = agents_pb2.CreateTurnRequest.FromString(settings)
    return {
        "toolgroups": list(request.toolgroups),
        "tool_config": request.tool_config if request.HasField("tool_config") else None,
        "instructions": request.instructions if request.HasField("instructions") else None,
    }


def _call_text(text: str) -> te.ContentDelta:
    return te.ContentDelta(
        tool_call=te.ToolCallDelta(tool_call=te.ToolCallOrString(text=text), parse_status=IN_PROGRESS_PARSE)
    )


