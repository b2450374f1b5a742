"""Credits a reseller grants its own clients: transfers and agent payments.

Both are rows of `payments`, unique per (reseller, provider, external_id),
so an id that arrives from outside is applied at most once. A transfer is a
payment with no provider that is paid at once; an agent payment names its
provider (plisio, heleket, ...) and moves through pending -> paid | failed,
failed -> paid for a late payment. The client is credited once, in the
transaction that makes the payment paid, with a ledger entry that carries the
provider and its transaction id. Neither debits the reseller: it pays
wholesale when its clients call.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from engine.errors import Conflict, InvalidInput
from engine.ledger import change_balance

log = logging.getLogger("callgate.accounts")

# Transfers have no payment provider; agent payments always name one, so
# the two never share an external_id namespace.
TRANSFER_PROVIDER = ""
STATUSES = ("pending", "paid", "failed")
PROVIDER_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAX_EXTERNAL_ID_LENGTH = 128
MAX_TXID_LENGTH = 200

INSERT_PAYMENT = """
INSERT INTO payments (
    reseller_id, client_id, provider, external_id, amount, currency, status,
    provider_txid
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (reseller_id, provider, external_id) DO NOTHING
RETURNING id, client_id, amount, currency, status
"""

# A concurrent INSERT of the same key waits for the first to commit and then
# inserts nothing. This statement, run after it, reads the committed row.
LOCK_PAYMENT = """
SELECT id, client_id, amount, currency, status
FROM payments
WHERE reseller_id = $1 AND provider = $2 AND external_id = $3
FOR UPDATE
"""

SET_STATUS = """
UPDATE payments
SET status = $2,
    ledger_id = coalesce($3, ledger_id),
    provider_txid = coalesce($4, provider_txid),
    updated_at = now()
WHERE id = $1
"""

PAYMENT_COLUMNS = """
    p.id, p.provider, p.external_id, p.amount, p.currency, p.status,
    p.provider_txid, p.created_at, p.updated_at, a.login,
    l.balance_after, l.created_at AS credited_at
"""

PAYMENT_VIEW = f"""
SELECT {PAYMENT_COLUMNS}
FROM payments p
JOIN accounts a ON a.id = p.client_id
LEFT JOIN ledger l ON l.id = p.ledger_id
WHERE p.id = $1
"""

LIST_PAYMENTS = f"""
SELECT {PAYMENT_COLUMNS}
FROM payments p
JOIN accounts a ON a.id = p.client_id
LEFT JOIN ledger l ON l.id = p.ledger_id
WHERE p.reseller_id = $1 AND ($2::text IS NULL OR p.status = $2)
ORDER BY p.id DESC
LIMIT $3 OFFSET $4
"""

COUNT_PAYMENTS = """
SELECT count(*)
FROM payments p
WHERE p.reseller_id = $1 AND ($2::text IS NULL OR p.status = $2)
"""


@dataclass(frozen=True)
class Credit:
    """One request to credit a client: a transfer or an agent payment notification."""

    reseller_id: int
    client_id: int
    provider: str
    external_id: str
    amount: Decimal
    currency: str
    status: str
    provider_txid: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The stored payment after a request, and whether the request was a replay."""

    payment: asyncpg.Record
    replayed: bool


def new_external_id() -> str:
    """Return an external_id for a transfer sent without one."""
    return "transfer-" + secrets.token_hex(12)


def check_currency(currency: str | None, deployment: str) -> str:
    """Return the deployment's currency; raise InvalidInput for any other."""
    if currency is None:
        return deployment
    if currency.strip().upper() != deployment:
        raise InvalidInput(
            "currency", currency, f"{deployment}, the currency of this deployment"
        )
    return deployment


def check_provider(provider: str) -> str:
    if not PROVIDER_PATTERN.match(provider):
        raise InvalidInput(
            "provider",
            provider,
            "a provider name of 1 to 32 lower-case letters, digits, '.', '_' or '-'"
            " such as plisio",
        )
    return provider


def check_external_id(external_id: str) -> str:
    if len(external_id) > MAX_EXTERNAL_ID_LENGTH or not external_id.isprintable():
        raise InvalidInput(
            "external_id",
            external_id,
            f"printable text of at most {MAX_EXTERNAL_ID_LENGTH} characters",
        )
    return external_id


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise InvalidInput("status", status, "pending, paid or failed")
    return status


def next_status(stored: str, requested: str) -> str | None:
    """Return the status a notification moves a payment to, or None to replay.

    pending -> paid or failed and failed -> paid (a late payment) apply; the
    same status again, anything after paid and failed -> pending replay.
    """
    if stored == "paid" or stored == requested:
        return None
    if stored == "pending":
        return requested
    if stored == "failed" and requested == "paid":
        return "paid"
    return None


def _check_same(stored: asyncpg.Record, credit: Credit) -> None:
    differences = []
    if stored["amount"] != credit.amount:
        differences.append(f"amount {stored['amount'].normalize():f}")
    if stored["client_id"] != credit.client_id:
        differences.append("another client")
    if stored["currency"].strip() != credit.currency:
        differences.append(f"currency {stored['currency'].strip()}")
    if differences:
        raise Conflict(
            f"external_id {credit.external_id!r} is already recorded with "
            f"{' and '.join(differences)}; send a new external_id for a new payment"
        )


async def _credit(
    connection: asyncpg.Connection, payment_id: int, credit: Credit
) -> None:
    kind = "transfer" if credit.provider == TRANSFER_PROVIDER else "agent_payment"
    entry = await change_balance(
        connection,
        credit.client_id,
        credit.amount,
        kind,
        reference=f"payment:{payment_id}",
        provider=credit.provider or None,
        provider_txid=credit.provider_txid,
        external_id=credit.external_id,
    )
    await connection.execute(
        SET_STATUS, payment_id, "paid", entry.id, credit.provider_txid
    )
    log.info(
        "client credited account=%s payment=%s kind=%s amount=%s reseller=%s",
        credit.client_id,
        payment_id,
        kind,
        credit.amount,
        credit.reseller_id,
    )


async def apply_credit(connection: asyncpg.Connection, credit: Credit) -> Outcome:
    """Record a transfer or payment notification once, in the caller's transaction.

    A new external_id is stored (and credited when paid). A known one with a
    different amount, client or currency raises Conflict. Otherwise its
    status moves as next_status decides, or the stored result is returned as a
    replay with nothing changed.
    """
    key = (credit.reseller_id, credit.provider, credit.external_id)
    inserted = await connection.fetchrow(
        INSERT_PAYMENT,
        credit.reseller_id,
        credit.client_id,
        credit.provider,
        credit.external_id,
        credit.amount,
        credit.currency,
        "pending" if credit.status == "paid" else credit.status,
        credit.provider_txid,
    )
    if inserted is not None:
        if credit.status == "paid":
            await _credit(connection, inserted["id"], credit)
        else:
            log.info(
                "payment recorded payment=%s account=%s status=%s",
                inserted["id"],
                credit.client_id,
                credit.status,
            )
        return Outcome(await _view(connection, inserted["id"]), replayed=False)

    stored = await connection.fetchrow(LOCK_PAYMENT, *key)
    if stored is None:
        # Payments are never deleted, so this means a concurrent insert was
        # rolled back; the caller may simply retry.
        raise Conflict(
            f"external_id {credit.external_id!r} is being recorded by another "
            "request; try again"
        )
    _check_same(stored, credit)
    status = next_status(stored["status"], credit.status)
    if status is None:
        return Outcome(await _view(connection, stored["id"]), replayed=True)
    if status == "paid":
        await _credit(connection, stored["id"], credit)
    else:
        await connection.execute(
            SET_STATUS, stored["id"], status, None, credit.provider_txid
        )
        log.info(
            "payment status changed payment=%s account=%s status=%s",
            stored["id"],
            credit.client_id,
            status,
        )
    return Outcome(await _view(connection, stored["id"]), replayed=False)


async def _view(connection: asyncpg.Connection, payment_id: int) -> asyncpg.Record:
    return await connection.fetchrow(PAYMENT_VIEW, payment_id)


async def list_payments(
    connection: asyncpg.Connection,
    reseller_id: int,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[list[asyncpg.Record], int]:
    """Return one page of the reseller's transfers and payments, newest first."""
    rows = await connection.fetch(LIST_PAYMENTS, reseller_id, status, limit, offset)
    total = await connection.fetchval(COUNT_PAYMENTS, reseller_id, status)
    return list(rows), int(total)
