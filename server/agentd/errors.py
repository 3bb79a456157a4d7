"""Domain errors and their ONE mapping to gRPC status (google.rpc.Status with details).

Engine, storage and servicers raise these; `status_of` turns any exception into a status
with an ErrorInfo (stable `reason`) and, for bad input, a BadRequest listing the offending
fields. The gRPC call pipeline (api/grpc_pipeline.py) sends that status; the HTTP gateway
maps it to an HTTP answer (HTTP_STATUS) in its routes' error style.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "agentd.dev"


class AgentdError(Exception):
    """An error a client can act on. `reason` is stable, UPPER_SNAKE, at most 63 characters."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None,
                 metadata: dict[str, str] | None = None,
                 field_violations: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = metadata or {}
        self.field_violations = field_violations or []


class NotFound(AgentdError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, resource: str, resource_id: str, *, field: str | None = None):
        # e.g. NotFound("agent", "agent_x") -> AGENT_NOT_FOUND "Agent 'agent_x' not found."
        # `field`: the request field that named the id (OpenAI's error calls it `param`).
        message = f"{resource.capitalize()} '{resource_id}' not found."
        super().__init__(message, reason=f"{resource.upper()}_NOT_FOUND",
                         metadata={"resource": resource, "id": resource_id},
                         field_violations=[(field, message)] if field else None)


class InvalidArgument(AgentdError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str, *, reason: str | None = None):
        super().__init__(f"{field}: {description}" if field else description, reason=reason,
                         field_violations=[(field, description)] if field else [])


class _ReasonRequired(AgentdError):
    """A code whose errors.proto catalogue has no generic reason: each raise names its own
    (e.g. SESSION_BUSY, DATABASE_UNAVAILABLE)."""

    def __init__(self, message: str, *, reason: str, **kwargs):
        super().__init__(message, reason=reason, **kwargs)


class FailedPrecondition(_ReasonRequired):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(_ReasonRequired):
    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(_ReasonRequired):
    """A run stopped by its caller (e.g. TURN_CANCELLED in a turn_failed event)."""

    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(AgentdError):
    """Something downstream (a model, a tool) did not answer within the caller's deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unimplemented(AgentdError):
    """An RPC that is in the contract but not built yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "NOT_AVAILABLE_YET"


class StatusError(AgentdError):
    """An error with an explicit code (what context.abort() raises for in-process calls)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        super().__init__(message, reason=CODE_REASONS.get(code, "INTERNAL"))


# The catalogued reason (errors.proto) of a bare gRPC code, for StatusError. Codes with no
# generic reason in the catalogue (NOT_FOUND, UNAVAILABLE, ...: their reasons name what is
# missing or down) get INTERNAL: servicers raise the specific errors above instead of
# aborting with them.
CODE_REASONS = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_ARGUMENT",
    grpc.StatusCode.OUT_OF_RANGE: "INVALID_ARGUMENT",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    grpc.StatusCode.CANCELLED: "CANCELLED",
    grpc.StatusCode.UNIMPLEMENTED: "NOT_AVAILABLE_YET",
    grpc.StatusCode.INTERNAL: "INTERNAL",
}


def to_status(error: BaseException, request_id: str = "") -> grpc.Status:
    """The gRPC status (for context.abort_with_status) of any exception; its trailing
    metadata carries the call's request id next to the details."""
    status = rpc_status.to_status(status_of(error, request_id))
    if request_id:
        status = status._replace(trailing_metadata=(*status.trailing_metadata, ("x-request-id", request_id)))
    return status


def status_of(error: BaseException, request_id: str = "") -> status_pb2.Status:
    """The google.rpc.Status of any exception; unexpected ones become a bare INTERNAL."""
    if isinstance(error, AgentdError):
        code, reason, message = error.code, error.reason, error.message
        metadata, violations = dict(error.metadata), error.field_violations
    elif isinstance(error, NotImplementedError):
        # The generated base servicers raise this for RPCs that are in the contract but not
        # built yet.
        code, reason, message, metadata, violations = (
            grpc.StatusCode.UNIMPLEMENTED, Unimplemented.reason, "This method is not available yet.", {}, [])
    else:
        code, reason, message, metadata, violations = (
            grpc.StatusCode.INTERNAL, "INTERNAL", "Internal server error.", {}, [])
    if request_id:
        metadata["request_id"] = request_id
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))]
    if violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations])))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


# Failures that are bugs: logged with their traceback, since the client sees a bare INTERNAL.
_UNEXPECTED = {code_pb2.INTERNAL, code_pb2.UNKNOWN, code_pb2.DATA_LOSS}
# Not the caller's fault and not a bug, but an operator wants to see it (the model or the
# database went away, a deadline, a limit).
_OPERATOR_ATTENTION = {code_pb2.UNAVAILABLE, code_pb2.DEADLINE_EXCEEDED, code_pb2.RESOURCE_EXHAUSTED}


def log_level_of(error: BaseException) -> tuple[int, str, str]:
    """How to log a failure, by what it is for the client (status_of): (level, code name,
    message). ERROR for a bug, to be logged with its traceback since the client sees a bare
    INTERNAL; an expected failure takes one line, at WARNING when an operator wants to see
    it, else INFO."""
    status = status_of(error)
    code = code_pb2.Code.Name(status.code)
    if status.code in _UNEXPECTED:
        return logging.ERROR, code, status.message
    return logging.WARNING if status.code in _OPERATOR_ATTENTION else logging.INFO, code, status.message


def log_failure(logger: logging.Logger, error: BaseException, what: str, *args: object) -> None:
    """Logs `what` (a %-format of `args`) failing with `error` as log_level_of says: a bug
    with its traceback, an expected failure (a lost database, a model that went away) in one
    line with its code and message."""
    level, code, message = log_level_of(error)
    if level == logging.ERROR:
        logger.error(what, *args, exc_info=error)
    else:
        logger.log(level, what + ": %s %s", *args, code, message)


def details_of(status: status_pb2.Status) -> tuple[str, list[str]]:
    """The ErrorInfo reason and the BadRequest field paths of a status ("" and [] if absent)."""
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def _pack(detail) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


# The HTTP status of each gRPC code (google/rpc/code.proto "HTTP Mapping").
HTTP_STATUS = {
    code_pb2.OK: 200, code_pb2.CANCELLED: 499, code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400, code_pb2.DEADLINE_EXCEEDED: 504, code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409, code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429, code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409, code_pb2.OUT_OF_RANGE: 400, code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500, code_pb2.UNAVAILABLE: 503, code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}
