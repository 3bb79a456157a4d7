"""Leases: how replicas sharing one database tell a run that lives from one left by a dead
replica, written once for turns and responses.

A run's row (a turn, a response) carries `lease_until`: until when the replica running it
vouches for it. It is written with the row when the run starts here (`until`); then every
third of the lease this replica renews the leases of its runs of that kind and runs the
engine's recovery, which ends only rows whose lease expired (their replica died, or paused
longer than a lease). Recovery also runs at start (`start`). A row's status is the one
channel between replicas: a run whose row another replica ended meanwhile (a cancel it
served, its recovery, a delete) is stopped here at the next renewal (`_stop_ended_elsewhere`),
and a cancel served by a replica that does not run the run asks the one that does through
that row (`stop_elsewhere`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from agentd.clock import now_micros
from agentd.config import Settings
from agentd.engine.runs import Run, RunKind, Runs

log = logging.getLogger("agentd.leases")

DEFAULT_LEASE_S = Settings.model_fields["run_lease_s"].default

# The status column of a turn or a response that was cancelled: its run here stops as
# cancelled; any other end (interrupted or failed by a recovery, deleted) as interrupted.
CANCELLED = "cancelled"


class LeasedStore(Protocol):
    async def renew_leases(self, run_ids: list[str], lease_until: int) -> dict[str, str | None]:
        """Renews the leases of those still running; returns those ended elsewhere, with their
        status column (None: deleted)."""

    async def runs_elsewhere(self, owner: str, run_id: str, now: int) -> bool:
        """Whether a live replica's lease holds the run."""

    async def is_stored(self, owner: str, run_id: str) -> bool:
        """Whether the run's row is still there (not deleted)."""


class Leases:
    """The leases of one engine's runs (one RunKind) in this process."""

    def __init__(self, runs: Runs, kind: RunKind, store: LeasedStore, recover: Callable[[], Awaitable[int]],
                 lease_s: float):
        self.runs = runs
        self.kind = kind
        self.store = store
        self.recover = recover
        self.lease_s = lease_s
        self._keeper: asyncio.Task | None = None

    def until(self) -> int:
        """The end of a lease taken now (microseconds since the epoch)."""
        return now_micros() + int(self.lease_s * 1_000_000)

    async def start(self) -> None:
        """Recovery at start, then the keeper (see _keep) until close()."""
        await self.recover()
        self._keeper = asyncio.get_running_loop().create_task(self._keep(), name=f"{self.kind.name} leases")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None

    async def _keep(self) -> None:
        """Every third of the lease: renew the leases of the runs here, then recover the rows
        of replicas that stopped renewing theirs (a crash while this one runs)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                # Also those whose end the database refused: this process still vouches for them.
                vouched = (*self.runs.running(self.kind), *self.runs.keeping(self.kind))
                running = {run.run_id: run for run in vouched}
                if running:
                    ended = await self.store.renew_leases(list(running), self.until())
                    for run_id, status in ended.items():
                        await self._stop_ended_elsewhere(running[run_id], status)
                await self.recover()
            except Exception:  # the database may be away for a while: try again next time
                log.warning("%s leases: renewal or recovery failed; retrying", self.kind.name, exc_info=True)

    async def _stop_ended_elsewhere(self, run: Run, status: str | None) -> None:
        """Another replica cancelled, ended by its recovery (after a pause here longer than
        the lease) or deleted a run that runs here: the run stops, and its on_stop writes
        that end and emits the terminal event. (Recovered or deleted: recovery kept a
        terminal event already, or the rows are gone, so this run's last events may not be
        kept; its own consumers still get them, and the store keeps the other replica's end.)"""
        if run.terminal is not None or run.stop_reason is not None:
            # It ended (or is ending) by itself meanwhile. One whose end is retried (Runs._keep)
            # keeps it unless a recovery kept an end meanwhile; a cancel's mark waits for it.
            return
        log.info("%s %s was %s by another replica; stopping its run here", self.kind.name, run.run_id,
                 status or "deleted")
        await self.runs.cancel(run.owner, run.run_id, "cancelled" if status == CANCELLED else "interrupted")

    async def stop_elsewhere(self, owner: str, run_id: str,
                             request_cancel: Callable[[], Awaitable[bool]]) -> bool:
        """A run another live replica runs (its lease holds): ask that replica to cancel it
        (`request_cancel` marks the row cancelled, which it reads at its next renewal; False:
        the run ended meanwhile) and wait for the terminal event its run then keeps. False
        if no live replica runs it, if no terminal event came within two leases (that
        replica died meanwhile), or if the run's row was deleted meanwhile: the caller reads
        the row again (NOT_FOUND) or ends the run itself."""
        if not await self.store.runs_elsewhere(owner, run_id, now_micros()):
            return False
        last = await self.runs.store.last_sequence(owner, run_id)
        if not await request_cancel():
            return True  # it ended meanwhile, by itself
        # A delete meanwhile takes the run's events with its row: no end would ever come.
        events = self.runs.attach(owner, run_id, kind=self.kind, starting_after=last,
                                  still_running=lambda: self.store.is_stored(owner, run_id),
                                  ends_on_drain=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.lease_s * 2), contextlib.aclosing(events):
                async for event in events:
                    if self.kind.is_terminal(event):
                        return True
        return False
