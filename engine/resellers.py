"""A reseller's clients: lookup, creation, status, plan, passwords and profile.

Every function takes the reseller's account id and finds a client by login
and parent together. A client of another reseller or of the operator
therefore raises the same NotFound, with the same message, as a login that
does not exist. Only the reseller's own plans (owner_id) can be given to its clients.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import asyncpg

from engine import accounts, callerids
from engine.errors import Forbidden, InvalidInput, NotFound
from engine.secrets import (
    PASSWORD_RULES,
    hash_password,
    new_login_password,
    new_sip_password,
    password_is_strong,
    verify_password,
)

log = logging.getLogger("callgate.accounts")

MAX_PASSWORD_LENGTH = 128
MAX_NAME_LENGTH = 80
MAX_EMAIL_LENGTH = 254
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
# Asterisk sound-folder names: "en", "fr", "pt_BR", "en-GB".
LANGUAGE_PATTERN = re.compile(r"^[a-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})?$")
PROFILE_FIELDS = ("name", "email", "phone", "language")
SERVICE_KINDS = ("ipauth", "webrtc")

CLIENT_COLUMNS = """
    a.id, a.login, a.status, a.balance, a.currency, a.plan_id, a.name, a.email,
    a.phone, a.language, a.created_at, p.name AS plan_name
"""

FIND_CLIENT = f"""
SELECT {CLIENT_COLUMNS}
FROM accounts a
LEFT JOIN plans p ON p.id = a.plan_id
WHERE a.login = $1 AND a.parent_id = $2 AND a.kind = 'client'
"""

LOCK_CLIENT = FIND_CLIENT + "FOR UPDATE OF a\n"

LIST_CLIENTS = f"""
SELECT {CLIENT_COLUMNS}
FROM accounts a
LEFT JOIN plans p ON p.id = a.plan_id
WHERE a.parent_id = $1 AND a.kind = 'client'
ORDER BY a.id
LIMIT $2 OFFSET $3
"""

COUNT_CLIENTS = """
SELECT count(*) FROM accounts WHERE parent_id = $1 AND kind = 'client'
"""

OWN_PLANS = """
SELECT p.id, p.name, p.signup, p.initial_credit, p.tariff_limit,
       (SELECT count(*) FROM rates r WHERE r.plan_id = p.id) AS rate_count
FROM plans p
WHERE p.owner_id = $1
ORDER BY p.id
"""

OWN_PLAN = """
SELECT id, name FROM plans WHERE id = $1 AND owner_id = $2
"""

SET_STATUS = """
UPDATE accounts
SET status = $2, updated_at = now()
WHERE id = $1
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

FIND_CLIENT_SIP = """
SELECT id, name, kind
FROM sip_accounts
WHERE account_id = $1 AND name = $2
FOR UPDATE
"""

MAIN_SIP = """
SELECT id, name, kind
FROM sip_accounts
WHERE account_id = $1 AND kind = 'main'
FOR UPDATE
"""

SET_SIP_PASSWORD = """
UPDATE sip_accounts
SET password = $2, updated_at = now()
WHERE id = $1
"""

# $2..$5 are the new values, and $6..$9 select which of them are written.
UPDATE_PROFILE = """
UPDATE accounts
SET name = CASE WHEN $6 THEN $2 ELSE name END,
    email = CASE WHEN $7 THEN $3 ELSE email END,
    phone = CASE WHEN $8 THEN $4 ELSE phone END,
    language = CASE WHEN $9 THEN $5 ELSE language END,
    updated_at = now()
WHERE id = $1
"""


@dataclass(frozen=True)
class Profile:
    """Profile changes: a field absent from `changed` is left as it is."""

    values: dict[str, str | None]
    warning: str | None = None

    @property
    def changed(self) -> frozenset[str]:
        return frozenset(self.values)


def not_found(login: str) -> NotFound:
    """Return the NotFound raised for a login that is missing or not the reseller's."""
    return NotFound(f"client {login!r} not found among your clients")


def check_password(field: str, password: str) -> str:
    """Return password if it is strong enough for a login, else raise InvalidInput."""
    if len(password) > MAX_PASSWORD_LENGTH or not password_is_strong(password):
        raise InvalidInput(
            field,
            f"<{len(password)} characters>",
            f"{PASSWORD_RULES}, at most {MAX_PASSWORD_LENGTH} characters",
        )
    return password


async def find_client(
    connection: asyncpg.Connection, reseller_id: int, login: str, *, lock: bool = False
) -> asyncpg.Record:
    """Return the reseller's client called login, locked for update when asked."""
    row = await connection.fetchrow(
        LOCK_CLIENT if lock else FIND_CLIENT, login, reseller_id
    )
    if row is None:
        raise not_found(login)
    return row


async def list_clients(
    connection: asyncpg.Connection, reseller_id: int, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """Return one page of the reseller's clients, oldest first, and their total."""
    rows = await connection.fetch(LIST_CLIENTS, reseller_id, limit, offset)
    total = await connection.fetchval(COUNT_CLIENTS, reseller_id)
    return list(rows), int(total)


async def own_plans(
    connection: asyncpg.Connection, reseller_id: int
) -> list[asyncpg.Record]:
    """Return the reseller's retail plans with their number of rates."""
    return list(await connection.fetch(OWN_PLANS, reseller_id))


async def own_plan(
    connection: asyncpg.Connection, reseller_id: int, plan_id: int
) -> asyncpg.Record:
    row = await connection.fetchrow(OWN_PLAN, plan_id, reseller_id)
    if row is None:
        raise NotFound(f"plan {plan_id} not found among your plans")
    return row


async def create_client(
    connection: asyncpg.Connection,
    reseller_id: int,
    currency: str,
    *,
    login: str | None,
    password: str | None,
    plan_id: int | None,
) -> accounts.NewAccount:
    """Create a client under the reseller with its main SIP account.

    Without plan_id the client gets the reseller's first sign-up plan. A
    login that is taken anywhere (another tenant's login or SIP name
    included) raises Conflict with the same message for every tenant.
    """
    if login is not None:
        accounts.validate_login(login)
    if password is not None:
        check_password("password", password)
    if plan_id is not None:
        await own_plan(connection, reseller_id, plan_id)
    created = await accounts.create_account(
        connection,
        kind="client",
        currency=currency,
        login=login,
        parent_id=reseller_id,
        plan_id=plan_id,
    )
    if password is not None:
        # argon2 takes tens of milliseconds of CPU on purpose, so it runs in
        # a worker thread instead of inside create_account.
        password_hash = await asyncio.to_thread(hash_password, password)
        await connection.execute(SET_PASSWORD, created.id, password_hash)
    log.info(
        "client created account=%s reseller=%s plan=%s",
        created.id,
        reseller_id,
        created.plan_id,
    )
    return created


async def set_client_status(
    connection: asyncpg.Connection, reseller_id: int, login: str, active: bool
) -> asyncpg.Record:
    """Activate or deactivate a client; a client blocked by the operator stays so."""
    client = await find_client(connection, reseller_id, login, lock=True)
    if client["status"] == "blocked":
        raise Forbidden(
            f"client {login!r} is blocked by the operator; only the operator can "
            "unblock it"
        )
    status = "active" if active else "inactive"
    if client["status"] != status:
        await connection.execute(SET_STATUS, client["id"], status)
        log.info("client status changed account=%s status=%s", client["id"], status)
    return await find_client(connection, reseller_id, login)


async def change_client_plan(
    connection: asyncpg.Connection, reseller_id: int, login: str, plan_id: int
) -> asyncpg.Record:
    """Move a client to one of the reseller's own plans."""
    client = await find_client(connection, reseller_id, login, lock=True)
    await own_plan(connection, reseller_id, plan_id)
    await connection.execute(SET_PLAN, client["id"], plan_id)
    log.info("plan changed account=%s plan=%s", client["id"], plan_id)
    return await find_client(connection, reseller_id, login)


async def check_login(connection: asyncpg.Connection, login: str) -> str:
    """Return "available" or "taken" for a login, the same for every tenant."""
    accounts.validate_login(login)
    return "taken" if await accounts.name_taken(connection, login) else "available"


async def _store_password(
    connection: asyncpg.Connection, account_id: int, password: str
) -> None:
    password_hash = await asyncio.to_thread(hash_password, password)
    await connection.execute(SET_PASSWORD, account_id, password_hash)


async def reset_password(
    connection: asyncpg.Connection, reseller_id: int, login: str
) -> tuple[asyncpg.Record, str]:
    """Give a client a new random login password; return it, for showing once."""
    client = await find_client(connection, reseller_id, login, lock=True)
    password = new_login_password()
    await _store_password(connection, client["id"], password)
    log.info("password reset account=%s", client["id"])
    return client, password


async def set_password(
    connection: asyncpg.Connection, reseller_id: int, login: str, password: str
) -> asyncpg.Record:
    """Set a client's login password to one chosen by the portal."""
    check_password("password", password)
    client = await find_client(connection, reseller_id, login, lock=True)
    await _store_password(connection, client["id"], password)
    log.info("password set account=%s", client["id"])
    return client


class WrongPassword(InvalidInput):
    """The current password given for a client's password change does not match."""


async def verify_client_password(
    connection: asyncpg.Connection, reseller_id: int, login: str, password: str
) -> asyncpg.Record | None:
    """Return the reseller's client if password is its login password, else None.

    A missing or foreign login costs the same argon2 time as a wrong password,
    so timing does not tell them apart.
    """
    client = await connection.fetchrow(FIND_CLIENT, login, reseller_id)
    stored = None
    if client is not None:
        stored = await connection.fetchval(
            "SELECT password_hash FROM accounts WHERE id = $1", client["id"]
        )
    too_long = len(password) > MAX_PASSWORD_LENGTH
    matches = await asyncio.to_thread(
        verify_password, None if too_long else stored, password[:MAX_PASSWORD_LENGTH]
    )
    return client if matches and client is not None else None


async def change_password(
    connection: asyncpg.Connection,
    reseller_id: int,
    login: str,
    current: str,
    new: str,
) -> asyncpg.Record:
    """Replace a client's login password after verifying the current one."""
    check_password("new_password", new)
    client = await find_client(connection, reseller_id, login, lock=True)
    stored = await connection.fetchval(PASSWORD_HASH, client["id"])
    if len(current) > MAX_PASSWORD_LENGTH or not await asyncio.to_thread(
        verify_password, stored, current
    ):
        raise WrongPassword(
            "current_password",
            f"<{len(current)} characters>",
            "the client's current login password",
        )
    await _store_password(connection, client["id"], new)
    log.info("password changed account=%s", client["id"])
    return client


async def reset_sip_password(
    connection: asyncpg.Connection, reseller_id: int, login: str, name: str | None
) -> tuple[str, str]:
    """Give a client's main SIP account, or its normal one called name, a new password.

    Return the SIP name and the new password. Service accounts (`_ipaN`,
    `_webN`) raise Forbidden: the Web Phone's comes from client-softphone-token.
    """
    client = await find_client(connection, reseller_id, login, lock=True)
    if name is None:
        sip = await connection.fetchrow(MAIN_SIP, client["id"])
    else:
        sip = await connection.fetchrow(FIND_CLIENT_SIP, client["id"], name)
    if sip is None:
        raise NotFound(f"SIP account {name!r} not found among the client's accounts")
    if sip["kind"] in SERVICE_KINDS:
        raise Forbidden(
            f"SIP account {sip['name']!r} is a service account; its password is "
            "not reset (a Web Phone gets its credentials from client-softphone-token)"
        )
    password = new_sip_password()
    await connection.execute(SET_SIP_PASSWORD, sip["id"], password)
    log.info("SIP password reset account=%s sip=%s", client["id"], sip["name"])
    return sip["name"], password


def check_profile(values: dict[str, str | None]) -> Profile:
    """Validate profile changes; an empty string clears a field.

    Raise InvalidInput naming the first invalid field, or when none of
    name, email, phone and language is given.
    """
    if not values:
        raise InvalidInput(
            "name", None, "at least one of name, email, phone and language"
        )
    cleaned: dict[str, str | None] = {}
    warning = None
    for field, raw in values.items():
        if field not in PROFILE_FIELDS:
            raise InvalidInput(field, raw, "one of name, email, phone and language")
        value = (raw or "").strip()
        if not value:
            cleaned[field] = None
        elif field == "name":
            if len(value) > MAX_NAME_LENGTH or not value.isprintable():
                raise InvalidInput(
                    "name",
                    raw,
                    f"printable text of at most {MAX_NAME_LENGTH} characters",
                )
            cleaned[field] = value
        elif field == "email":
            if len(value) > MAX_EMAIL_LENGTH or not EMAIL_PATTERN.match(value):
                raise InvalidInput(
                    "email", raw, "an email address such as a@example.com"
                )
            cleaned[field] = value
        elif field == "phone":
            checked = callerids.check_e164("phone", value)
            warning = checked.warning
            cleaned[field] = checked.number
        else:
            if not LANGUAGE_PATTERN.match(value):
                raise InvalidInput(
                    "language", raw, "a language code such as en, fr or pt_BR"
                )
            cleaned[field] = value
    return Profile(cleaned, warning)


async def update_profile(
    connection: asyncpg.Connection, reseller_id: int, login: str, profile: Profile
) -> asyncpg.Record:
    """Write the checked profile changes of a client; return the client."""
    client = await find_client(connection, reseller_id, login, lock=True)
    values = [profile.values.get(field) for field in PROFILE_FIELDS]
    flags = [field in profile.changed for field in PROFILE_FIELDS]
    await connection.execute(UPDATE_PROFILE, client["id"], *values, *flags)
    log.info(
        "profile updated account=%s fields=%s",
        client["id"],
        ",".join(sorted(profile.changed)),
    )
    return await find_client(connection, reseller_id, login)
