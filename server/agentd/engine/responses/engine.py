"""The response engine: a response is a run (engine/runs.py, kind RESPONSES) whose producer
is the loop below. No grpc here: the owner is passed explicitly, errors are agentd errors.

The events of a response, exactly as OpenAI emits them (sequence numbers dense from 0):

    response.created (status in_progress; queued in background mode, then response.queued)
    response.in_progress
    per model call, for its answer text (one message item):
        response.output_item.added, response.content_part.added,
        response.output_text.delta (xN, logprobs []), response.output_text.done,
        response.content_part.done, response.output_item.done
    and for each function call (its own item and output_index, even when parallel):
        response.output_item.added, response.function_call_arguments.delta (xN),
        response.function_call_arguments.done, response.output_item.done
    then for each web_search call the model made (run here; no argument events, as OpenAI):
        response.output_item.added (web_search_call), response.web_search_call.in_progress,
        .searching, .completed (also when it failed: see the item's status),
        response.output_item.done; then the next model call
    response.completed | response.incomplete | response.failed

Guardrails (the request's `guardrails`, run through the shields hook, engine/shields.py):
the input check runs after response.in_progress, before the first model call, over the
messages sent to the model; the output check over each model call's text once it is
complete, before its output_text.done (the text of a guarded response is held until then:
see _OpenMessage). A blocking violation completes the response (status completed, as
OpenAI and Llama Stack present it) with one more output item: an assistant message whose
only part is a refusal (output_item.added, content_part.added, response.refusal.delta,
response.refusal.done, content_part.done, output_item.done, numbered on without gaps); it
is stored and synced like any output. A non-blocking violation is only logged.

The loop: a model call; its web_search calls run here (at most max_tool_calls over the
response; later ones are answered "not run" to the model) and the model is called again;
function calls are the client's: they end the response (the client sends function_call_output
items in the next one). A model call cut by max_output_tokens (over the whole response) ends
it incomplete (reason max_output_tokens), as does a max_infer_iters-th model call that ran
web searches (reason max_infer_iters). file_search and MCP tools are refused at create until
agentd runs them.

Persistence as it runs: the response row (in_progress or queued, with its input items)
exists before response.created; its final form is written in the transaction that keeps its
terminal event. A run that stops without its terminal event (cancelled, interrupted at
shutdown, failed: the model went away, a write failed) is finished by `on_stop`: stored
cancelled or failed with its `error`, and response.failed ends the stream. With
`conversation`, the input and output items are appended to it before the terminal event (a
client that stops reading at response.completed sees the conversation up to date).
`store: false`: the row exists while the response runs (it holds the events a stream
replays) and is deleted when it ends (at shutdown, `close` waits for those deletes before
the database closes; after a crash, `recover` deletes it); it is never retrievable or
listed. A create that arrives while the server drains fails with UNAVAILABLE
(SHUTTING_DOWN) before it writes anything (Runs.admission).

Replicas (engine/leases.py, as for turns): a running response carries the lease of the
replica that runs it, stored with its row and renewed every third of the lease while its run
lives. Recovery, at start and on each renewal tick, ends only responses whose lease expired
(their replica died): stored ones become failed with a kept response.failed, store=false ones
are deleted; a replica that starts (a rolling deploy) leaves alone those that live replicas
run. Recovery's writes are guarded by the status and the expired lease, so of two replicas
recovering at once one ends a response, and a lease renewed since the scan keeps it running.
CancelResponse (or DeleteResponse) on a replica that does not run the response stores it
cancelled; the replica that runs it sees that at its next renewal, stops the run, and its
on_stop keeps response.failed, which the cancelling call waits for (two leases at most; then
it ends the response itself). A run whose response another replica's recovery failed or
deleted (after a pause here longer than the lease) is stopped here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from agentd import codec, ids
from agentd.clock import now_micros
from agentd.config import WEBSEARCH_GROUP
from agentd.engine.completion import CallPiece, Completion, arguments_object
from agentd.engine.items import check_include
from agentd.engine.leases import DEFAULT_LEASE_S, Leases
from agentd.engine.lru import LRU
from agentd.engine.metadata import check_metadata
from agentd.engine.responses import items as response_items
from agentd.engine.runs import RESPONSES, Run, Runs, StopReason
from agentd.engine.shields import DeclaredShields, Shields, ShieldViolation, refusal_text, require_declared
from agentd.errors import AgentdError, FailedPrecondition, InvalidArgument, NotFound, log_failure
from agentd.inference import ChatMessage, ChatRequest, InferenceProvider, ModelRegistry, ToolCall, ToolSpec
from agentd.paging import Cursor
from agentd.storage.conversations import ConversationStore
from agentd.storage.repository import Page
from agentd.storage.responses import RUNNING, ConversationBusy, ResponseStore, status_name
from agentd.tools.base import ResolvedTool, ToolRuntime
from agentd.v1 import response_events_pb2 as ev
from agentd.v1 import response_items_pb2 as it
from agentd.v1 import response_resource_pb2 as rt
from agentd.v1 import response_text_pb2 as text_pb
from agentd.v1 import response_tools_pb2 as tools_pb
from agentd.v1 import responses_pb2 as pb

log = logging.getLogger("agentd.responses")

DEFAULT_MAX_INFER_ITERS = 10
MIN_OUTPUT_TOKENS = 16
MAX_USER_ID = 128
# Responses whose transcript (every item up to their output) is kept in memory, so a chain
# of previous_response_id reads one response, not the whole chain (least recently used out),
# and how many items those transcripts may hold in all (each holds its whole chain: long
# chains would otherwise hold memory without bound, ~2.3 KB an item of a few words).
TRANSCRIPT_CACHE = 1024
TRANSCRIPT_CACHE_ITEMS = 50_000
# Conversation items read per page while loading a conversation (all of them are loaded).
CONVERSATION_PAGE = 1000
# The names OpenAI gives the web search tool (all run by builtin::websearch).
WEB_SEARCH_TOOLS = frozenset({"web_search", "web_search_preview", "web_search_preview_2025_03_11",
                              "web_search_2025_08_26"})
# The OpenAI error code of a failed response, by the agentd reason of what failed it.
_ERROR_CODES = {"MODEL_REJECTED_REQUEST": "invalid_prompt", "MODEL_RATE_LIMITED": "rate_limit_exceeded",
                # The request itself cannot be sent (e.g. a number JSON has no form for).
                "INVALID_ARGUMENT": "invalid_prompt"}
# What OpenAI takes as a function's name (and chat-completions servers send back as is).
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")

IN_PROGRESS = rt.RESPONSE_STATUS_IN_PROGRESS
QUEUED = rt.RESPONSE_STATUS_QUEUED
COMPLETED = rt.RESPONSE_STATUS_COMPLETED
INCOMPLETE = rt.RESPONSE_STATUS_INCOMPLETE
FAILED = rt.RESPONSE_STATUS_FAILED
CANCELLED = rt.RESPONSE_STATUS_CANCELLED
ITEM_IN_PROGRESS = it.RESPONSE_ITEM_STATUS_IN_PROGRESS
ITEM_COMPLETED = it.RESPONSE_ITEM_STATUS_COMPLETED
ITEM_INCOMPLETE = it.RESPONSE_ITEM_STATUS_INCOMPLETE

CreateRequest = pb.CreateResponseRequest | pb.StreamResponseRequest


@dataclass
class Plan:
    """What a response's model calls need, resolved before it starts (so bad requests fail
    the call before any event)."""

    provider: InferenceProvider
    specs: tuple[ToolSpec, ...]
    # The tools agentd runs (web search), by the name the model calls.
    server_tools: dict[str, ResolvedTool]
    tool_choice: str | None
    parallel_tool_calls: bool | None
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    response_format: dict[str, Any] | None
    guardrails: tuple[str, ...]
    max_infer_iters: int
    max_tool_calls: int | None


@dataclass
class ResponseState:
    """One running response: the response as it grows, and the conversation for the model."""

    owner: str
    response: rt.Response
    plan: Plan
    messages: list[ChatMessage]
    # Every item before this response's input (previous responses' or the conversation's).
    history: list[it.ResponseItem]
    input: list[it.ResponseItem]
    deadline: float | None = None
    # What `history` weighs in the transcript cache (response_items.weight), known as it was
    # gathered: weighing a long chain again with every response cost ~3 us an item.
    history_weight: int = 0
    # The responses whose items `history` holds, oldest first (see _Transcript).
    history_chain: tuple[str, ...] = ()
    usage: rt.ResponseUsage = field(default_factory=lambda: _zero_usage())
    tool_calls_run: int = 0  # server-side tool calls run so far (max_tool_calls)

    def timeout_s(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - asyncio.get_running_loop().time(), 0.0)


@dataclass(frozen=True)
class Started:
    """A create that passed its checks: the response as stored, and its events (the owner
    stream of a new run: iterate it under contextlib.aclosing; a retried create's stream
    follows the first call's run instead)."""

    response: rt.Response
    events: Callable[[], AsyncIterator[ev.ResponseStreamEvent]]


def _event(**member: Any) -> ev.ResponseStreamEvent:
    return ev.ResponseStreamEvent(**member)


def _failed_event(response: rt.Response, sequence_number: int) -> bytes:
    """response.failed numbered by the caller (recovery), serialized."""
    return _event(failed=_snapshot(response), sequence_number=sequence_number).SerializeToString()


def _snapshot(response: rt.Response) -> ev.ResponseLifecycleEvent:
    # Emitted events are shared and serialized later: the response goes on changing.
    copy = rt.Response()
    copy.CopyFrom(response)
    return ev.ResponseLifecycleEvent(response=copy)


def _copy(item: it.ResponseItem) -> it.ResponseItem:
    copy = it.ResponseItem()
    copy.CopyFrom(item)
    return copy


class _Transcript(NamedTuple):
    """A response's transcript as cached: every item up to and including its output, and
    the ids of the responses those items come from (its chain, itself last), so that a use
    can check that none of them was deleted since."""

    items: tuple[it.ResponseItem, ...]
    chain: tuple[str, ...]


class ResponseEngine:
    def __init__(self, store: ResponseStore, conversations: ConversationStore, runs: Runs,
                 registry: ModelRegistry, tools: ToolRuntime | None = None, shields: Shields | None = None,
                 lease_s: float = DEFAULT_LEASE_S):
        self.store = store
        self.conversations = conversations
        self.runs = runs
        self.registry = registry
        self.tools = tools
        self.shields = shields or DeclaredShields()
        # (owner, response id) -> every item up to and including that response's output.
        self._transcripts: LRU[tuple[str, str], _Transcript] = LRU(
            TRANSCRIPT_CACHE, TRANSCRIPT_CACHE_ITEMS)
        # Tasks that delete store=false responses once their run ended.
        self._forgetting: set[asyncio.Task] = set()
        self.leases = Leases(runs, RESPONSES, store, self.recover, lease_s)

    # ------------------------------------------------------------------ start-up

    async def recover(self) -> int:
        """Responses left queued or in progress by a replica that died (their lease expired)
        are stored failed, with a server_error saying so, as a shutdown would have ended
        them (on_stop, reason interrupted): their response.failed is kept, numbered after
        the run's last kept event, in the transaction that stores the failure, so a
        follower's stream ends with it, not by just stopping. store=false ones (never
        retrievable) are deleted. Those whose lease holds (a live replica runs them) are left
        alone."""
        now = now_micros()
        ended = 0  # by this call: another replica's recovery may take some of them first
        live_here = self.runs.live_ids(RESPONSES)
        for owner, response in await self.store.expired(now):
            if response.id in live_here:  # a database stall outlasted the lease this process renews
                continue
            if not response.store:
                ended += await self.store.delete_expired(owner, response.id, now)
                continue
            _interrupt(response)
            _end_unfinished(response)
            ended += await self.store.end_expired(owner, response, now, partial(_failed_event, response))
        if ended:
            log.warning("%d response(s) left running by a stopped replica ended", ended)
        return ended

    async def close(self) -> None:
        """After the runs drained, before the database closes: the store=false responses
        that ended are deleted, and the lease keeper stops."""
        if self._forgetting:
            await asyncio.wait(set(self._forgetting))
        await self.leases.close()

    # ------------------------------------------------------------------ create

    async def start(self, owner: str, request: CreateRequest, *, request_id: str | None = None,
                    timeout_s: float | None = None) -> Started:
        """Checks the request, stores the response and starts its run (see the module
        docstring). Every bad request fails here, before any event. A retry with a known
        `request_id` (the request's, checked by the caller) follows the first call's response
        instead. `timeout_s`: the caller's
        time left (ignored when background)."""
        background = request.HasField("background") and request.background
        store = not request.HasField("store") or request.store
        if background and not store:
            raise InvalidArgument("background", "a background response must be stored (store: true)")
        plan = self._plan(request)
        previous = (ids.no_nul(request.previous_response_id, "previous_response_id")
                    if request.HasField("previous_response_id") else None)
        conversation_id = self._conversation_id(request)
        if previous is not None and conversation_id is not None:
            raise InvalidArgument("conversation", "Mutually exclusive parameters: 'previous_response_id' and "
                                                  "'conversation'. Provide only one of them.")
        given = response_items.input_items(request.input)
        chain: tuple[str, ...] = ()
        if previous is not None:
            history, history_weight, chain = await self._transcript(owner, previous)
        elif conversation_id is not None:
            history = await self._conversation_items(owner, conversation_id)
            response_items.check_sendable(history, "conversation")
            history_weight = response_items.weight(history)
        else:
            history, history_weight = [], 0
        response_items.check_outputs_paired(history, given)
        messages = response_items.chat_messages([*history, *given])
        if request.HasField("instructions") and request.instructions:
            messages.insert(0, ChatMessage(role="system", content=request.instructions))
        response = _echo(request, plan, background=background, store=store)
        if conversation_id is not None:
            response.conversation.id = conversation_id
        deadline = None
        if timeout_s is not None and not background:
            deadline = asyncio.get_running_loop().time() + timeout_s
        state = ResponseState(owner, response, plan, messages, history, given, deadline,
                              history_weight=history_weight, history_chain=chain)
        with self.runs.admission():  # SHUTTING_DOWN before the response is written
            try:
                stored = await self.store.create(owner, response, given, request_id, self.leases.until())
            except ConversationBusy:
                raise _conversation_locked() from None
            if stored.id != response.id:  # a retry: the first call's response
                return Started(stored, lambda: self._follow_checked(owner, stored.id, None))
            run = self.runs.start(owner, response.id, lambda run: self._produce(state, run), kind=RESPONSES,
                                  background=background, on_stop=self._on_stop(state))
        if not store:
            task = asyncio.get_running_loop().create_task(self._forget_when_ended(run))
            self._forgetting.add(task)
            task.add_done_callback(self._forgetting.discard)
        return Started(_snapshot(response).response, run.events)

    def _plan(self, request: CreateRequest) -> Plan:
        try:
            provider = self.registry.provider_for(request.model)
        except NotFound:
            # OpenAI's create answers an unknown model with 400 model_not_found, param model.
            raise InvalidArgument("model", f"The requested model '{request.model}' does not exist.",
                                  reason="MODEL_NOT_FOUND") from None
        specs: list[ToolSpec] = []
        server_tools: dict[str, ResolvedTool] = {}
        for index, tool in enumerate(request.tools):
            where = f"tools[{index}]"
            if tool.WhichOneof("tool") in WEB_SEARCH_TOOLS:
                for resolved in self._web_search(where):
                    if resolved.tool.name not in server_tools:
                        server_tools[resolved.tool.name] = resolved
                        specs.append(ToolSpec(name=resolved.tool.name, description=resolved.tool.description,
                                              parameters=resolved.tool.parameters))
                continue
            spec = _function_spec(tool, where)
            if spec.name in server_tools or any(s.name == spec.name for s in specs):
                raise InvalidArgument(where, f"a tool named '{spec.name}' is given twice")
            specs.append(spec)
        tool_choice = _tool_choice(request, {spec.name for spec in specs})
        temperature = request.temperature if request.HasField("temperature") else None
        if temperature is not None and not 0 <= temperature <= 2:
            raise InvalidArgument("temperature", "must be between 0 and 2")
        top_p = request.top_p if request.HasField("top_p") else None
        if top_p is not None and not 0 < top_p <= 1:
            raise InvalidArgument("top_p", "must be greater than 0 and at most 1")
        max_output = request.max_output_tokens if request.HasField("max_output_tokens") else None
        if max_output is not None and max_output < MIN_OUTPUT_TOKENS:
            raise InvalidArgument("max_output_tokens", f"must be at least {MIN_OUTPUT_TOKENS}")
        if request.HasField("max_tool_calls") and request.max_tool_calls < 0:
            raise InvalidArgument("max_tool_calls", "must be >= 0")
        if request.HasField("max_infer_iters") and request.max_infer_iters < 1:
            raise InvalidArgument("max_infer_iters", "must be at least 1")
        if request.HasField("top_logprobs") and not 0 <= request.top_logprobs <= 20:
            raise InvalidArgument("top_logprobs", "must be between 0 and 20")
        check_metadata(request.metadata)
        for name in ("user", "safety_identifier"):
            if request.HasField(name) and len(getattr(request, name)) > MAX_USER_ID:
                raise InvalidArgument(name, f"at most {MAX_USER_ID} characters")
        check_include(request.include)
        return Plan(
            provider=provider, specs=tuple(specs), server_tools=server_tools, tool_choice=tool_choice,
            parallel_tool_calls=(request.parallel_tool_calls if request.HasField("parallel_tool_calls")
                                 else None),
            temperature=temperature, top_p=top_p, max_output_tokens=max_output,
            response_format=_response_format(request.text),
            guardrails=self._guardrails(request.guardrails),
            max_infer_iters=(request.max_infer_iters if request.HasField("max_infer_iters")
                             else DEFAULT_MAX_INFER_ITERS),
            max_tool_calls=request.max_tool_calls if request.HasField("max_tool_calls") else None)

    def _web_search(self, where: str) -> list[ResolvedTool]:
        """The web search tool(s) of builtin::websearch; INVALID_ARGUMENT naming the tool
        when no search provider is configured."""
        try:
            if self.tools is None:
                raise NotFound("toolgroup", WEBSEARCH_GROUP)
            return self.tools.resolve([(WEBSEARCH_GROUP, {})])
        except (NotFound, FailedPrecondition) as e:
            raise InvalidArgument(where, f"web_search is not configured on this server: "
                                         f"{e.message}") from None

    def _guardrails(self, guardrails: Sequence[rt.ResponseGuardrail]) -> tuple[str, ...]:
        """The shield ids the request names, each a configured shield (else NOT_FOUND
        SHIELD_NOT_FOUND)."""
        named = tuple(guardrail.id if guardrail.WhichOneof("guardrail") == "id" else guardrail.spec.type
                      for guardrail in guardrails)
        require_declared(self.shields, named, field="guardrails")
        return named

    @staticmethod
    def _conversation_id(request: CreateRequest) -> str | None:
        if not request.HasField("conversation"):
            return None
        param = request.conversation
        conversation_id = ids.no_nul(param.id if param.WhichOneof("conversation") == "id" else param.ref.id,
                                    "conversation")
        if not conversation_id.startswith(f"{ids.CONVERSATION}_"):
            raise InvalidArgument("conversation", f"Invalid conversation ID '{conversation_id}'. "
                                                  "Expected an ID that begins with 'conv_'.")
        return conversation_id

    async def _transcript(self, owner: str, response_id: str
                          ) -> tuple[list[it.ResponseItem], int, tuple[str, ...]]:
        """Every item up to and including a stored response's output, its chain of previous
        responses first. An id of no stored response is a bad argument, as OpenAI has it (400
        previous_response_not_found); an ancestor deleted since is skipped (with its own
        ancestors: the chain is broken there), on every replica alike: a cached transcript
        whose ancestors are not all still stored is read again from the store. With the
        items, their weight in the cache and the ids of the responses they come from."""
        head = await self.store.get(owner, response_id)
        if head is None or not head.store:
            raise InvalidArgument("previous_response_id",
                                  f"Previous response with id '{response_id}' not found.",
                                  reason="PREVIOUS_RESPONSE_NOT_FOUND")
        if status_name(head.status) in RUNNING:  # its output is not there yet
            message = (f"Previous response with id '{response_id}' is still "
                       f"{status_name(head.status).replace('_', ' ')}; retry when it has ended.")
            raise FailedPrecondition(message, reason="PREVIOUS_RESPONSE_RUNNING",
                                     field_violations=[("previous_response_id", message)])
        parts: list[Sequence[it.ResponseItem]] = []
        chain: list[Sequence[str]] = []
        weight = 0
        current: rt.Response | None = head
        while current is not None:
            cached = self._transcripts.get((owner, current.id))
            if cached is not None:
                # Another replica may have deleted one of its ancestors since it was cached.
                ancestors = cached.chain[:-1]
                if not ancestors or len(await self.store.existing(owner, ancestors)) == len(ancestors):
                    parts.append(cached.items)
                    chain.append(cached.chain)
                    weight += self._transcripts.weight_of((owner, current.id)) or 0
                    break
                self._transcripts.pop((owner, current.id))
            parts.append([*(await self.store.input_items(owner, current.id) or []), *current.output])
            chain.append((current.id,))
            weight += response_items.weight(parts[-1])
            if not current.HasField("previous_response_id"):
                break
            current = await self.store.get(owner, current.previous_response_id)
        return ([item for part in reversed(parts) for item in part], weight,
                tuple(id_ for ids_ in reversed(chain) for id_ in ids_))

    def _remember(self, state: ResponseState) -> None:
        key = (state.owner, state.response.id)
        own = (*state.input, *state.response.output)
        if state.response.HasField("conversation"):
            # A chain off it starts with its own items, as _transcript reads them from the
            # store: the conversation's earlier items are the conversation's, not the chain's.
            self._transcripts.put(key, _Transcript(own, (state.response.id,)), response_items.weight(own))
            return
        transcript = _Transcript((*state.history, *own), (*state.history_chain, state.response.id))
        self._transcripts.put(key, transcript, state.history_weight + response_items.weight(own))

    async def _conversation_items(self, owner: str, conversation_id: str) -> list[it.ResponseItem]:
        """All the conversation's items, oldest first (no cap)."""
        loaded: list[it.ResponseItem] = []
        cursor = Cursor()
        while True:
            found = await self.conversations.list_items(owner, conversation_id, cursor, CONVERSATION_PAGE,
                                                        descending=False)
            if found is None:
                raise NotFound("conversation", conversation_id, field="conversation")
            page_items, page = found
            loaded.extend(page_items)
            if not page.has_more or page.next_cursor is None:
                return loaded
            cursor = page.next_cursor

    async def _forget_when_ended(self, run: Run) -> None:
        await run.ended.wait()
        try:
            await self.store.delete(run.owner, run.run_id)
        except Exception as error:  # noqa: BLE001 - left behind: recovery deletes it (store=false)
            log_failure(log, error, "response %s (store=false) could not be deleted", run.run_id)

    # ------------------------------------------------------------------ the loop

    async def _produce(self, state: ResponseState, run: Run) -> None:
        response = state.response
        await run.emit(_event(created=_snapshot(response)))
        queued = response.status == QUEUED
        if queued:  # as OpenAI streams a background response: created, queued, in_progress
            await run.emit(_event(queued=_snapshot(response)))
            response.status = IN_PROGRESS
        await run.emit(_event(in_progress=_snapshot(response)))
        if queued:  # pollers see it start
            await run.flush(also=self.store.update_work(state.owner, response))
        if violation := await self._guard(state, state.messages, "input"):
            return await self._refuse(state, run, violation)
        rounds = 0
        while True:
            completion, server_calls, client_calls = await self._infer(state, run)
            if isinstance(completion, ShieldViolation):
                return await self._refuse(state, run, completion)
            if completion.finish_reason == "length":
                return await self._finish(state, run, rt.RESPONSE_INCOMPLETE_REASON_MAX_OUTPUT_TOKENS)
            for call in server_calls:
                await self._run_web_search(state, run, call)
            if not server_calls or client_calls:
                return await self._finish(state, run)
            rounds += 1
            if rounds >= state.plan.max_infer_iters:
                return await self._finish(state, run, rt.RESPONSE_INCOMPLETE_REASON_MAX_INFER_ITERS)
            # An item boundary: the response so far is kept before the next model call.
            await run.flush(also=self.store.update_work(state.owner, response))

    async def _guard(self, state: ResponseState, messages: Sequence[ChatMessage],
                     what: str) -> ShieldViolation | None:
        """The request's guardrails over `messages` (the shield ids were checked at create):
        the violation that blocks, else None; a non-blocking one is only logged."""
        if not state.plan.guardrails:
            return None
        found = await self.shields.check(state.plan.guardrails, messages)
        if found is not None and not found.blocking:
            log.info("response %s: guardrail %s found a %s-level violation in the %s (not blocking)",
                     state.response.id, found.shield_id, found.level, what)
            return None
        return found

    async def _refuse(self, state: ResponseState, run: Run, violation: ShieldViolation) -> None:
        """A guardrail blocked: the response completes with one more output item, an assistant
        message whose only part is the refusal, streamed as OpenAI streams a refusal. Items
        finished before the blocked model call (earlier rounds' checked text, web searches)
        stay: the client has them, and output_index stays the position in output."""
        response = state.response
        log.info("response %s: guardrail %s blocked it", response.id, violation.shield_id)
        _end_unfinished(response)  # function calls the blocked model call had begun
        text = refusal_text(violation.user_message, violation.shield_id)
        item_id, index = ids.new_id("msg"), len(response.output)
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        item = it.ResponseItem(message=it.ResponseMessage(
            id=item_id, role=it.RESPONSE_MESSAGE_ROLE_ASSISTANT, status=ITEM_IN_PROGRESS,
            content=it.ResponseMessageContent(parts=it.ResponseContentPartList())))
        await run.emit(_event(output_item_added=ev.ResponseOutputItemEvent(output_index=index,
                                                                           item=_copy(item))))
        await run.emit(_event(content_part_added=ev.ResponseContentPartEvent(
            part=it.ResponseContentPart(refusal=it.ResponseRefusal()), **where)))
        await run.emit(_event(refusal_delta=ev.ResponseContentDeltaEvent(delta=text, **where)))
        await run.emit(_event(refusal_done=ev.ResponseRefusalDoneEvent(refusal=text, **where)))
        part = it.ResponseContentPart(refusal=it.ResponseRefusal(refusal=text))
        await run.emit(_event(content_part_done=ev.ResponseContentPartEvent(part=part, **where)))
        item.message.status = ITEM_COMPLETED
        item.message.content.parts.parts.append(part)
        response.output.append(item)
        await run.emit(_event(output_item_done=ev.ResponseOutputItemEvent(output_index=index,
                                                                          item=_copy(item))))
        await self._finish(state, run)

    async def _infer(self, state: ResponseState,
                     run: Run) -> tuple[Completion | ShieldViolation, list[ToolCall], bool]:
        """One model call, streamed as output items (see the module docstring). Returns the
        completion, the calls of tools agentd runs, and whether the model called client
        functions; or the guardrail violation that blocked the call's text (nothing of it
        emitted; the model's stream is closed)."""
        plan, response = state.plan, state.response
        max_tokens = None
        if plan.max_output_tokens is not None:  # over the whole response
            max_tokens = max(plan.max_output_tokens - state.usage.output_tokens, 1)
        request = ChatRequest(
            model=response.model, messages=state.messages, tools=plan.specs,
            tool_choice=plan.tool_choice if plan.specs else None,
            parallel_tool_calls=plan.parallel_tool_calls if plan.specs else None,
            temperature=plan.temperature, top_p=plan.top_p, max_tokens=max_tokens,
            response_format=plan.response_format, timeout_s=state.timeout_s())
        completion = Completion()
        message: _OpenMessage | None = None
        calls: dict[int, tuple[str, int]] = {}  # chunk index -> (item id, output_index)
        await run.let_consumers_send()
        async with contextlib.aclosing(plan.provider.stream_chat(request)) as chunks:
            async for chunk in chunks:
                for piece in completion.feed(chunk):
                    if isinstance(piece, str):
                        if message is None:
                            message = _OpenMessage(response, held=bool(plan.guardrails))
                        await message.add(response, run, piece)
                        continue
                    if piece.call.name in plan.server_tools:  # no events until it runs
                        continue
                    if piece.started:
                        if message is not None:  # the answer text ends where the calls begin
                            if violation := await self._end_text(state, run, message, ITEM_COMPLETED):
                                return violation, [], False
                            message = None
                        calls[piece.call.index] = await self._open_call(response, run, piece)
                    if piece.fragment:
                        item_id, index = calls[piece.call.index]
                        await run.emit(_event(function_call_arguments_delta=ev.ResponseArgumentsDeltaEvent(
                            item_id=item_id, output_index=index, delta=piece.fragment)))
        cut = completion.finish_reason == "length"
        status = ITEM_INCOMPLETE if cut else ITEM_COMPLETED
        if completion.usage is not None:
            usage = state.usage
            usage.input_tokens += completion.usage.input_tokens
            usage.output_tokens += completion.usage.output_tokens
            usage.total_tokens += completion.usage.total_tokens
            response.usage.CopyFrom(usage)
        if message is not None and (violation := await self._end_text(state, run, message, status)):
            return violation, [], False
        tool_calls, server_calls = [], []
        for call in completion.calls_in_order():
            if call.name in plan.server_tools:
                server_calls.append(ToolCall(id=call.id or ids.new_id("call"), name=call.name,
                                             arguments=call.arguments or "{}"))
                tool_calls.append(server_calls[-1])
                continue
            item_id, index = calls[call.index]
            item = response.output[index]
            item.function_call.arguments = call.arguments or "{}"
            item.function_call.status = status
            await run.emit(_event(function_call_arguments_done=ev.ResponseArgumentsDoneEvent(
                item_id=item_id, output_index=index, arguments=item.function_call.arguments)))
            await run.emit(_event(output_item_done=ev.ResponseOutputItemEvent(
                output_index=index, item=_copy(item))))
            tool_calls.append(ToolCall(id=item.function_call.call_id, name=call.name,
                                       arguments=item.function_call.arguments))
        state.messages.append(ChatMessage(role="assistant", content=completion.text or None,
                                          tool_calls=tuple(tool_calls)))
        return completion, server_calls, bool(calls)

    async def _run_web_search(self, state: ResponseState, run: Run, call: ToolCall) -> None:
        """One web search the model asked for, as a web_search_call item; its result goes to
        the model. Beyond max_tool_calls it is not run (the model is told so)."""
        limit = state.plan.max_tool_calls
        if limit is not None and state.tool_calls_run >= limit:
            state.messages.append(ChatMessage(role="tool", tool_call_id=call.id, content=(
                "Not run: this response reached its max_tool_calls; answer with what you have.")))
            return
        state.tool_calls_run += 1
        response = state.response
        arguments = arguments_object(call.arguments)
        query = arguments.get("query") if arguments is not None else None
        item_id, index = ids.new_id("ws"), len(response.output)
        item = it.ResponseItem(web_search_call=it.ResponseWebSearchCall(
            id=item_id, status=ITEM_IN_PROGRESS, action=it.ResponseWebSearchAction(
                search=it.ResponseWebSearchActionSearch(query=query) if isinstance(query, str)
                else it.ResponseWebSearchActionSearch())))
        response.output.append(item)
        item = response.output[index]  # (append copied it)
        progress = ev.ResponseItemProgressEvent(item_id=item_id, output_index=index)
        await run.emit(_event(output_item_added=ev.ResponseOutputItemEvent(output_index=index,
                                                                           item=_copy(item))))
        await run.emit(_event(web_search_call_in_progress=progress))
        await run.emit(_event(web_search_call_searching=progress))
        if arguments is None:
            content, failed = f"The arguments are not a JSON object: {call.arguments}", True
        else:
            result = await state.plan.server_tools[call.name].invoke(arguments, session_id=response.id)
            content, failed = result.content, result.error_message is not None
        item.web_search_call.status = it.RESPONSE_ITEM_STATUS_FAILED if failed else ITEM_COMPLETED
        await run.emit(_event(web_search_call_completed=progress))
        await run.emit(_event(output_item_done=ev.ResponseOutputItemEvent(output_index=index,
                                                                          item=_copy(item))))
        state.messages.append(ChatMessage(role="tool", content=content, tool_call_id=call.id))

    async def _end_text(self, state: ResponseState, run: Run, message: _OpenMessage,
                        status: int) -> ShieldViolation | None:
        """The model call's text is complete: the guardrails check it (with the conversation
        it answers, as the turn's output shields do) before its output_text.done, so a held
        message is released (or refused) whole. Returns the blocking violation, else closes
        the message."""
        if state.plan.guardrails:
            answer = ChatMessage(role="assistant", content=message.text)
            if violation := await self._guard(state, [*state.messages, answer], "output"):
                return violation
        await message.close(state.response, run, status)
        return None

    @staticmethod
    async def _open_call(response: rt.Response, run: Run, piece: CallPiece) -> tuple[str, int]:
        item_id, index = ids.new_id("fc"), len(response.output)
        item = it.ResponseItem(function_call=it.ResponseFunctionCall(
            id=item_id, call_id=piece.call.id or ids.new_id("call"), name=piece.call.name, arguments="",
            status=ITEM_IN_PROGRESS))
        response.output.append(item)
        await run.emit(_event(output_item_added=ev.ResponseOutputItemEvent(output_index=index,
                                                                           item=_copy(item))))
        return item_id, index

    async def _finish(self, state: ResponseState, run: Run, incomplete: int | None = None) -> None:
        """The terminal event (response.completed, or response.incomplete for the reason
        given), after the conversation is synced; the response stored with it."""
        response = state.response
        if incomplete is None:
            response.status = COMPLETED
            response.completed_at = now_micros() // 1_000_000
        else:
            response.status = INCOMPLETE
            response.incomplete_details.reason = incomplete
        if response.HasField("conversation"):
            added = [*state.input, *response.output]
            if await self.conversations.append_items(state.owner, response.conversation.id, added) is None:
                raise NotFound("conversation", response.conversation.id)  # deleted while it ran
        self._remember(state)
        terminal = (_event(completed=_snapshot(response)) if response.status == COMPLETED
                    else _event(incomplete=_snapshot(response)))
        await run.emit(terminal, also=self.store.update_work(state.owner, response))

    def _on_stop(self, state: ResponseState):
        """What ends a run that stopped without its terminal event (runs.py: on_stop)."""

        async def on_stop(run: Run, reason: StopReason, error: BaseException | None) -> None:
            response = state.response
            if reason == "cancelled":
                response.status = CANCELLED
            elif reason == "interrupted":
                _interrupt(response)
            else:
                code, message = "server_error", "The response failed: internal server error."
                if isinstance(error, AgentdError):
                    code, message = _ERROR_CODES.get(error.reason, "server_error"), error.message
                _fail(response, code, message)
            _end_unfinished(response)
            failed = _event(failed=_snapshot(response))
            try:
                await run.emit(failed, also=self.store.update_work(state.owner, response))
            except Exception as error:  # noqa: BLE001 - the stream still ends with response.failed
                log_failure(log, error, "response %s: its end could not be stored", response.id)
                # Kept with the event, whenever it is (Runs._keep_later); a store=false one
                # stays running, so that recovery deletes it once its lease is over.
                if response.store:
                    run.write_with_next_flush(self.store.update_work(state.owner, response, if_running=True))
                await run.emit(failed)  # (the failed emit took it back: it is numbered anew)

        return on_stop

    # ------------------------------------------------------------------ the other RPCs

    async def get(self, owner: str, response_id: str) -> rt.Response:
        """A stored response (also one still running). NOT_FOUND if none (or store=false)."""
        response = await self.store.get(owner, response_id)
        if response is None or not response.store:
            raise NotFound("response", response_id)
        return response

    async def follow(self, owner: str, response_id: str,
                     starting_after: int | None) -> AsyncIterator[ev.ResponseStreamEvent]:
        """StreamResponseEvents: the kept events after `starting_after`, then the live ones,
        to the terminal event. Never cancels the response."""
        await self.get(owner, response_id)
        return self._follow_checked(owner, response_id, starting_after)

    def _follow_checked(self, owner: str, response_id: str,
                        starting_after: int | None) -> AsyncIterator[ev.ResponseStreamEvent]:
        async def still_running() -> bool:
            return await self.store.status(owner, response_id) in RUNNING

        return self.runs.attach(owner, response_id, kind=RESPONSES, starting_after=starting_after,
                                still_running=still_running)

    async def cancel(self, owner: str, response_id: str) -> rt.Response:
        """CancelResponse: a running response is stopped (its on_stop stores it cancelled and
        emits response.failed), here or by the live replica that runs it. One stored as
        running that no live replica runs (left by a crash) is ended directly. A cancelled
        one is answered as it is; one that ended otherwise: FAILED_PRECONDITION
        (RESPONSE_NOT_CANCELLABLE)."""
        response = await self.get(owner, response_id)
        run = self.runs.get(owner, response_id)
        if run is not None and run.terminal is None:
            await self.runs.cancel(owner, response_id)
            return await self.get(owner, response_id)
        if response.status == CANCELLED:
            return response
        if status_name(response.status) not in RUNNING:
            raise FailedPrecondition(f"Cannot cancel a response that has {status_name(response.status)}: "
                                     f"only queued or in-progress responses can be cancelled.",
                                     reason="RESPONSE_NOT_CANCELLABLE")
        if await self._cancelled_elsewhere(owner, response):
            return await self.get(owner, response_id)
        await self.get(owner, response_id)  # NOT_FOUND if a delete came meanwhile
        last = await self.runs.store.last_sequence(owner, response_id)
        response.status = CANCELLED

        async def produce(run: Run) -> None:
            await run.emit(_event(failed=_snapshot(response)), also=self.store.update_work(owner, response))

        await self.runs.start(owner, response_id, produce, kind=RESPONSES, background=True,
                              first_sequence=last + 1).wait()
        return response

    async def _cancelled_elsewhere(self, owner: str, response: rt.Response) -> bool:
        """A response another live replica runs: asks it to cancel the response (stored as
        cancelled at once) and waits for its end (Leases.stop_elsewhere). False if no live
        replica runs it, or it did not end in time: the caller ends it itself."""
        cancelled = rt.Response()
        cancelled.CopyFrom(response)
        cancelled.status = CANCELLED
        _end_unfinished(cancelled)
        return await self.leases.stop_elsewhere(owner, response.id,
                                                lambda: self.store.request_cancel(owner, cancelled))

    async def delete(self, owner: str, response_id: str) -> None:
        """Deletes a stored response (a running one is cancelled first, here or by the live
        replica that runs it, so its run writes nothing after the delete). NOT_FOUND if none."""
        response = await self.get(owner, response_id)
        if await self.runs.cancel(owner, response_id) is None and status_name(response.status) in RUNNING:
            await self._cancelled_elsewhere(owner, response)
        if not await self.store.delete(owner, response_id):
            raise NotFound("response", response_id)
        self._transcripts.pop((owner, response_id))

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        """DeleteConversation: the conversation and its items go, then its running response
        (one at most) is cancelled, here or by the replica that runs it, rather than running
        on to an end it could no longer keep. False if there was no such conversation."""
        if not await self.conversations.delete(owner, conversation_id):
            return False
        response_id = await self.store.running_on_conversation(owner, conversation_id)
        # As delete() stops a run, store=false ones too (which CancelResponse cannot name);
        # one no live replica runs is ended by recovery when its lease expires.
        if response_id is not None and await self.runs.cancel(owner, response_id) is None:
            response = await self.store.get(owner, response_id)
            if response is not None and status_name(response.status) in RUNNING:
                await self._cancelled_elsewhere(owner, response)
        return True

    async def input_items(self, owner: str, response_id: str, cursor: Cursor, limit: int,
                          descending: bool) -> tuple[list[it.ResponseItem], Page]:
        """A page of a stored response's own input items. NOT_FOUND if none."""
        await self.get(owner, response_id)
        found = await self.store.input_items_page(owner, response_id, cursor, limit, descending)
        if found is None:
            raise NotFound("response", response_id)
        return found


class _OpenMessage:
    """The assistant message being streamed: its item and the text so far.

    A held message (the response names guardrails) emits nothing, not even its
    output_item.added, until `close`, once the guardrails passed its whole text: a client
    never sees text a guardrail then refuses, and one check per model call suffices (Llama
    Stack checks after every chunk and still shows what came before the flagged chunk). The
    price: a guarded response's text arrives when the model call's text is complete, in the
    same events, not token by token."""

    def __init__(self, response: rt.Response, *, held: bool):
        self.item_id = ids.new_id("msg")
        self.output_index = len(response.output)
        self.held = held
        self.opened = False
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def add(self, response: rt.Response, run: Run, text: str) -> None:
        self.parts.append(text)
        if not self.held:
            if not self.opened:
                await self._open(response, run)
            await self._delta(run, text)

    async def _open(self, response: rt.Response, run: Run) -> None:
        self.opened = True
        item = it.ResponseItem(message=it.ResponseMessage(
            id=self.item_id, role=it.RESPONSE_MESSAGE_ROLE_ASSISTANT, status=ITEM_IN_PROGRESS,
            content=it.ResponseMessageContent(parts=it.ResponseContentPartList())))
        response.output.append(item)
        await run.emit(_event(output_item_added=ev.ResponseOutputItemEvent(
            output_index=self.output_index, item=_copy(item))))
        await run.emit(_event(content_part_added=ev.ResponseContentPartEvent(
            item_id=self.item_id, output_index=self.output_index, content_index=0,
            part=it.ResponseContentPart(output_text=it.ResponseOutputText()))))

    async def _delta(self, run: Run, text: str) -> None:
        await run.emit(_event(output_text_delta=ev.ResponseOutputTextDeltaEvent(
            item_id=self.item_id, output_index=self.output_index, delta=text)))

    async def close(self, response: rt.Response, run: Run, status: int) -> None:
        if not self.opened:  # held until now: what it held, as it came
            await self._open(response, run)
            for text in self.parts:
                await self._delta(run, text)
        text = self.text
        where = {"item_id": self.item_id, "output_index": self.output_index, "content_index": 0}
        part = it.ResponseContentPart(output_text=it.ResponseOutputText(text=text))
        await run.emit(_event(output_text_done=ev.ResponseOutputTextDoneEvent(text=text, **where)))
        await run.emit(_event(content_part_done=ev.ResponseContentPartEvent(part=part, **where)))
        item = response.output[self.output_index]
        item.message.status = status
        item.message.content.parts.parts.append(part)
        await run.emit(_event(output_item_done=ev.ResponseOutputItemEvent(
            output_index=self.output_index, item=_copy(item))))


def _zero_usage() -> rt.ResponseUsage:
    """No tokens yet, with both breakdowns present: OpenAI always sends them (the SDK's
    ResponseUsage requires them), with zeros where the provider reports nothing."""
    usage = rt.ResponseUsage()
    usage.input_tokens_details.SetInParent()
    usage.output_tokens_details.SetInParent()
    return usage


def _end_unfinished(response: rt.Response) -> None:
    """What was still streaming when the response ended stays unfinished."""
    for item in response.output:
        body = getattr(item, item.WhichOneof("item"))
        if body.status == ITEM_IN_PROGRESS:
            body.status = ITEM_INCOMPLETE


def _fail(response: rt.Response, code: str, message: str) -> None:
    response.status = FAILED
    response.error.CopyFrom(rt.ResponseError(code=code, message=message))


def _interrupt(response: rt.Response) -> None:
    """A response whose run the server stopped (shutdown, or a crash found by recover)."""
    _fail(response, "server_error", "The server stopped while the response ran; create it again.")


def _conversation_locked() -> FailedPrecondition:
    # OpenAI's words and code for it.
    return FailedPrecondition("Another process is currently operating on this conversation. "
                              "Please retry in a few seconds.", reason="CONVERSATION_LOCKED")


def _function_spec(tool: tools_pb.ResponseTool, where: str) -> ToolSpec:
    """A function tool as the model sees it; the server-side tools agentd does not run yet
    (file_search, mcp) are INVALID_ARGUMENT naming the tool."""
    kind = tool.WhichOneof("tool")
    if kind != "function":
        raise InvalidArgument(where, f"{kind} tools are not available on this server yet; "
                                     f"only function tools can be used")
    function = tool.function
    if not _FUNCTION_NAME.fullmatch(function.name):
        raise InvalidArgument(f"{where}.name", "expected a string that matches the pattern "
                                               "'^[a-zA-Z0-9_-]{1,64}$'")
    parameters = (codec.to_json(function.parameters) if function.HasField("parameters")
                  else {"type": "object", "properties": {}})
    if parameters.get("type", "object") != "object":
        raise InvalidArgument(f"{where}.parameters", f"Invalid schema for function '{function.name}': "
                              f"schema must be a JSON Schema of 'type: \"object\"'")
    return ToolSpec(name=function.name,
                    description=function.description if function.HasField("description") else "",
                    parameters=parameters,
                    strict=function.strict if function.HasField("strict") else None)


def _tool_choice(request: CreateRequest, names: set[str]) -> str | None:
    """The provider-neutral tool_choice ("auto", "none", "required" or a function's name)."""
    if not request.HasField("tool_choice"):
        return None
    choice = request.tool_choice
    if choice.WhichOneof("tool_choice") == "mode":
        mode = choice.mode
        return {tools_pb.RESPONSE_TOOL_CHOICE_MODE_NONE: "none",
                tools_pb.RESPONSE_TOOL_CHOICE_MODE_AUTO: "auto",
                tools_pb.RESPONSE_TOOL_CHOICE_MODE_REQUIRED: "required"}.get(mode)
    kind = choice.choice.WhichOneof("choice")
    if kind != "function":
        raise InvalidArgument("tool_choice", f"{kind} tool choices are not supported yet")
    name = choice.choice.function.name
    if name not in names:
        raise InvalidArgument("tool_choice", f"names the function '{name}', which is not in tools")
    return name


def _response_format(text: text_pb.ResponseTextConfig) -> dict[str, Any] | None:
    """The chat response_format of `text.format` (None: free text, and nothing is sent,
    since some providers refuse response_format next to tools)."""
    kind = text.format.WhichOneof("format")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        return None
    fmt = text.format.json_schema
    schema: dict[str, Any] = {"name": fmt.name, "schema": codec.to_json(fmt.schema)}
    if fmt.HasField("description"):
        schema["description"] = fmt.description
    if fmt.HasField("strict"):
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _echo(request: CreateRequest, plan: Plan, *, background: bool, store: bool) -> rt.Response:
    """The new response: the request's settings echoed as OpenAI does, with the defaults
    written out."""
    response = rt.Response(
        id=ids.new_id(ids.RESPONSE), created_at=now_micros() // 1_000_000,
        status=QUEUED if background else IN_PROGRESS, model=request.model, tools=request.tools,
        metadata=request.metadata, store=store, background=background, service_tier="default",
        parallel_tool_calls=not request.HasField("parallel_tool_calls") or request.parallel_tool_calls,
        truncation=request.truncation or rt.RESPONSE_TRUNCATION_DISABLED)
    # max_infer_iters (Llama Stack's extension, unknown to OpenAI) is echoed only when the
    # request set it, so a plain OpenAI request gets no key the SDK does not declare.
    for name in ("instructions", "previous_response_id", "temperature", "top_p", "max_output_tokens",
                 "max_tool_calls", "user", "top_logprobs", "safety_identifier", "prompt_cache_key",
                 "max_infer_iters"):
        if request.HasField(name):
            setattr(response, name, getattr(request, name))
    if request.HasField("tool_choice"):
        response.tool_choice.CopyFrom(request.tool_choice)
    else:
        response.tool_choice.mode = tools_pb.RESPONSE_TOOL_CHOICE_MODE_AUTO
    response.text.CopyFrom(request.text)
    if not response.text.HasField("format"):
        response.text.format.text.SetInParent()
    response.reasoning.CopyFrom(request.reasoning)
    return response
