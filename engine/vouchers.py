"""Voucher redemption: once only, atomic, credited through the ledger."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from engine.errors import NotFound
from engine.ledger import change_balance

log = logging.getLogger("callgate.accounts")

# The conditional UPDATE is the whole race guard: of two redemptions of one
# code at once, only the first matches "redeemed_by IS NULL". A voucher
# issued for a reseller matches only that reseller's clients; $3 is NULL for
# an account under the operator, so only operator-wide vouchers match.
REDEEM = """
UPDATE vouchers
SET redeemed_by = $2, redeemed_at = now()
WHERE code = $1
    AND redeemed_by IS NULL
    AND (reseller_id IS NULL OR reseller_id = $3)
    AND currency = $4
RETURNING id, amount
"""


@dataclass(frozen=True)
class Redemption:
    voucher_id: int
    amount: Decimal
    balance: Decimal


async def redeem_voucher(
    connection: asyncpg.Connection,
    account_id: int,
    reseller_id: int | None,
    currency: str,
    code: str,
) -> Redemption:
    """Redeem code for account_id in the caller's transaction.

    An unknown code, a used one, one of another reseller or another currency
    raise the same NotFound.
    """
    row = await connection.fetchrow(REDEEM, code, account_id, reseller_id, currency)
    if row is None:
        raise NotFound(f"voucher {code!r} not found or already redeemed")
    entry = await change_balance(
        connection,
        account_id,
        row["amount"],
        "voucher",
        reference=f"voucher:{row['id']}",
    )
    log.info(
        "voucher redeemed account=%s voucher=%s amount=%s",
        account_id,
        row["id"],
        row["amount"],
    )
    return Redemption(int(row["id"]), row["amount"], entry.balance_after)
