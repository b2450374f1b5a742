"""Interval funding of answered calls (the domain half of the debit loop).

While a node's AMI link is up, authorize reserves only the connect fee plus
the initial block. When the call is answered, and again before each debit
interval ends, each account's reservation is raised to cover the talk time
so far plus one interval. Funding only moves reservations; the balance is
debited once, at settle. When an account cannot fund the next interval
(other calls used the money), the call is funded as far as the money goes
and the caller is told when to hang it up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from engine import rating
from engine.db import Database
from engine.rating import Rate, Tariff

log = logging.getLogger("callgate.funding")

LOCK_SESSION = """
SELECT uniqueid, node, channel, max_seconds, funded_seconds, answered_at, reserve_mode
FROM sessions
WHERE uniqueid = $1 AND state = 'live'
FOR UPDATE
"""

# The reservations of one session with their accounts' funds, accounts
# locked in id order (the order authorize and settle lock them in).
LOCK_FUNDS = """
SELECT r.account_id, r.depth, r.prefix, r.rate, r.initblock, r.billingblock,
       r.connect_fee, r.free_seconds, r.decimals, r.rounding, r.amount,
       a.balance, a.credit_limit, a.billing, a.reserved AS account_reserved
FROM reservations r
JOIN accounts a ON a.id = r.account_id
WHERE r.uniqueid = $1
ORDER BY a.id
FOR UPDATE OF a
"""

MOVE_RESERVATIONS = """
WITH x AS (
    SELECT * FROM unnest($2::bigint[], $3::numeric[], $4::numeric[])
        AS x (id, amount, delta)
),
held AS (
    UPDATE accounts a
    SET reserved = greatest(a.reserved + x.delta, 0)
    FROM x
    WHERE a.id = x.id
    RETURNING a.id
),
rows AS (
    UPDATE reservations r
    SET amount = x.amount
    FROM x
    WHERE r.uniqueid = $1 AND r.account_id = x.id
    RETURNING r.account_id
)
UPDATE sessions
SET funded_seconds = $5, reserve_mode = $6
WHERE uniqueid = $1
"""

MARK_ANSWERED = """
UPDATE sessions
SET answered_at = coalesce(answered_at, $2)
WHERE uniqueid = $1 AND state = 'live'
RETURNING answered_at, channel, max_seconds, funded_seconds, node
"""


@dataclass(frozen=True)
class Funding:
    """What one funding step left a session with."""

    uniqueid: str
    channel: str
    funded_seconds: int
    max_seconds: int
    # False when some account could not pay up to the requested talk time:
    # the call must end at funded_seconds of talk.
    complete: bool
    # Money an account could not reserve for the requested target.
    shortfall: Decimal = Decimal(0)


def _grid(row: asyncpg.Record) -> tuple[Rate, Tariff]:
    rate = Rate(
        row["prefix"],
        "",
        row["rate"],
        row["initblock"],
        row["billingblock"],
        row["connect_fee"],
    )
    return rate, Tariff(row["free_seconds"], row["decimals"], row["rounding"])


class FundingService:
    """Raises and lowers the reservations of answered calls."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def mark_answered(self, uniqueid: str, answered_at: datetime) -> bool:
        """Record the answer time once; False if the session is not live."""
        async with self.db.pool.acquire() as connection:
            row = await connection.fetchrow(MARK_ANSWERED, uniqueid, answered_at)
        return row is not None

    async def fund(
        self,
        uniqueid: str,
        target_seconds: int,
        *,
        mode: str = "interval",
        allow_lower: bool = False,
    ) -> Funding | None:
        """Reserve for target_seconds of talk, or as much as every account can pay.

        Never lowers what is funded unless allow_lower (used when interval
        funding resumes after an AMI outage), and never below what the
        reservation already covered when allow_lower is False. Returns None
        when the session is no longer live.
        """
        async with self.db.timed("fund"), self.db.transaction() as connection:
            session = await connection.fetchrow(LOCK_SESSION, uniqueid)
            if session is None:
                return None
            rows = await connection.fetch(LOCK_FUNDS, uniqueid)
            target = max(0, min(target_seconds, session["max_seconds"]))
            current = session["funded_seconds"] or 0
            funded = target
            shortfall = Decimal(0)
            for row in rows:
                rate, tariff = _grid(row)
                credit = row["credit_limit"] if row["billing"] == "postpaid" else 0
                # This session's own reservation counts as available to it.
                available = (
                    row["balance"] + credit - row["account_reserved"] + row["amount"]
                )
                affordable = rating.affordable_seconds(available, rate, tariff, target)
                if affordable is None or affordable < target:
                    shortfall += rating.grid_cost(target, rate, tariff) - available
                    funded = min(funded, affordable or 0)
            if not allow_lower:
                funded = max(funded, current)
            amounts: list[Decimal] = []
            deltas: list[Decimal] = []
            for row in rows:
                rate, tariff = _grid(row)
                amount = (
                    rating.grid_cost(funded, rate, tariff) if funded else Decimal(0)
                )
                if not allow_lower:
                    amount = max(amount, row["amount"])
                amounts.append(amount)
                deltas.append(amount - row["amount"])
            await connection.execute(
                MOVE_RESERVATIONS,
                uniqueid,
                [row["account_id"] for row in rows],
                amounts,
                deltas,
                funded,
                mode,
            )
        complete = funded >= target
        if not complete:
            log.info(
                "session funded short uniqueid=%s funded=%ss target=%ss shortfall=%s",
                uniqueid,
                funded,
                target,
                shortfall,
            )
        return Funding(
            uniqueid,
            session["channel"] or "",
            funded,
            session["max_seconds"],
            complete,
            max(shortfall, Decimal(0)),
        )
