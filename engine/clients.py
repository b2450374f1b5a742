"""Self-service changes of an account: its plan and its password."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from engine.errors import Forbidden, InvalidInput, NotFound
from engine.secrets import (
    PASSWORD_RULES,
    hash_password,
    password_is_strong,
    verify_password,
)

log = logging.getLogger("callgate.accounts")

MAX_PASSWORD_LENGTH = 128

# The plans offered for sign-up by the account's parent: its reseller's
# retail plans, or the operator's own plans for an account under the admin.
OFFERED_PLANS = """
SELECT p.id, p.name
FROM accounts a
LEFT JOIN accounts parent ON parent.id = a.parent_id
JOIN plans p
    ON p.signup
    AND ((parent.kind = 'reseller' AND p.owner_id = parent.id)
         OR (coalesce(parent.kind, 'admin') = 'admin' AND p.owner_id IS NULL))
WHERE a.id = $1
ORDER BY p.id
"""

SET_PLAN = """
UPDATE accounts
SET plan_id = $2, updated_at = now()
WHERE id = $1
"""

PASSWORD_HASH = """
SELECT password_hash FROM accounts WHERE id = $1 FOR UPDATE
"""

SET_PASSWORD = """
UPDATE accounts
SET password_hash = $2, updated_at = now()
WHERE id = $1
"""


async def offered_plans(
    connection: asyncpg.Connection, account_id: int
) -> list[asyncpg.Record]:
    return list(await connection.fetch(OFFERED_PLANS, account_id))


async def change_plan(
    connection: asyncpg.Connection, account_id: int, kind: str, plan_id: int
) -> asyncpg.Record:
    """Move a client to one of the plans offered to it; return that plan.

    A reseller's plan is its wholesale plan, from which its retail plans are
    derived, so only the operator changes it: Forbidden for resellers and
    the admin.
    """
    if kind != "client":
        raise Forbidden(
            f"a {kind} account cannot change its own plan; the operator sets it"
        )
    offered = {row["id"]: row for row in await offered_plans(connection, account_id)}
    if plan_id not in offered:
        raise NotFound(f"plan {plan_id} not found among the plans offered to you")
    await connection.execute(SET_PLAN, account_id, plan_id)
    log.info("plan changed account=%s plan=%s", account_id, plan_id)
    return offered[plan_id]


class WrongPassword(InvalidInput):
    """The current password given for a password change does not match."""


def check_new_password(password: str) -> str:
    if len(password) > MAX_PASSWORD_LENGTH or not password_is_strong(password):
        raise InvalidInput(
            "new_password",
            f"<{len(password)} characters>",
            f"{PASSWORD_RULES}, at most {MAX_PASSWORD_LENGTH} characters",
        )
    return password


async def change_password(
    connection: asyncpg.Connection, account_id: int, current: str, new: str
) -> None:
    """Replace the login password after verifying the current one (argon2id).

    Hashing runs in a worker thread, because argon2 takes tens of
    milliseconds of CPU on purpose.
    """
    check_new_password(new)
    stored = await connection.fetchval(PASSWORD_HASH, account_id)
    if len(current) > MAX_PASSWORD_LENGTH or not await asyncio.to_thread(
        verify_password, stored, current
    ):
        raise WrongPassword(
            "current_password",
            f"<{len(current)} characters>",
            "your current account password",
        )
    new_hash = await asyncio.to_thread(hash_password, new)
    await connection.execute(SET_PASSWORD, account_id, new_hash)
    log.info("password changed account=%s", account_id)
