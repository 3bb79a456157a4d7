"""The one clock of stored timestamps: integer microseconds since the epoch (UTC), which every
database stores exactly and which order rows the same on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def now_micros() -> int:
    return time.time_ns() // 1000


def timestamp(micros: int | None = None) -> Timestamp:
    """A protobuf Timestamp of `micros` (now when None)."""
    ts = Timestamp()
    ts.FromMicroseconds(now_micros() if micros is None else micros)
    return ts
