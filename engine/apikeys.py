"""API-key authentication: a SHA-256 lookup, then a constant-time compare."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from engine.errors import RateLimited
from engine.secrets import hash_api_key, keys_equal

# One round trip returns both the failed-authentication count of the client
# address and the key with its account, so a blocked address is refused even
# when it finally presents a valid key. The outer "SELECT 1" guarantees one
# row when neither exists.
AUTHENTICATE = """
SELECT f.hits AS failures,
       greatest(1, ceil(extract(epoch FROM
           f.window_start + make_interval(secs => $3) - now())))::integer
           AS retry_after,
       k.id AS key_id, k.key_hash, k.status AS key_status,
       k.account_id, k.kind, k.login, k.account_status, k.balance,
       k.credit_limit, k.currency, k.plan_id, k.plan_name, k.parent_id,
       k.ancestors
FROM (SELECT 1) AS one
LEFT JOIN rate_limits f
    ON f.key = $2
    AND f.window_start > now() - make_interval(secs => $3)
LEFT JOIN (
    SELECT k.id, k.key_hash, k.status, a.id AS account_id, a.kind, a.login,
           a.status AS account_status, a.balance, a.credit_limit, a.currency,
           a.plan_id, p.name AS plan_name, a.parent_id, a.ancestors
    FROM api_keys k
    JOIN accounts a ON a.id = k.account_id
    LEFT JOIN plans p ON p.id = a.plan_id
    WHERE k.key_hash = $1
) AS k ON true
"""

TOUCH_KEY = """
UPDATE api_keys
SET last_used_at = now()
WHERE id = $1
"""


@dataclass(frozen=True)
class Caller:
    """The account an API key acts for, as read at the start of the request."""

    key_id: int
    account_id: int
    kind: str
    login: str
    balance: Decimal
    credit_limit: Decimal
    currency: str
    plan_id: int | None
    plan_name: str | None
    parent_id: int | None
    # The nearest reseller above the account, None under the operator.
    reseller_id: int | None


async def authenticate(
    connection: asyncpg.Connection,
    key: str,
    failure_key: str,
    failure_limit: int,
    failure_window: float,
) -> Caller | None:
    """Return the caller of an active key on an active account, else None.

    Raise RateLimited when failure_key already has failure_limit failed
    attempts in its window, before the key is looked at.
    """
    digest = hash_api_key(key)
    row = await connection.fetchrow(AUTHENTICATE, digest, failure_key, failure_window)
    if row["failures"] is not None and row["failures"] >= failure_limit:
        raise RateLimited(
            f"too many failed authentications from this address; "
            f"retry after {row['retry_after']} s",
            int(row["retry_after"]),
        )
    if row["key_id"] is None or not keys_equal(bytes(row["key_hash"]), digest):
        return None
    if row["key_status"] != "active" or row["account_status"] != "active":
        return None
    ancestors = row["ancestors"] or []
    return Caller(
        key_id=int(row["key_id"]),
        account_id=int(row["account_id"]),
        kind=row["kind"],
        login=row["login"],
        balance=row["balance"],
        credit_limit=row["credit_limit"],
        currency=row["currency"].strip(),
        plan_id=row["plan_id"],
        plan_name=row["plan_name"],
        parent_id=row["parent_id"],
        reseller_id=int(ancestors[0]) if ancestors else None,
    )


async def touch_key(connection: asyncpg.Connection, key_id: int) -> None:
    """Record that a key was used now."""
    await connection.execute(TOUCH_KEY, key_id)
