"""The one clock of stored timestamps: integer microseconds since the epoch (UTC), which every
database stores exactly and which order rows the same on SQLite and PostgreSQL."""

from __future__ import annotations

import time


def now_micros() -> int:
    return time.time_ns() // 1000
