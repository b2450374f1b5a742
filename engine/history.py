"""Call and refill history of one account, newest first, one page at a time."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

# Credits that refill an account; debits (calls, SMS, eSIM) are not refills.
REFILL_KINDS = ["refill", "voucher", "transfer", "agent_payment", "adjustment"]

CALLS_PAGE = """
SELECT id, uniqueid, started_at, sip_name, number, destination, callerid,
       answered_seconds, billed_seconds, cost, disposition
FROM cdrs
WHERE account_id = $1
ORDER BY id DESC
LIMIT $2 OFFSET $3
"""

CALLS_TOTALS = """
SELECT count(*) AS count,
       coalesce(sum(cost), 0) AS amount,
       coalesce(sum(billed_seconds), 0) AS seconds
FROM cdrs
WHERE account_id = $1
"""

REFILLS_PAGE = """
SELECT id, created_at, amount, kind, balance_after, note
FROM ledger
WHERE account_id = $1 AND kind = ANY($4::text[]) AND amount > 0
ORDER BY id DESC
LIMIT $2 OFFSET $3
"""

REFILLS_TOTALS = """
SELECT count(*) AS count, coalesce(sum(amount), 0) AS amount, 0 AS seconds
FROM ledger
WHERE account_id = $1 AND kind = ANY($2::text[]) AND amount > 0
"""


@dataclass(frozen=True)
class Page:
    rows: list[asyncpg.Record]
    total: int
    total_amount: Decimal
    total_seconds: int


async def calls_page(
    connection: asyncpg.Connection, account_id: int, limit: int, offset: int
) -> Page:
    rows = await connection.fetch(CALLS_PAGE, account_id, limit, offset)
    totals = await connection.fetchrow(CALLS_TOTALS, account_id)
    return Page(list(rows), totals["count"], totals["amount"], int(totals["seconds"]))


async def refills_page(
    connection: asyncpg.Connection, account_id: int, limit: int, offset: int
) -> Page:
    rows = await connection.fetch(REFILLS_PAGE, account_id, limit, offset, REFILL_KINDS)
    totals = await connection.fetchrow(REFILLS_TOTALS, account_id, REFILL_KINDS)
    return Page(list(rows), totals["count"], totals["amount"], 0)
