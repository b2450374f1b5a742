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

LOCK_SESSIONS = """
SELECT uniqueid, node, channel, max_seconds, funded_seconds, answered_at
FROM sessions
WHERE uniqueid = ANY($1::text[]) AND state = 'live'
ORDER BY uniqueid
FOR NO KEY UPDATE
"""

# The reservations of the sessions with their accounts' funds, accounts
# locked in id order (the order authorize and settle lock them in).
LOCK_FUNDS = """
SELECT r.uniqueid, r.account_id, r.depth, r.prefix, r.rate, r.initblock,
       r.billingblock, r.connect_fee, r.free_seconds, r.decimals, r.rounding,
       r.amount, a.balance, a.credit_limit, a.billing, a.reserved AS account_reserved
FROM reservations r
JOIN accounts a ON a.id = r.account_id
WHERE r.uniqueid = ANY($1::text[])
ORDER BY a.id, r.uniqueid
FOR NO KEY UPDATE OF a
"""

MOVE_RESERVATIONS = """
WITH moves AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::numeric[], $4::numeric[])
        AS m (uniqueid, account_id, amount, delta)
),
held AS (
    UPDATE accounts a
    SET reserved = greatest(a.reserved + d.delta, 0)
    FROM (SELECT account_id, sum(delta) AS delta FROM moves GROUP BY account_id) d
    WHERE a.id = d.account_id
    RETURNING a.id
),
rows AS (
    UPDATE reservations r
    SET amount = m.amount
    FROM moves m
    WHERE r.uniqueid = m.uniqueid AND r.account_id = m.account_id
    RETURNING r.uniqueid
)
UPDATE sessions s
SET funded_seconds = f.funded, reserve_mode = f.mode
FROM unnest($5::text[], $6::integer[], $7::text[]) AS f (uniqueid, funded, mode)
WHERE s.uniqueid = f.uniqueid
"""

MARK_ANSWERED = """
UPDATE sessions
SET answered_at = coalesce(answered_at, $2)
WHERE uniqueid = $1 AND state = 'live'
RETURNING answered_at, channel, max_seconds, funded_seconds, node
"""


@dataclass(frozen=True)
class Funding:
    """The outcome of one funding step for a session."""

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
        """Fund one session; see fund_many. None when it is no longer live."""
        results = await self.fund_many(
            {uniqueid: target_seconds}, mode=mode, allow_lower=allow_lower
        )
        return results.get(uniqueid)

    async def fund_many(
        self,
        targets: dict[str, int],
        *,
        mode: str = "interval",
        allow_lower: bool = False,
    ) -> dict[str, Funding]:
        """Reserve for each session's target talk time, or as far as the money goes.

        One transaction for the whole batch: accounts shared by several
        sessions (a reseller above many clients) are charged in turn, so the
        batch never reserves more than an account can pay. Never lowers what
        a session has funded unless allow_lower (used when interval funding
        resumes after an AMI outage). Sessions no longer live are left out.
        """
        if not targets:
            return {}
        uniqueids = sorted(targets)
        async with self.db.timed("fund"), self.db.transaction() as connection:
            sessions = {
                row["uniqueid"]: row
                for row in await connection.fetch(LOCK_SESSIONS, uniqueids)
            }
            rows = await connection.fetch(LOCK_FUNDS, list(sessions))
            plan = _Plan(rows)
            results: dict[str, Funding] = {}
            for uniqueid, session in sessions.items():
                target = max(0, min(targets[uniqueid], session["max_seconds"]))
                current = session["funded_seconds"] or 0
                funded, shortfall = plan.fund(uniqueid, target, current, allow_lower)
                results[uniqueid] = Funding(
                    uniqueid,
                    session["channel"] or "",
                    funded,
                    session["max_seconds"],
                    funded >= target,
                    max(shortfall, Decimal(0)),
                )
            moves = plan.moves
            await connection.execute(
                MOVE_RESERVATIONS,
                [m[0] for m in moves],
                [m[1] for m in moves],
                [m[2] for m in moves],
                [m[3] for m in moves],
                list(results),
                [f.funded_seconds for f in results.values()],
                [mode] * len(results),
            )
        for funding in results.values():
            if not funding.complete:
                log.info(
                    "session funded short uniqueid=%s funded=%ss shortfall=%s",
                    funding.uniqueid,
                    funding.funded_seconds,
                    funding.shortfall,
                )
        return results


class _Plan:
    """Funds left on each locked account while a batch is being funded."""

    def __init__(self, rows: list[asyncpg.Record]) -> None:
        self.available: dict[int, Decimal] = {}
        self.by_session: dict[str, list[asyncpg.Record]] = {}
        for row in rows:
            credit = row["credit_limit"] if row["billing"] == "postpaid" else 0
            self.available[row["account_id"]] = (
                row["balance"] + credit - row["account_reserved"]
            )
            self.by_session.setdefault(row["uniqueid"], []).append(row)
        self.moves: list[tuple[str, int, Decimal, Decimal]] = []

    def fund(
        self, uniqueid: str, target: int, current: int, allow_lower: bool
    ) -> tuple[int, Decimal]:
        """Return the seconds funded for one session and the money missing."""
        rows = self.by_session.get(uniqueid, [])
        funded = target
        shortfall = Decimal(0)
        for row in rows:
            rate, tariff = _grid(row)
            # This session's own reservation counts as available to it.
            available = self.available[row["account_id"]] + row["amount"]
            affordable = rating.affordable_seconds(available, rate, tariff, target)
            if affordable is None or affordable < target:
                shortfall += rating.grid_cost(target, rate, tariff) - available
                funded = min(funded, affordable or 0)
        if not allow_lower:
            funded = max(funded, current)
        for row in rows:
            rate, tariff = _grid(row)
            amount = rating.grid_cost(funded, rate, tariff) if funded else Decimal(0)
            if not allow_lower:
                amount = max(amount, row["amount"])
            delta = amount - row["amount"]
            self.available[row["account_id"]] -= delta
            self.moves.append((uniqueid, row["account_id"], amount, delta))
        return funded, shortfall
