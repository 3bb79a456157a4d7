"""What every call of the client does, written once for the generated service classes
(_services.py): metadata (bearer token, request id, extra pairs), the deadline, errors raised
as AgentdError, and server streams as iterators that remember the last sequence number."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import grpc

from agentd_client.errors import REQUEST_ID_KEY, error_from_rpc, metadata_value

T = TypeVar("T")
Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class CallDefaults:
    """What a client adds to each call: its token, its extra metadata, and a deadline for
    unary calls (streams run as long as their turn or response unless a call sets one)."""

    token: str | None = None
    timeout: float | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    def metadata_for(self, request_id: str | None, metadata: Metadata) -> list[tuple[str, str]]:
        pairs = list(self.metadata)
        if self.token:
            pairs.append(("authorization", f"Bearer {self.token}"))
        if request_id:
            pairs.append((REQUEST_ID_KEY, request_id))
        return pairs + list(metadata)


def _sequence_number(item: Any) -> int | None:
    return getattr(item, "sequence_number", None)


class _Stream(Generic[T]):
    def __init__(self, call, unwrap: str | None):
        self._call = call
        self._unwrap = unwrap
        self.last_sequence_number: int | None = None

    def _item(self, response) -> T:
        item = getattr(response, self._unwrap) if self._unwrap else response
        self.last_sequence_number = _sequence_number(item)
        return item

    def cancel(self) -> None:
        self._call.cancel()


class EventStream(_Stream[T]):
    """The events of a server stream (a TurnEvent, a ResponseStreamEvent), as they arrive.

    Iterate it; a failure raises AgentdError. `last_sequence_number` is the number of the
    last event delivered: after a dropped stream, re-attach with `starting_after` set to it
    (StreamTurnEvents, StreamResponseEvents) and miss nothing. Leaving a `with` block (or
    `cancel()`) ends the call.
    """

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            response = next(self._call)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        return self._item(response)

    def request_id(self) -> str | None:
        """The call's request id, from the server's initial metadata (waits for it)."""
        return metadata_value(self._call.initial_metadata(), REQUEST_ID_KEY)

    def __enter__(self) -> EventStream[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class AsyncEventStream(_Stream[T]):
    """EventStream for asyncio: `async for event in stream`."""

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            response = await self._call.read()
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        if response is grpc.aio.EOF:
            raise StopAsyncIteration
        return self._item(response)

    async def request_id(self) -> str | None:
        return metadata_value(await self._call.initial_metadata(), REQUEST_ID_KEY)

    async def __aenter__(self) -> AsyncEventStream[T]:
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()


class _ServiceBase:
    _stub_type: ClassVar[type]

    def __init__(self, channel, defaults: CallDefaults):
        self._stub = self._stub_type(channel)
        self._defaults = defaults

    def _options(self, timeout: float | None, request_id: str | None, metadata: Metadata,
                 unary: bool) -> dict[str, Any]:
        if timeout is None and unary:
            timeout = self._defaults.timeout
        return {"timeout": timeout, "metadata": self._defaults.metadata_for(request_id, metadata)}


class Service(_ServiceBase):
    """The blocking form of a service (grpc channel)."""

    def _unary(self, method, request, timeout: float | None, request_id: str | None, metadata: Metadata):
        try:
            return method(request, **self._options(timeout, request_id, metadata, unary=True))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def _stream(self, method, request, unwrap: str | None, timeout: float | None,
                request_id: str | None, metadata: Metadata) -> EventStream:
        return EventStream(method(request, **self._options(timeout, request_id, metadata, unary=False)),
                           unwrap)


class AsyncService(_ServiceBase):
    """The asyncio form of a service (grpc.aio channel)."""

    async def _unary(self, method, request, timeout: float | None,  # noqa: ASYNC109 - the gRPC deadline
                     request_id: str | None, metadata: Metadata):
        try:
            return await method(request, **self._options(timeout, request_id, metadata, unary=True))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def _stream(self, method, request, unwrap: str | None, timeout: float | None,
                request_id: str | None, metadata: Metadata) -> AsyncEventStream:
        return AsyncEventStream(
            method(request, **self._options(timeout, request_id, metadata, unary=False)), unwrap)
