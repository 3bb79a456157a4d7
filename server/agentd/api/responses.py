"""ResponsesService: responses run by the response engine (engine/responses)."""

from __future__ import annotations

import contextlib

from agentd import paging
from agentd.api.fields import no_nul, request_id_of, starting_after_of
from agentd.api.stream_events import event_response
from agentd.context import principal
from agentd.engine.items import check_include
from agentd.engine.responses import ResponseEngine
from agentd.engine.runs import RESPONSES, run_to_end
from agentd.v1 import common_pb2, responses_pb2_grpc
from agentd.v1 import responses_pb2 as pb

# ListResponses gives 50 by default (Llama Stack's list; OpenAI has none), input items
# OpenAI's 20; both at most 100, as every OpenAI list.
RESPONSES_PAGE = 50


def _response_id(request) -> str:
    return no_nul(request.response_id, "response_id")


class ResponsesServicer(responses_pb2_grpc.ResponsesServiceServicer):
    def __init__(self, engine: ResponseEngine):
        self.engine = engine

    async def _start(self, request, context):
        return await self.engine.start(principal.get(), request, request_id=request_id_of(request),
                                       timeout_s=context.time_remaining())

    async def CreateResponse(self, request: pb.CreateResponseRequest, context) -> pb.CreateResponseResponse:
        started = await self._start(request, context)
        if started.response.background:  # runs on without the caller: poll or re-attach
            return pb.CreateResponseResponse(response=started.response)
        terminal = await run_to_end(started.events(), RESPONSES)
        if terminal is None:  # on_stop ends a response's stream with response.failed, stored or not
            raise RuntimeError("the response's stream ended without its terminal event")
        return pb.CreateResponseResponse(response=getattr(terminal, terminal.WhichOneof("event")).response)

    async def StreamResponse(self, request: pb.StreamResponseRequest, context):
        started = await self._start(request, context)
        events = started.events()
        async with contextlib.aclosing(events):
            async for event in events:
                yield event_response(pb.StreamResponseResponse, event)

    async def GetResponse(self, request: pb.GetResponseRequest, context) -> pb.GetResponseResponse:
        check_include(request.include)
        return pb.GetResponseResponse(response=await self.engine.get(principal.get(), _response_id(request)))

    async def StreamResponseEvents(self, request: pb.StreamResponseEventsRequest, context):
        check_include(request.include)
        events = await self.engine.follow(
            principal.get(), _response_id(request),
            starting_after_of(request))
        async with contextlib.aclosing(events):
            async for event in events:
                yield event_response(pb.StreamResponseEventsResponse, event)

    async def CancelResponse(self, request: pb.CancelResponseRequest, context) -> pb.CancelResponseResponse:
        response = await self.engine.cancel(principal.get(), _response_id(request))
        return pb.CancelResponseResponse(response=response)

    async def ListResponses(self, request: pb.ListResponsesRequest, context) -> pb.ListResponsesResponse:
        owner = principal.get()
        limit = paging.openai_limit(request.page_size, default=RESPONSES_PAGE)
        responses, page = await self.engine.store.list(
            owner, paging.decode(request.page_token), limit,
            descending=request.order != common_pb2.SORT_ORDER_ASC,
            model=request.model if request.HasField("model") else None)
        listed = [r for r in responses if r.store]  # store=false ones run, then go: never listed
        inputs = await self.engine.store.inputs_of(owner, [r.id for r in listed])
        data = [pb.ResponseWithInput(response=r, input=inputs.get(r.id, [])) for r in listed]
        return pb.ListResponsesResponse(
            data=data, has_more=page.has_more, next_page_token=page.next_page_token,
            first_id=data[0].response.id if data else "", last_id=data[-1].response.id if data else "")

    async def DeleteResponse(self, request: pb.DeleteResponseRequest, context) -> pb.DeleteResponseResponse:
        response_id = _response_id(request)
        await self.engine.delete(principal.get(), response_id)
        return pb.DeleteResponseResponse(id=response_id, deleted=True)

    async def ListResponseInputItems(self, request: pb.ListResponseInputItemsRequest,
                                     context) -> pb.ListResponseInputItemsResponse:
        check_include(request.include)
        limit = paging.openai_limit(request.page_size)
        cursor = paging.decode(request.page_token)
        items, page = await self.engine.input_items(principal.get(), _response_id(request), cursor, limit,
                                                    descending=request.order != common_pb2.SORT_ORDER_ASC)
        # A `before` page walks towards the start: a token after its last item would lead back.
        token = page.next_page_token if cursor.before is None else ""
        return pb.ListResponseInputItemsResponse(data=items, first_id=page.first_id, last_id=page.last_id,
                                                 has_more=page.has_more, next_page_token=token)

