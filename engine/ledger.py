"""Balance changes: every one is a ledger entry in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from engine.errors import InvalidInput

# The largest balance NUMERIC(20, 6) holds.
MAX_BALANCE = Decimal("99999999999999.999999")

LEDGER_KINDS = frozenset(
    {
        "call",
        "refill",
        "voucher",
        "transfer",
        "agent_payment",
        "sms",
        "esim",
        "adjustment",
    }
)

CHANGE_BALANCE = """
UPDATE accounts
SET balance = balance + $2, updated_at = now()
WHERE id = $1
RETURNING balance, tenant_id
"""

INSERT_ENTRY = """
INSERT INTO ledger (
    account_id, tenant_id, amount, balance_after, kind, reference,
    provider, provider_txid, external_id, note
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING id
"""


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    account_id: int
    amount: Decimal
    balance_after: Decimal


async def change_balance(
    connection: asyncpg.Connection,
    account_id: int,
    amount: Decimal,
    kind: str,
    *,
    reference: str | None = None,
    provider: str | None = None,
    provider_txid: str | None = None,
    external_id: str | None = None,
    note: str | None = None,
) -> LedgerEntry:
    """Add amount (negative to debit) to a balance and append its ledger entry.

    The caller owns the transaction, so the balance and its entry commit
    together or not at all.
    """
    if kind not in LEDGER_KINDS:
        raise ValueError(f"unknown ledger kind {kind!r}")
    try:
        row = await connection.fetchrow(CHANGE_BALANCE, account_id, amount)
    except asyncpg.NumericValueOutOfRangeError as exc:
        raise InvalidInput(
            "amount",
            str(amount),
            f"an amount that keeps the balance within ±{MAX_BALANCE}",
        ) from exc
    if row is None:
        raise LookupError(f"account {account_id} does not exist")
    entry_id = await connection.fetchval(
        INSERT_ENTRY,
        account_id,
        row["tenant_id"],
        amount,
        row["balance"],
        kind,
        reference,
        provider,
        provider_txid,
        external_id,
        note,
    )
    return LedgerEntry(entry_id, account_id, amount, row["balance"])
