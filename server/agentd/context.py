"""Per-call context (request id, principal), set when a call begins (api/calls.py) for the whole
call. It lives below api/ so that engine, tools and storage code can read it without importing
the transport layer."""

from __future__ import annotations

import contextvars
import logging

LOCAL_PRINCIPAL = "local"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
principal: contextvars.ContextVar[str] = contextvars.ContextVar("principal", default=LOCAL_PRINCIPAL)


class RequestIdFilter(logging.Filter):
    """Adds the current call's request id to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True
