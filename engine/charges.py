"""Reserve, debit and release a purchase (SMS, eSIM) across an account chain.

Like the call path, a purchase locks the buyer and every reseller above it
(`SELECT … FOR UPDATE`, ordered by id, so concurrent purchases never
deadlock), checks that each can pay its own price, and raises
`accounts.reserved` in the same transaction. The balance is debited once, when
the provider accepts, through the ledger; a refusal releases the reservation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from engine.errors import InsufficientFunds
from engine.ledger import LedgerEntry, change_balance

SIX_PLACES = Decimal("0.000001")

LOCK_CHAIN = """
SELECT id, kind, status, billing, balance, credit_limit, reserved, markup, plan_id
FROM accounts
WHERE id = ANY($1::bigint[])
ORDER BY id
FOR NO KEY UPDATE
"""

RESERVE = """
UPDATE accounts a
SET reserved = a.reserved + x.amount
FROM unnest($1::bigint[], $2::numeric[]) AS x (id, amount)
WHERE a.id = x.id
"""

RELEASE = """
UPDATE accounts a
SET reserved = greatest(a.reserved - x.amount, 0)
FROM unnest($1::bigint[], $2::numeric[]) AS x (id, amount)
WHERE a.id = x.id
"""


@dataclass(frozen=True)
class Charge:
    """One account's share of a purchase; depth 0 is the buyer."""

    account_id: int
    depth: int
    amount: Decimal
    plan_id: int | None = None


class AccountUnavailable(InsufficientFunds):
    """An account of the chain is inactive or blocked, so it cannot pay."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        super().__init__(f"account at depth {depth} is not active")


class ChainCannotPay(InsufficientFunds):
    """An account of the chain has less available than its price."""

    def __init__(self, depth: int, amount: Decimal, available: Decimal) -> None:
        self.depth = depth
        self.amount = amount
        self.available = available
        super().__init__(
            f"account at depth {depth} has {available} available, needs {amount}"
        )


def apply_markup(price: Decimal, markup: Decimal) -> Decimal:
    """Return price x (1 + markup), half-up to 6 decimals, as retail plans do."""
    return (price * (1 + markup)).quantize(SIX_PLACES, rounding=ROUND_HALF_UP)


def available(row: asyncpg.Record) -> Decimal:
    """Return what a locked account may still spend: balance + credit − reserved."""
    credit = row["credit_limit"] if row["billing"] == "postpaid" else Decimal(0)
    amount: Decimal = row["balance"] + credit - row["reserved"]
    return amount


async def lock_chain(
    connection: asyncpg.Connection, chain_ids: Sequence[int]
) -> dict[int, asyncpg.Record]:
    """Lock the accounts of a chain in id order; return their rows by id."""
    rows = await connection.fetch(LOCK_CHAIN, list(chain_ids))
    return {row["id"]: row for row in rows}


async def reserve(
    connection: asyncpg.Connection,
    locked: dict[int, asyncpg.Record],
    charges: Sequence[Charge],
) -> None:
    """Reserve every charge, or raise InsufficientFunds and reserve nothing.

    The accounts must already be locked by lock_chain in this transaction.
    """
    totals: dict[int, Decimal] = {}
    for charge in charges:
        totals[charge.account_id] = totals.get(charge.account_id, 0) + charge.amount
    for charge in sorted(charges, key=lambda item: item.depth):
        row = locked[charge.account_id]
        if row["status"] != "active":
            raise AccountUnavailable(charge.depth)
        if available(row) < totals[charge.account_id]:
            raise ChainCannotPay(
                charge.depth, totals[charge.account_id], available(row)
            )
    await connection.execute(
        RESERVE, list(totals), [totals[account] for account in totals]
    )


async def release(connection: asyncpg.Connection, charges: Sequence[Charge]) -> None:
    """Give back reserved charges without a debit."""
    if not charges:
        return
    await connection.execute(
        RELEASE,
        [charge.account_id for charge in charges],
        [charge.amount for charge in charges],
    )


async def debit(
    connection: asyncpg.Connection,
    charges: Sequence[Charge],
    kind: str,
    *,
    reference: str,
    provider: str,
    provider_txid: str | None = None,
) -> dict[int, LedgerEntry]:
    """Release the reservations and debit each account once, with a ledger entry.

    The caller locks the accounts first (lock_chain) and holds the transaction.
    Returns the ledger entries by account id; a zero charge writes none.
    """
    await release(connection, charges)
    entries: dict[int, LedgerEntry] = {}
    for charge in sorted(charges, key=lambda item: item.account_id):
        if charge.amount == 0:
            continue
        entries[charge.account_id] = await change_balance(
            connection,
            charge.account_id,
            -charge.amount,
            kind,
            reference=reference,
            provider=provider,
            provider_txid=provider_txid,
        )
    return entries
