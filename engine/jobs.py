"""The database-backed SMS queue that runs inside every daemon.

Scheduled messages and campaign recipients wait in sms_messages as SCHEDULED
or QUEUED with a due time. A worker claims due rows with `FOR UPDATE SKIP
LOCKED` and marks them SENDING in the same statement, so with several
daemons on one database each message is claimed once. The claim commits
before the hand-off, so a restart never sends a claimed message again. A
message left SENDING by a daemon that died mid hand-off becomes PENDING
(outcome unknown, reservation held), and PENDING messages are checked with
their provider until it settles them. Due times are UTC instants, so
daylight-saving changes do not move them.

Each provider has a token bucket in sms_pace, shared by all daemons, that
caps queued sends at CALLGATE_SMS_RATE_LIMIT per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from decimal import Decimal

import asyncpg

from engine.db import Database
from engine.errors import CallgateError
from engine.providers.base import SmsProvider
from engine.settings import Settings
from engine.sms import HandOff, SmsService

log = logging.getLogger("callgate.jobs")

# Most messages one worker claims per provider per round.
BATCH = 200
# A PENDING message is checked with its provider at most this often, seconds.
CHECK_INTERVAL = 60.0
CHECK_BATCH = 50

ENSURE_PACE = """
INSERT INTO sms_pace (provider, tokens, updated_at)
VALUES ($1, $2, now())
ON CONFLICT (provider) DO NOTHING
"""

LOCK_PACE = """
SELECT tokens, extract(epoch FROM now() - updated_at)::numeric AS elapsed
FROM sms_pace
WHERE provider = $1
FOR UPDATE
"""

UPDATE_PACE = """
UPDATE sms_pace SET tokens = $2, updated_at = now() WHERE provider = $1
"""

CLAIM_DUE = """
UPDATE sms_messages m
SET status = 'SENDING', claimed_at = now(), attempts = m.attempts + 1,
    updated_at = now()
FROM (
    SELECT id
    FROM sms_messages
    WHERE provider = $1
      AND status IN ('SCHEDULED', 'QUEUED')
      AND due_at <= now()
    ORDER BY due_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AS due
WHERE m.id = due.id
RETURNING m.*
"""

RECOVER_STALE = """
UPDATE sms_messages
SET status = 'PENDING', error = 'hand-off interrupted; outcome unknown',
    updated_at = now()
WHERE status = 'SENDING'
  AND claimed_at < now() - make_interval(secs => $1)
RETURNING id, provider
"""

CLAIM_CHECKS = """
UPDATE sms_messages m
SET checked_at = now()
FROM (
    SELECT id
    FROM sms_messages
    WHERE status = 'PENDING'
      AND coalesce(checked_at, claimed_at, created_at)
          < now() - make_interval(secs => $1)
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AS due
WHERE m.id = due.id
RETURNING m.*
"""


class SmsQueue:
    """One worker of the queue; any number may run against one database."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        service: SmsService | None = None,
        *,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.db = database
        self.settings = settings
        self.service = service or SmsService(database, settings)
        self.rate = settings.sms_rate_limit
        self.check_interval = check_interval
        # A hand-off lasts at most the provider timeout; well past it, a
        # SENDING message belongs to a daemon that died.
        self.stale_after = settings.sms_timeout * 3 + 60

    async def run_once(self) -> int:
        """Do one round: recover, send what is due, check PENDING; return the work."""
        await self._recover_stale()
        done = 0
        # NOTE: messages of a provider no longer configured are not claimed;
        # they keep their reservation until the provider is configured again.
        for provider in self.service.providers.values():
            rows = await self._claim(provider.code)
            if rows:
                await self._send_all(provider, rows)
            done += len(rows)
        return done + await self._check_pending()

    async def _claim(self, provider: str) -> list[asyncpg.Record]:
        async with self.db.transaction() as connection:
            await connection.execute(ENSURE_PACE, provider, Decimal(self.rate))
            pace = await connection.fetchrow(LOCK_PACE, provider)
            tokens = min(
                Decimal(self.rate), pace["tokens"] + pace["elapsed"] * self.rate
            )
            allowed = min(math.floor(tokens), BATCH)
            rows = []
            if allowed > 0:
                rows = list(await connection.fetch(CLAIM_DUE, provider, allowed))
            await connection.execute(UPDATE_PACE, provider, tokens - len(rows))
        return rows

    async def _send_all(
        self, provider: SmsProvider, rows: list[asyncpg.Record]
    ) -> None:
        results = await asyncio.gather(
            *(self.service.hand_off(provider, row, HandOff.QUEUED) for row in rows),
            return_exceptions=True,
        )
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                # The message stays SENDING and becomes PENDING once stale.
                log.error(
                    "queued sms hand-off failed id=%s provider=%s: %r",
                    row["id"],
                    provider.code,
                    result,
                )

    async def _recover_stale(self) -> None:
        async with self.db.pool.acquire() as connection:
            rows = await connection.fetch(RECOVER_STALE, self.stale_after)
        for row in rows:
            log.warning(
                "sms hand-off interrupted id=%s provider=%s: now PENDING",
                row["id"],
                row["provider"],
            )

    async def _check_pending(self) -> int:
        async with self.db.pool.acquire() as connection:
            rows = await connection.fetch(
                CLAIM_CHECKS, self.check_interval, CHECK_BATCH
            )
        for row in rows:
            try:
                await self.service.check(row)
            except (OSError, CallgateError, asyncpg.PostgresError) as exc:
                log.error("sms status check failed id=%s: %s", row["id"], exc)
        return len(rows)


async def run_sms_queue(
    database: Database,
    settings: Settings,
    stop: asyncio.Event,
    *,
    poll_interval: float = 1.0,
    service: SmsService | None = None,
) -> None:
    """Run a queue worker until stop is set; errors are logged and retried."""
    queue = SmsQueue(database, settings, service)
    for provider in queue.service.providers.values():
        await provider.open()
    log.info("sms queue started providers=%s", ",".join(queue.service.providers))
    try:
        while not stop.is_set():
            try:
                done = await queue.run_once()
            except (OSError, TimeoutError, CallgateError, asyncpg.PostgresError) as exc:
                log.error("sms queue round failed: %s", exc)
                done = 0
            if done:
                continue
            # Waking early on stop; a timeout only means the next round is due.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_interval)
    finally:
        for provider in queue.service.providers.values():
            await provider.close()
        log.info("sms queue stopped")
