"""Caller IDs of an account: at most one active, presented on every outbound call.

`engine.calls.CallService.authorize` sets CALLERID(num) to the active caller
ID; with none active, each SIP account presents its own caller ID.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import asyncpg
import phonenumbers

from engine.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("callgate.accounts")

E164_FORM = re.compile(r"^\+[0-9]{8,15}$")
E164_EXPECTED = "an E.164 number: '+', a country code and 8 to 15 digits in all"
MAX_CALLERIDS = 100
MAX_NAME_LENGTH = 80

LIST_CALLERIDS = """
SELECT id, cid, name, active, created_at
FROM callerids
WHERE account_id = $1
ORDER BY id
"""

COUNT_CALLERIDS = """
SELECT count(*) FROM callerids WHERE account_id = $1
"""

INSERT_CALLERID = """
INSERT INTO callerids (account_id, cid, name)
VALUES ($1, $2, $3)
ON CONFLICT (account_id, cid) DO NOTHING
RETURNING id, cid, name, active, created_at
"""

# The partial unique index callerids_one_active allows one active row, so
# the old one is switched off first, in the same transaction.
CLEAR_ACTIVE = """
UPDATE callerids
SET active = false
WHERE account_id = $1 AND active
"""

ACTIVATE = """
UPDATE callerids
SET active = true
WHERE account_id = $1 AND id = $2
RETURNING id, cid, name, active, created_at
"""

FIND_BY_CID = """
SELECT id FROM callerids WHERE account_id = $1 AND cid = $2
"""

DELETE_CALLERID = """
DELETE FROM callerids
WHERE account_id = $1 AND id = $2
RETURNING id, cid, name, active, created_at
"""


@dataclass(frozen=True)
class CheckedNumber:
    """An E.164 number in form, with a warning when phonenumbers finds it invalid."""

    number: str
    warning: str | None


def check_e164(field: str, value: str) -> CheckedNumber:
    """Check that value is E.164 in form: '+', a known country code, 8 to 15 digits.

    phonenumbers' per-country validity only adds a warning, so placeholder
    numbers such as +1234567890 pass.
    """
    number = value.strip()
    if not E164_FORM.match(number):
        raise InvalidInput(field, value, E164_EXPECTED)
    digits = number[1:]
    codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE
    if digits[0] == "0" or not any(
        int(digits[:length]) in codes for length in (1, 2, 3)
    ):
        raise InvalidInput(field, value, f"{E164_EXPECTED}, with a known country code")
    warning = None
    try:
        parsed = phonenumbers.parse(number, None)
        valid = phonenumbers.is_valid_number(parsed)
    except phonenumbers.NumberParseException:
        valid = False
    if not valid:
        warning = f"{number} is not a valid number in its country's numbering plan"
    return CheckedNumber(number, warning)


async def list_callerids(
    connection: asyncpg.Connection, account_id: int
) -> list[asyncpg.Record]:
    return list(await connection.fetch(LIST_CALLERIDS, account_id))


async def add_callerid(
    connection: asyncpg.Connection,
    account_id: int,
    cid: str,
    name: str | None,
    set_active: bool,
) -> asyncpg.Record:
    """Add a caller ID (checked with check_e164 first) and optionally make it active."""
    if name is not None and len(name) > MAX_NAME_LENGTH:
        raise InvalidInput("name", name, f"at most {MAX_NAME_LENGTH} characters")
    if await connection.fetchval(COUNT_CALLERIDS, account_id) >= MAX_CALLERIDS:
        raise Conflict(f"an account has at most {MAX_CALLERIDS} caller IDs")
    row = await connection.fetchrow(INSERT_CALLERID, account_id, cid, name)
    if row is None:
        raise Conflict(f"caller ID {cid} already exists on your account")
    log.info("caller ID added account=%s id=%s", account_id, row["id"])
    if set_active:
        row = await activate_callerid(connection, account_id, cid)
    return row


async def activate_callerid(
    connection: asyncpg.Connection, account_id: int, cid: str
) -> asyncpg.Record:
    """Make one of the account's caller IDs the active one."""
    callerid_id = await connection.fetchval(FIND_BY_CID, account_id, cid)
    if callerid_id is None:
        raise NotFound(f"caller ID {cid!r} not found among your caller IDs")
    await connection.execute(CLEAR_ACTIVE, account_id)
    row = await connection.fetchrow(ACTIVATE, account_id, callerid_id)
    log.info("caller ID activated account=%s id=%s", account_id, callerid_id)
    return row


async def delete_callerid(
    connection: asyncpg.Connection, account_id: int, callerid_id: int
) -> asyncpg.Record:
    row = await connection.fetchrow(DELETE_CALLERID, account_id, callerid_id)
    if row is None:
        raise NotFound(f"caller ID {callerid_id} not found among your caller IDs")
    log.info("caller ID deleted account=%s id=%s", account_id, callerid_id)
    return row


async def clear_active_callerid(connection: asyncpg.Connection, account_id: int) -> int:
    """Switch off the active caller ID; return how many rows changed (0 or 1)."""
    status = await connection.execute(CLEAR_ACTIVE, account_id)
    changed = int(status.split()[-1])
    log.info("caller ID cleared account=%s changed=%s", account_id, changed)
    return changed
