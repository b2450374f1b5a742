"""Live call control over AMI for one Asterisk node: the debit loop and reconcile.

One process per node runs this, holding an advisory lock on the node's name.
It watches the node's AMI events, funds answered calls one debit interval
ahead, hangs a call up over AMI when its money runs out, settles calls whose
`settle` AGI never arrived, and reconciles live sessions against Asterisk's
channel list after every (re)connect and periodically. A heartbeat row in
`nodes` tells every authorize, on any process, whether this node's AMI link
is up (and so whether to reserve the first block only).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from agi.ami import AMIClient, AMIError, Message
from engine import metrics
from engine.calls import CallService, SettleRequest, node_of
from engine.db import Database
from engine.funding import FundingService
from engine.settings import Settings

log = logging.getLogger("callgate.ami")

HEARTBEAT_SECONDS = 5.0
# A heartbeat older than this means the node's owner is gone: authorize then
# reserves whole max durations, as when AMI is down.
HEARTBEAT_STALE_SECONDS = 15.0
RECONCILE_SECONDS = 60.0
BATCH_WINDOW = 1.0

UPSERT_HEARTBEAT = """
INSERT INTO nodes (name, ami_connected, heartbeat_at, owner)
VALUES ($1, $2, now(), $3)
ON CONFLICT (name) DO UPDATE
SET ami_connected = excluded.ami_connected, heartbeat_at = now(), owner = excluded.owner
"""

NODE_LIVE_SESSIONS = """
SELECT uniqueid, channel, answered_at, funded_seconds, max_seconds, reserve_mode,
       created_at
FROM sessions
WHERE state = 'live' AND node = $1
"""

LIVE_SESSION = """
SELECT uniqueid, channel, answered_at, funded_seconds, max_seconds, reserve_mode
FROM sessions
WHERE uniqueid = $1 AND state = 'live'
"""

NODE_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('callgate-node:' || $1, 0))"

PROVISIONING_CHANNEL = "callgate_provisioning"
# The memory caches asterisk-conf/sorcery.conf names; identify uses a full
# backend cache, which Asterisk refuses to expire per object, so it is
# repopulated instead.
OBJECT_CACHES = ("ep", "aor", "auth")
IDENTIFY_CACHE = "ident"


@dataclass
class Tracked:
    """The controller's record of one live call on its node."""

    uniqueid: str
    channel: str
    max_seconds: int
    answered_at: float | None = None
    funded_seconds: int = 0
    hangup_at: float | None = None
    cut_scheduled: bool = False
    cdr_billsec: int | None = None
    cdr_disposition: str | None = None


@dataclass(order=True)
class _Due:
    when: float
    uniqueid: str = field(compare=False)
    kind: str = field(compare=False)  # fund, cut or settle


class NodeController:
    """Debit loop, AMI hangups, AMI settle and reconcile for one node."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        calls: CallService,
        node: str,
        *,
        ami: AMIClient | None = None,
        clock: Callable[[], float] = time.time,
        time_scale: float = 1.0,
    ) -> None:
        self.db = database
        self.settings = settings
        self.calls = calls
        self.funding = FundingService(database)
        self.node = node
        self.clock = clock
        # Clock seconds per real second; tests run the clock faster.
        self.time_scale = time_scale
        self.interval = settings.debit_interval
        self.margin = settings.hangup_margin
        self.grace = settings.settle_grace
        # Fund the next interval this long before the funded time runs out.
        self.lead = min(10.0, self.interval / 2)
        self.tracked: dict[str, Tracked] = {}
        self._heap: list[_Due] = []
        self._wakeup = asyncio.Event()
        self.ami = ami or AMIClient(
            settings.ami_url or "",
            on_event=self.on_event,
            on_connect=self.on_connect,
            on_disconnect=self.on_disconnect,
        )
        self.connected = False
        self.hangups = 0
        self.unfunded_total = 0
        self._lock_connection: asyncpg.Connection | None = None
        self._changes: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    # --- ownership and heartbeat ------------------------------------------------

    async def acquire_node(self) -> bool:
        """Take the node's advisory lock on a dedicated connection; False if held."""
        connection = await self.db.pool.acquire()
        owned = bool(await connection.fetchval(NODE_LOCK, self.node))
        if not owned:
            await self.db.pool.release(connection)
            return False
        self._lock_connection = connection
        await connection.add_listener(PROVISIONING_CHANNEL, self._on_notify)
        return True

    def _on_notify(
        self, _connection: object, _pid: int, _channel: str, payload: str
    ) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            log.error("invalid provisioning notification: %r", payload[:200])
            return
        self._changes.put_nowait(change)

    async def release_node(self) -> None:
        if self._lock_connection is not None:
            await self._lock_connection.remove_listener(
                PROVISIONING_CHANNEL, self._on_notify
            )
            await self._lock_connection.execute("SELECT pg_advisory_unlock_all()")
            await self.db.pool.release(self._lock_connection)
            self._lock_connection = None

    async def heartbeat(self) -> None:
        async with self.db.pool.acquire() as connection:
            await connection.execute(
                UPSERT_HEARTBEAT, self.node, self.connected, f"pid:{_pid()}"
            )

    # --- AMI callbacks ------------------------------------------------------------

    async def on_connect(self) -> None:
        """Resync after every (re)connect: reconcile, then fund by intervals again."""
        channels = await self.ami.core_show_channels()
        up = {m.get("Uniqueid", ""): m for m in channels}
        self.connected = True
        metrics.ami_connected.set(1)
        await self.heartbeat()
        await self.resync(set(up))
        log.info(
            "AMI resync node=%s channels=%d tracked=%d",
            self.node,
            len(up),
            len(self.tracked),
        )

    async def on_disconnect(self, reason: str) -> None:
        """Raise live calls to their L() limit where funds allow: the link is down."""
        self.connected = False
        metrics.ami_connected.set(0)
        metrics.ami_reconnects.inc()
        try:
            await self.heartbeat()
        except (OSError, asyncpg.PostgresError) as exc:
            log.error("heartbeat failed node=%s: %s", self.node, exc)
        for call in list(self.tracked.values()):
            if call.answered_at is None:
                continue
            funding = await self.funding.fund(
                call.uniqueid, call.max_seconds, mode="full"
            )
            if funding is None:
                self.tracked.pop(call.uniqueid, None)
                continue
            call.funded_seconds = funding.funded_seconds
            if not funding.complete:
                self.unfunded_total += 1
                metrics.outage_unfunded.inc(float(funding.shortfall))
                log.warning(
                    "AMI down: call funded only to %ss of its %ss limit uniqueid=%s "
                    "unfunded=%s",
                    funding.funded_seconds,
                    call.max_seconds,
                    call.uniqueid,
                    funding.shortfall,
                )
        log.warning("AMI link down node=%s: %s", self.node, reason)

    async def on_event(self, message: Message) -> None:
        name = message.name
        metrics.ami_events.labels(name).inc()
        uniqueid = message.get("Uniqueid", "")
        if name == "DialBegin":
            await self._track(uniqueid)
        elif name == "DialEnd" and message.get("DialStatus") == "ANSWER":
            await self._answered(uniqueid, _event_time(message, self.clock))
        elif name == "BridgeEnter":
            if uniqueid in self.tracked and self.tracked[uniqueid].answered_at is None:
                await self._answered(uniqueid, _event_time(message, self.clock))
        elif name == "Hangup":
            call = self.tracked.get(uniqueid)
            if call is not None:
                call.hangup_at = self.clock()
                self._schedule(call.hangup_at + self.grace, uniqueid, "settle")
        elif name == "Cdr":
            call = self.tracked.get(message.get("UniqueID", ""))
            if call is not None:
                billsec = message.get("BillableSeconds", "")
                call.cdr_billsec = int(billsec) if billsec.isdigit() else None
                call.cdr_disposition = message.get("Disposition")

    # --- tracking and funding ---------------------------------------------------

    async def _track(self, uniqueid: str) -> Tracked | None:
        if uniqueid in self.tracked:
            return self.tracked[uniqueid]
        if node_of(uniqueid) != self.node:
            return None
        async with self.db.pool.acquire() as connection:
            row = await connection.fetchrow(LIVE_SESSION, uniqueid)
        if row is None:
            return None
        call = Tracked(
            uniqueid,
            row["channel"] or "",
            row["max_seconds"] or 0,
            funded_seconds=row["funded_seconds"] or 0,
        )
        if row["answered_at"] is not None:
            call.answered_at = row["answered_at"].timestamp()
        self.tracked[uniqueid] = call
        return call

    async def _answered(self, uniqueid: str, when: float) -> None:
        call = await self._track(uniqueid)
        if call is None or call.answered_at is not None:
            return
        call.answered_at = when
        await self.funding.mark_answered(uniqueid, datetime.fromtimestamp(when, UTC))
        await self._fund(call)

    async def _fund(self, call: Tracked) -> None:
        await self._fund_batch([call])

    async def _fund_batch(
        self, calls: list[Tracked], *, allow_lower: bool = False
    ) -> None:
        """Fund talk so far plus one interval; schedule each next step or cut.

        Due steps are funded together in one transaction, which keeps the
        loop's cost per call small with thousands of live calls.
        """
        now = self.clock()
        targets = {}
        for call in calls:
            assert call.answered_at is not None
            talked = max(0.0, now - call.answered_at)
            targets[call.uniqueid] = int(talked) + self.interval
        results = await self.funding.fund_many(targets, allow_lower=allow_lower)
        for call in calls:
            funding = results.get(call.uniqueid)
            if funding is None:
                self.tracked.pop(call.uniqueid, None)
                continue
            assert call.answered_at is not None
            call.funded_seconds = funding.funded_seconds
            end = call.answered_at + funding.funded_seconds
            if funding.complete and funding.funded_seconds < call.max_seconds:
                self._schedule(end - self.lead, call.uniqueid, "fund")
            elif not funding.complete:
                call.cut_scheduled = True
                self._schedule(end - self.margin, call.uniqueid, "cut")

    def _schedule(self, when: float, uniqueid: str, kind: str) -> None:
        heapq.heappush(self._heap, _Due(when, uniqueid, kind))
        self._wakeup.set()

    async def run_timers(self) -> None:
        """Run due funding steps, cuts and AMI settles, in time order, forever."""
        while True:
            self._wakeup.clear()
            now = self.clock()
            batch: list[Tracked] = []
            # Funding a step up to a second early costs nothing (the target is
            # talk so far plus an interval), and lets due steps share a batch.
            while self._heap and self._heap[0].when <= now + BATCH_WINDOW:
                due = heapq.heappop(self._heap)
                call = self.tracked.get(due.uniqueid)
                if due.kind == "fund":
                    if call is not None and call.hangup_at is None:
                        batch.append(call)
                    continue
                if due.when > now:
                    heapq.heappush(self._heap, due)
                    break
                await self._run_guarded(due)
            if batch:
                await self._fund_guarded(batch)
            now = self.clock()
            delay = self._heap[0].when - now if self._heap else 3600.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wakeup.wait(), timeout=max(0.0, delay) / self.time_scale
                )

    async def _run_guarded(self, due: _Due) -> None:
        try:
            await self._run_due(due)
        except (OSError, asyncpg.PostgresError, AMIError) as exc:
            log.error("%s failed uniqueid=%s: %s", due.kind, due.uniqueid, exc)

    async def _fund_guarded(self, batch: list[Tracked]) -> None:
        try:
            await self._fund_batch(batch)
        except (OSError, asyncpg.PostgresError) as exc:
            log.error("funding %d calls failed: %s; retrying in 1 s", len(batch), exc)
            for call in batch:
                self._schedule(self.clock() + 1, call.uniqueid, "fund")

    async def _run_due(self, due: _Due) -> None:
        call = self.tracked.get(due.uniqueid)
        if call is None:
            return
        if due.kind == "fund":
            if call.hangup_at is None:
                await self._fund(call)
        elif due.kind == "cut":
            if call.hangup_at is None and self.connected:
                await self._cut(call)
        elif due.kind == "settle":
            await self.settle_from_events(call, "ami")

    async def _cut(self, call: Tracked) -> None:
        """Hang the call up: its money runs out a margin from now."""
        reply = await self.ami.hangup(call.channel, cause=16)
        self.hangups += 1
        metrics.debit_hangups.inc()
        log.info(
            "call cut, money exhausted uniqueid=%s channel=%s funded=%ss reply=%s",
            call.uniqueid,
            call.channel,
            call.funded_seconds,
            reply.get("Message"),
        )

    # --- live provisioning ------------------------------------------------------

    async def provisioning_loop(self) -> None:
        """Expire Asterisk's caches for every SIP change committed in the database."""
        while True:
            change = await self._changes.get()
            if not self.connected:
                # Asterisk reloads what it needs after the link is back; the
                # caches expire on their own lifetime meanwhile.
                log.warning("AMI down: cache not expired for %s", change.get("name"))
                continue
            try:
                await self.expire_caches(change)
            except AMIError as exc:
                log.error("cache expiry failed for %s: %s", change.get("name"), exc)

    async def expire_caches(self, change: dict[str, str]) -> None:
        names = sorted({n for n in (change.get("name"), change.get("old_name")) if n})
        for name in names:
            for cache in OBJECT_CACHES:
                reply = await self.ami.sorcery_memory_cache_expire_object(cache, name)
                result = "ok" if reply.is_success else "error"
                metrics.cache_expire_actions.labels(result).inc()
        if change.get("kind") == "ipauth":
            reply = await self.ami.sorcery_memory_cache_populate(IDENTIFY_CACHE)
            metrics.cache_expire_actions.labels(
                "ok" if reply.is_success else "error"
            ).inc()
        removed = (
            change.get("operation") == "delete" or change.get("status") == "disabled"
        )
        if removed and self.settings.hangup_removed_endpoints:
            for name in names:
                reply = await self.ami.send_action(
                    "Hangup", Channel=f"/^PJSIP/{re.escape(name)}-/", Cause="16"
                )
                log.info(
                    "live calls of removed endpoint %s hung up: %s",
                    name,
                    reply.get("Message"),
                )
        log.info(
            "caches expired for %s (%s %s)",
            ", ".join(names),
            change.get("operation"),
            change.get("kind"),
        )

    # --- settle from AMI and reconcile --------------------------------------------

    async def settle_from_events(self, call: Tracked, source: str) -> None:
        """Settle a call whose settle AGI has not arrived, from its AMI events."""
        self.tracked.pop(call.uniqueid, None)
        if call.cdr_disposition is not None:
            answered = call.cdr_disposition == "ANSWERED"
            request = SettleRequest(
                call.uniqueid,
                "ANSWER" if answered else _dialstatus(call.cdr_disposition),
                call.cdr_billsec if answered else None,
                source=source,
            )
        elif call.answered_at is not None and call.hangup_at is not None:
            request = SettleRequest(
                call.uniqueid,
                "ANSWER",
                int(call.hangup_at - call.answered_at),
                source=source,
            )
        else:
            await self.calls.expire_one(call.uniqueid, source=source)
            return
        result = await self.calls.settle(request)
        if result.outcome in ("settled", "failed"):
            log.info(
                "settled from AMI uniqueid=%s outcome=%s billed=%ss",
                call.uniqueid,
                result.outcome,
                result.billed_seconds,
            )

    async def resync(self, channels: set[str], *, resume: bool = True) -> None:
        """Close live sessions whose channel is gone; fund the others by intervals.

        With resume (after every connect), answered calls are funded one
        interval ahead again, in one batch: lowered from their L() limit after
        an outage, or scheduled afresh after a restart.
        """
        async with self.db.pool.acquire() as connection:
            rows = await connection.fetch(NODE_LIVE_SESSIONS, self.node)
        answered: list[Tracked] = []
        for row in rows:
            uniqueid = row["uniqueid"]
            call = self.tracked.get(uniqueid) or self._track_row(row)
            if uniqueid not in channels:
                # The channel is gone; give its settle AGI the grace period
                # before settling from what is known.
                age = self.clock() - row["created_at"].timestamp()
                if call.hangup_at is None:
                    call.hangup_at = self.clock()
                if age > self.grace:
                    await self.settle_from_events(call, "reconcile")
                else:
                    self._schedule(call.hangup_at + self.grace, uniqueid, "settle")
                continue
            if resume and call.answered_at is not None and call.hangup_at is None:
                answered.append(call)
        if answered:
            await self._fund_batch(answered, allow_lower=True)

    def _track_row(self, row: asyncpg.Record) -> Tracked:
        call = Tracked(
            row["uniqueid"],
            row["channel"] or "",
            row["max_seconds"] or 0,
            funded_seconds=row["funded_seconds"] or 0,
        )
        if row["answered_at"] is not None:
            call.answered_at = row["answered_at"].timestamp()
        self.tracked[call.uniqueid] = call
        return call

    async def reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_SECONDS)
            if not self.connected:
                continue
            try:
                channels = await self.ami.core_show_channels()
                await self.resync(
                    {m.get("Uniqueid", "") for m in channels}, resume=False
                )
            except (OSError, asyncpg.PostgresError, AMIError) as exc:
                log.error("reconcile failed node=%s: %s", self.node, exc)

    async def heartbeat_loop(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except (OSError, asyncpg.PostgresError) as exc:
                log.error("heartbeat failed node=%s: %s", self.node, exc)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def run(self) -> None:
        """Own the node and run its loops until cancelled."""
        while not await self.acquire_node():
            log.info("node %s is owned by another process; retrying", self.node)
            await asyncio.sleep(HEARTBEAT_SECONDS)
        log.info("node %s owned by this process", self.node)
        loops = [
            asyncio.create_task(self.run_timers(), name="debit-timers"),
            asyncio.create_task(self.heartbeat_loop(), name="node-heartbeat"),
            asyncio.create_task(self.reconcile_loop(), name="reconcile"),
            asyncio.create_task(self.provisioning_loop(), name="provisioning"),
        ]
        try:
            await self.ami.start()
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self.ami.close()
            self.connected = False
            try:
                await self.heartbeat()
            finally:
                await self.release_node()


def _pid() -> int:
    return os.getpid()


def _event_time(message: Message, clock: Callable[[], float]) -> float:
    stamp = message.get("Timestamp", "")
    try:
        return float(stamp) if stamp else clock()
    except ValueError:
        return clock()


def _dialstatus(disposition: str) -> str:
    return {
        "BUSY": "BUSY",
        "NO ANSWER": "NOANSWER",
        "CONGESTION": "CONGESTION",
        "FAILED": "CHANUNAVAIL",
    }.get(disposition, "NOANSWER")


class NodeStatus:
    """Whether each node's AMI link is up, from the heartbeat rows.

    authorize reads it synchronously, under its row locks, so the value comes
    from a cache that `run` refreshes every second. A node never seen counts
    as down, which makes authorize reserve whole max durations (the safe side).
    """

    def __init__(self, database: Database, refresh_seconds: float = 1.0) -> None:
        self.db = database
        self.refresh_seconds = refresh_seconds
        self._up: dict[str, bool] = {}

    def connected(self, node: str) -> bool:
        return self._up.get(node, False)

    async def refresh(self) -> None:
        async with self.db.pool.acquire() as connection:
            rows = await connection.fetch(
                "SELECT name, ami_connected AND heartbeat_at > now() - $1::interval"
                " AS up FROM nodes",
                timedelta(seconds=HEARTBEAT_STALE_SECONDS),
            )
        self._up = {row["name"]: bool(row["up"]) for row in rows}

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:
                log.error("node status refresh failed: %s", exc)
                self._up = {}
            await asyncio.sleep(self.refresh_seconds)
