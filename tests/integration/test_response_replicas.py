"""Responses on several replicas of one database (SQLite file and PostgreSQL), as turns in
test_replicas.py: a replica's recovery leaves alone the responses another live replica runs
(their leases are renewed) and ends those of a replica that died (stored: failed with a kept
response.failed; store=false: deleted); cancel and delete work through any replica."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import httpx

from agentd.context import LOCAL_PRINCIPAL
from agentd.storage import schema
from agentd.v1 import conversations_pb2 as cv
from agentd.v1 import response_events_pb2 as ev
from agentd.v1 import response_resource_pb2 as rt
from agentd.v1 import responses_pb2 as pb
from agentd.v1 import responses_pb2_grpc
from tests.conftest import draining, error_of, running
from tests.fakes.openai_server import Reply
from tests.integration.test_replicas import LEASE_S, dying_replica, expire_lease, short_lease, two
from tests.integration.test_responses import create, stream

HANG = Reply(text="never", hang=True)
INTERRUPTED = "The server stopped while the response ran; create it again."


@contextlib.asynccontextmanager
async def replica(database_url, tmp_path, fake):
    """One in-process replica with a short lease, and a ResponsesService stub to call it."""
    async with running(short_lease(database_url, tmp_path, fake)) as server, \
            grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield server, responses_pb2_grpc.ResponsesServiceStub(channel)


async def started(stub, model) -> tuple[str, grpc.aio.UnaryStreamCall, str]:
    """A background response and a store=false streamed one (its stream left open: closing it
    would cancel it), both waiting on the model. Returns the first's id, the second's
    stream and id."""
    background = (await stub.CreateResponse(create(background=True))).response.id
    call = stub.StreamResponse(stream(store=False))
    async for reply in call:
        unstored = reply.event.created.response.id
        break
    await asyncio.to_thread(model.wait_for_requests, 2, timeout=30)
    return background, call, unstored


def follow(stub, response_id: str, starting_after: int | None = None):
    request = pb.StreamResponseEventsRequest(response_id=response_id)
    if starting_after is not None:
        request.starting_after = starting_after
    return stub.StreamResponseEvents(request)


async def followed(call) -> list[ev.ResponseStreamEvent]:
    """A follow stream's events without heartbeats, within a bound (a regression that never
    ends the stream fails instead of hanging)."""
    async with asyncio.timeout(LEASE_S * 30):
        return [r.event async for r in call if not r.event.HasField("heartbeat")]


async def status_of(server, response_id: str) -> str | None:
    return await server.responses.store.status(LOCAL_PRINCIPAL, response_id)


async def test_a_replica_starting_and_recovering_leaves_the_responses_another_runs(
        database_url, tmp_path, fake):
    fake.script(HANG, HANG)
    async with replica(database_url, tmp_path, fake) as (first, a):
        background, unstored_call, unstored = await started(a, fake)
        async with replica(database_url, tmp_path, fake) as (second, b):
            running_ids = (background, unstored)
            # Recovery at start left them.
            assert [await status_of(second, r) for r in running_ids] == ["in_progress"] * 2
            # Several leases long: the second replica's periodic recovery ran many times
            # meanwhile, the first kept renewing the leases of its live runs.
            await asyncio.sleep(LEASE_S * 3)
            assert [await status_of(second, r) for r in running_ids] == ["in_progress"] * 2
            assert all(first.runs.get(LOCAL_PRINCIPAL, r).terminal is None for r in running_ids)
            # CancelResponse on the replica that does not run it: the one that does stops it.
            following = follow(a, background)
            cancelled = (await b.CancelResponse(pb.CancelResponseRequest(response_id=background))).response
            assert cancelled.status == rt.RESPONSE_STATUS_CANCELLED and not cancelled.HasField("error")
            events = await followed(following)
            assert events[0].HasField("created") and events[-1].failed.response == cancelled
            assert [e.sequence_number for e in events] == list(range(len(events)))  # one numbering
            assert first.runs.get(LOCAL_PRINCIPAL, background) is None  # its run ended there
            assert (await b.GetResponse(pb.GetResponseRequest(response_id=background))).response == cancelled
            assert await status_of(second, unstored) == "in_progress"  # the other one runs on
        unstored_call.cancel()


async def test_the_responses_of_a_replica_that_died_are_ended_by_a_live_one(database_url, tmp_path, fake):
    async with dying_replica(database_url, tmp_path, HANG, HANG) as (channel, model):
        background, _, unstored = await started(responses_pb2_grpc.ResponsesServiceStub(channel), model)
    async with replica(database_url, tmp_path, fake) as (live, stub):
        # Their leases may still run at this start; the periodic recovery then takes them.
        # A follower gets what the dead replica kept, then recovery's response.failed.
        events = await followed(follow(stub, background))
        end = events[-1]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        failed = end.failed.response
        assert failed.status == rt.RESPONSE_STATUS_FAILED
        assert (failed.error.code, failed.error.message) == ("server_error", INTERRUPTED)
        assert (await stub.GetResponse(pb.GetResponseRequest(response_id=background))).response == failed
        # Following again from any point ends the same way: it is kept, not made up per stream.
        assert await followed(follow(stub, background, starting_after=end.sequence_number - 1)) == [end]
        # The store=false one, never retrievable, is deleted (with its events) by that recovery.
        for _ in range(int(LEASE_S * 5 / 0.05)):
            if await live.responses.store.get(LOCAL_PRINCIPAL, unstored) is None:
                break
            await asyncio.sleep(0.05)
        assert await live.responses.store.get(LOCAL_PRINCIPAL, unstored) is None
        assert await live.runs.store.last_sequence(LOCAL_PRINCIPAL, unstored) == -1


async def test_a_response_another_replica_recovered_stops_here(database_url, tmp_path, fake):
    fake.script(HANG)
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (second, _)):
        response_id = (await a.CreateResponse(create(background=True))).response.id
        await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
        run = first.runs.get(LOCAL_PRINCIPAL, response_id)
        # The first replica pauses (no renewal) past its lease: the second recovers the response.
        await first.responses.leases.close()
        await expire_lease(first, schema.responses, response_id)
        await second.responses.recover()  # (or its periodic recovery, if that came first)
        assert await status_of(second, response_id) == "failed"
        # Back from its pause, the first sees that at its next renewal and stops the run; the
        # store keeps the recovery's end.
        await first.responses.leases.start()
        async with asyncio.timeout(LEASE_S * 5):
            await run.wait()
        failed = await second.responses.get(LOCAL_PRINCIPAL, response_id)
        assert failed.status == rt.RESPONSE_STATUS_FAILED and failed.error.message == INTERRUPTED
        kept = [ev.ResponseStreamEvent.FromString(body)
                for _, body in await first.runs.store.read_after(LOCAL_PRINCIPAL, response_id, -1, 100)]
        assert [e.WhichOneof("event") for e in kept].count("failed") == 1
        assert kept[-1].failed.response == failed


async def test_a_replica_never_recovers_the_responses_it_runs_itself(database_url, tmp_path, fake):
    # A database stall can outlast the lease this replica would have renewed.
    fake.script(Reply(text="slow answer", chunk_size=2, chunk_delay=0.1))
    async with replica(database_url, tmp_path, fake) as (server, stub):
        response_id = (await stub.CreateResponse(create(background=True))).response.id
        await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
        await server.responses.leases.close()
        await expire_lease(server, schema.responses, response_id)
        assert await server.responses.recover() == 0
        events = await followed(follow(stub, response_id))
        assert events[-1].HasField("completed")
        assert await status_of(server, response_id) == "completed"


async def test_a_delete_on_one_replica_stops_the_response_another_runs_first(database_url, tmp_path, fake):
    fake.script(HANG)
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (_, b)):
        response_id = (await a.CreateResponse(create(background=True))).response.id
        await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
        await b.DeleteResponse(pb.DeleteResponseRequest(response_id=response_id))
        # The run on the first replica ended (cancelled, its end kept) before the row went.
        assert first.runs.get(LOCAL_PRINCIPAL, response_id) is None
        assert await first.responses.store.get(LOCAL_PRINCIPAL, response_id) is None


async def test_a_chain_whose_middle_was_deleted_elsewhere_gives_every_replica_the_same_history(
        database_url, tmp_path, fake):
    """The replica that built r3 has its transcript cached; once another replica deletes r2,
    it drops r2 and what came before, as a replica with nothing cached does."""
    fake.script(*(Reply(text=f"answer {n}") for n in range(1, 6)))
    async with two(replica, database_url, tmp_path, fake) as ((_, a), (_, b)):
        chain: list[str] = []
        for text in ("one", "two SECRET", "three"):
            fields = {"input": text} | ({"previous_response_id": chain[-1]} if chain else {})
            chain.append((await a.CreateResponse(create(**fields))).response.id)
        await b.DeleteResponse(pb.DeleteResponseRequest(response_id=chain[1]))
        for stub in (a, b):
            await stub.CreateResponse(create(input="four", previous_response_id=chain[2]))
        sent = [[m["content"] for m in request.body["messages"]] for request in fake.chat_requests[-2:]]
        assert sent[0] == sent[1] == ["three", "answer 3", "four"]


async def test_a_cancel_that_meets_a_delete_is_not_found_at_once(database_url, tmp_path, fake):
    """As for turns (test_replicas.py): the replica running it stops renewing, the cancel on
    the other waits for it, and the rows go meanwhile."""
    fake.script(HANG)
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (second, b)):
        response_id = (await a.CreateResponse(create(background=True))).response.id
        await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
        await first.responses.leases.close()
        cancel = asyncio.ensure_future(b.CancelResponse(pb.CancelResponseRequest(response_id=response_id)))
        for _ in range(1000):  # until the cancel has marked the row
            if await status_of(second, response_id) == "cancelled":
                break
            await asyncio.sleep(0.01)
        assert await second.responses.store.delete(LOCAL_PRINCIPAL, response_id)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        code, reason, _ = await error_of(cancel)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESPONSE_NOT_FOUND")
        assert loop.time() - asked < LEASE_S


async def test_followers_of_another_replicas_response_are_told_to_re_attach_when_theirs_stops(
        database_url, tmp_path, fake):
    """Over gRPC UNAVAILABLE SHUTTING_DOWN, over SSE an error event, as soon as the drain
    begins: the response goes on on its own replica, where they can follow it on."""
    fake.script(HANG)
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (second, b)):
        response_id = (await a.CreateResponse(create(background=True))).response.id
        await asyncio.to_thread(fake.wait_for_requests, 1, timeout=30)
        call = follow(b, response_id)
        async for reply in call:
            assert reply.event.HasField("created")
            break
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{second.http_port}", timeout=30) as http, \
                http.stream("GET", f"/v1/responses/{response_id}", params={"stream": "true"}) as sse:
            lines = sse.aiter_lines()
            while not (await anext(lines)).startswith("data:"):
                pass
            async with draining(second):
                code, reason, _ = await error_of(followed(call))
                rest = [line async for line in lines]
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        assert "event: error" in rest and any("re-attach on another replica" in line for line in rest)
        assert first.runs.get(LOCAL_PRINCIPAL, response_id) is not None  # it goes on there


async def test_a_chain_off_a_conversations_response_has_the_same_history_on_every_replica(
        database_url, tmp_path, fake):
    """The chain starts with that response's own items (the conversation's earlier ones are
    the conversation's), on the replica that ran it as on the others."""
    fake.script(*(Reply(text=f"answer {n}") for n in range(1, 5)))
    async with two(replica, database_url, tmp_path, fake) as ((first, a), (_, b)):
        conversation = await first.responses.conversations.create(
            LOCAL_PRINCIPAL, cv.Conversation(id="conv_chain"), [])
        await a.CreateResponse(create(input="one", conversation=conversation.id))
        second = (await a.CreateResponse(create(input="two", conversation=conversation.id))).response.id
        for stub in (a, b):
            await stub.CreateResponse(create(input="three", previous_response_id=second))
        sent = [[m["content"] for m in request.body["messages"]] for request in fake.chat_requests[-2:]]
        assert sent[0] == sent[1] == ["two", "answer 2", "three"]
