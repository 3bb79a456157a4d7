"""agentd's errors as exceptions: the gRPC status code, the message, and the details the
server attaches (google.rpc.Status in the `grpc-status-details-bin` trailer): the ErrorInfo
`reason` catalogued in protos/agentd/v1/errors.proto and BadRequest field violations."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AgentdError",
    "AlreadyExistsError",
    "CancelledError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "TurnFailedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
]  # the exceptions, which the package exports too; error_from_rpc is the call machinery's

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class AgentdError(Exception):
    """A call that ended with a non-OK status. `reason` is the ErrorInfo reason
    (`AGENT_NOT_FOUND`, ...), None when the status carries none (a transport error)."""

    def __init__(self, code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None,
                 request_id: str | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.reason: str | None = None
        self.domain: str | None = None
        self.error_metadata: dict[str, str] = {}
        self.field_violations: list[FieldViolation] = []
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.reason, self.domain, self.error_metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.field_violations += [FieldViolation(v.field, v.description)
                                          for v in bad.field_violations]


class CancelledError(AgentdError): ...
class InvalidArgumentError(AgentdError): ...
class DeadlineExceededError(AgentdError): ...
class NotFoundError(AgentdError): ...
class AlreadyExistsError(AgentdError): ...
class PermissionDeniedError(AgentdError): ...
class ResourceExhaustedError(AgentdError): ...
class FailedPreconditionError(AgentdError): ...
class UnimplementedError(AgentdError): ...
class UnavailableError(AgentdError): ...
class UnauthenticatedError(AgentdError): ...


_BY_CODE: dict[grpc.StatusCode, type[AgentdError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def error_of(code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None,
             request_id: str | None = None) -> AgentdError:
    return _BY_CODE.get(code, AgentdError)(code, message, status, request_id)


def metadata_value(metadata, key: str):
    """The first value of `key` in a call's metadata pairs (initial or trailing), if any."""
    for k, v in metadata or ():
        if k == key:
            return v
    return None


def error_from_rpc(error: grpc.RpcError) -> AgentdError:
    """The exception for a failed call (a sync or an aio RpcError)."""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    raw = metadata_value(trailers, STATUS_DETAILS_KEY)
    status = None
    if raw:
        try:
            status = status_pb2.Status.FromString(raw)
        except Exception:  # noqa: BLE001 - undecodable details: the code and message still tell
            status = None
    request_id = metadata_value(trailers, REQUEST_ID_KEY)
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    return error_of(code, message, status, request_id)


class TurnFailedError(AgentdError):
    """A turn that ended `failed` (its `turn_failed` event): `turn` is the turn as it ended,
    code, message and reason are those of its error."""

    def __init__(self, turn, status: status_pb2.Status):
        code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
        super().__init__(code, status.message, status)
        self.turn = turn
