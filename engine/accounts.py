"""Accounts (admin, reseller, client), their names and SIP accounts."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from engine import plans
from engine.errors import Conflict, InvalidInput, NotFound
from engine.ledger import change_balance
from engine.secrets import hash_password, new_sip_password

log = logging.getLogger("callgate.accounts")

ADMIN_LOGIN = "admin"
# Logins are SIP endpoint names too, so they avoid "_" (reserved for the
# service accounts <name>_ipaN and <name>_webN) and stay short enough for
# ps_auths.username (40 characters) with a suffix.
LOGIN_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{2,31}$")
SERVICE_NAME = re.compile(r"_(ipa|web)[0-9]+$")


@dataclass(frozen=True)
class NewAccount:
    id: int
    login: str
    kind: str
    plan_id: int | None
    password: str | None
    sip_name: str | None
    sip_password: str | None


def validate_login(login: str) -> str:
    if not isinstance(login, str) or not LOGIN_PATTERN.match(login):
        raise InvalidInput(
            "login",
            login,
            "3 to 32 letters, digits, '.' or '-', starting with a letter or digit",
        )
    return login


async def ensure_admin(connection: asyncpg.Connection, currency: str) -> int:
    """Return the operator's admin account, creating it on first use."""
    admin_id = await connection.fetchval(
        "SELECT id FROM accounts WHERE kind = 'admin' ORDER BY id LIMIT 1"
    )
    if admin_id is not None:
        return int(admin_id)
    admin_id = await connection.fetchval(
        """
        INSERT INTO accounts (kind, login, currency) VALUES ('admin', $1, $2)
        ON CONFLICT (login) DO NOTHING RETURNING id
        """,
        ADMIN_LOGIN,
        currency,
    )
    if admin_id is None:
        admin_id = await connection.fetchval(
            "SELECT id FROM accounts WHERE login = $1", ADMIN_LOGIN
        )
    else:
        await connection.execute(
            "INSERT INTO names (name, account_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            ADMIN_LOGIN,
            admin_id,
        )
    return int(admin_id)


async def claim_name(
    connection: asyncpg.Connection, name: str, account_id: int
) -> bool:
    """Reserve a login or SIP name in the shared namespace; False if taken."""
    claimed = await connection.fetchval(
        """
        INSERT INTO names (name, account_id) VALUES ($1, $2)
        ON CONFLICT (name) DO NOTHING RETURNING true
        """,
        name,
        account_id,
    )
    return bool(claimed)


async def name_taken(connection: asyncpg.Connection, name: str) -> bool:
    return bool(
        await connection.fetchval("SELECT true FROM names WHERE name = $1", name)
    )


async def _generate_login(connection: asyncpg.Connection) -> str:
    """Return a free 10-digit numeric login, skipping every name already taken."""
    for _ in range(100):
        candidate = str(secrets.randbelow(9_000_000_000) + 1_000_000_000)
        # Leave room for the SIP numbers that follow a numeric login.
        if not await name_taken(connection, candidate):
            return candidate
    raise Conflict("could not find a free login; try again")


async def get_by_login(connection: asyncpg.Connection, login: str) -> asyncpg.Record:
    row = await connection.fetchrow("SELECT * FROM accounts WHERE login = $1", login)
    if row is None:
        raise NotFound(f"account {login!r} not found")
    return row


async def create_account(
    connection: asyncpg.Connection,
    *,
    kind: str,
    currency: str,
    login: str | None = None,
    parent_id: int | None = None,
    plan_id: int | None = None,
    balance: Decimal = Decimal(0),
    credit_limit: Decimal = Decimal(0),
    postpaid: bool = False,
    password: str | None = None,
    sip_password: str | None = None,
    markup: Decimal = Decimal("0.20"),
    max_concurrent: int = 0,
) -> NewAccount:
    """Create a reseller or client in the caller's transaction.

    A client gets its main SIP account, named after its login. A reseller
    gets a retail plan derived from its wholesale plan at its markup. A
    balance or a plan's initial credit is booked through the ledger.
    """
    if kind not in ("reseller", "client"):
        raise InvalidInput("kind", kind, "client or reseller")
    admin_id = await ensure_admin(connection, currency)
    parent = await connection.fetchrow(
        "SELECT id, kind, ancestors, tenant_id FROM accounts WHERE id = $1",
        parent_id if parent_id is not None else admin_id,
    )
    if parent is None or parent["kind"] == "client":
        raise InvalidInput("reseller", parent_id, "an existing reseller")
    if parent["kind"] == "reseller":
        ancestors = [parent["id"], *parent["ancestors"]]
        tenant_id = parent["tenant_id"]
    else:
        ancestors = []
        tenant_id = None

    if login is None:
        login = await _generate_login(connection)
    validate_login(login)
    if plan_id is None and kind == "client" and parent["kind"] == "reseller":
        plan_id = await connection.fetchval(
            "SELECT id FROM plans WHERE owner_id = $1 ORDER BY signup DESC, id LIMIT 1",
            parent["id"],
        )
    if plan_id is None:
        raise InvalidInput("plan", None, "a plan for the new account (--plan NAME)")
    plan = await connection.fetchrow("SELECT * FROM plans WHERE id = $1", plan_id)
    if plan is None:
        raise NotFound(f"plan {plan_id} not found")

    account_id = await connection.fetchval(
        """
        INSERT INTO accounts (
            kind, parent_id, ancestors, tenant_id, login, password_hash, billing,
            credit_limit, currency, plan_id, markup, max_concurrent
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        ON CONFLICT (login) DO NOTHING
        RETURNING id
        """,
        kind,
        parent["id"],
        ancestors,
        tenant_id,
        login,
        hash_password(password) if password else None,
        "postpaid" if postpaid else "prepaid",
        credit_limit,
        currency,
        plan_id,
        markup,
        max_concurrent,
    )
    if account_id is None or not await claim_name(connection, login, account_id):
        raise Conflict(f"login {login!r} is taken")
    if kind == "reseller" and tenant_id is None:
        tenant_id = account_id
        await connection.execute(
            "UPDATE accounts SET tenant_id = $1 WHERE id = $1", account_id
        )

    opening = balance + (plan["initial_credit"] if kind == "client" else Decimal(0))
    if opening != 0:
        await change_balance(
            connection, account_id, opening, "adjustment", note="opening balance"
        )

    sip_name = None
    if kind == "client":
        sip_password = sip_password or new_sip_password()
        await connection.execute(
            """
            INSERT INTO sip_accounts (account_id, name, kind, password, callerid)
            VALUES ($1, $2, 'main', $3, $2)
            """,
            account_id,
            login,
            sip_password,
        )
        sip_name = login
    else:
        await create_retail_plan(
            connection, account_id, login, plan_id, markup, tenant_id
        )
        sip_password = None

    log.info("account created id=%s kind=%s parent=%s", account_id, kind, parent["id"])
    return NewAccount(
        account_id, login, kind, plan_id, password, sip_name, sip_password
    )


async def create_retail_plan(
    connection: asyncpg.Connection,
    reseller_id: int,
    login: str,
    wholesale_plan_id: int,
    markup: Decimal,
    tenant_id: int | None,
    name: str | None = None,
    *,
    signup: bool = True,
) -> int:
    """Create a reseller's retail plan: its wholesale rates x (1 + markup)."""
    wholesale = await connection.fetchrow(
        "SELECT * FROM plans WHERE id = $1", wholesale_plan_id
    )
    options = plans.PlanOptions(
        free_seconds=wholesale["free_seconds"],
        decimals=wholesale["decimals"],
        rounding=wholesale["rounding"],
        intl_prefix=wholesale["intl_prefix"],
        route_order=wholesale["route_order"],
        tariff_limit=wholesale["tariff_limit"],
        signup=signup,
    )
    plan_id = await plans.create_plan(
        connection,
        name or f"{login}-retail",
        options,
        owner_id=reseller_id,
        parent_plan_id=wholesale_plan_id,
        tenant_id=tenant_id,
    )
    await plans.derive_rates(connection, plan_id, wholesale_plan_id, markup)
    # Calls of its clients follow the wholesale plan's routes.
    await connection.execute(
        """
        INSERT INTO routes (plan_id, prefix, trunk_id, priority)
        SELECT $1, prefix, trunk_id, priority FROM routes WHERE plan_id = $2
        """,
        plan_id,
        wholesale_plan_id,
    )
    return plan_id


async def next_sip_name(connection: asyncpg.Connection, login: str) -> str:
    """Return the next free SIP name after a login: 1234567801 -> 1234567802.

    A non-numeric login gets <login>-2, <login>-3, ...; names taken anywhere
    in the shared namespace are skipped.
    """
    if login.isdigit():
        number = int(login)
        for offset in range(1, 10_000):
            candidate = str(number + offset).zfill(len(login))
            if not await name_taken(connection, candidate):
                return candidate
    else:
        for sequence in range(2, 10_000):
            candidate = f"{login}-{sequence}"
            if not await name_taken(connection, candidate):
                return candidate
    raise Conflict(f"no free SIP name left after {login!r}")


async def show_account(connection: asyncpg.Connection, login: str) -> dict[str, object]:
    """Return what `account show` prints: balance, reservations and status."""
    account = await get_by_login(connection, login)
    live = await connection.fetch(
        """
        SELECT r.uniqueid, r.amount, s.number, s.created_at
        FROM reservations r JOIN sessions s ON s.uniqueid = r.uniqueid
        WHERE r.account_id = $1 AND s.state = 'live'
        ORDER BY s.created_at
        """,
        account["id"],
    )
    plan_name = await connection.fetchval(
        "SELECT name FROM plans WHERE id = $1", account["plan_id"]
    )
    credit = account["credit_limit"] if account["billing"] == "postpaid" else Decimal(0)
    return {
        "id": account["id"],
        "login": account["login"],
        "kind": account["kind"],
        "status": account["status"],
        "billing": account["billing"],
        "plan": plan_name,
        "currency": account["currency"].strip(),
        "balance": str(account["balance"]),
        "credit_limit": str(account["credit_limit"]),
        "reserved": str(account["reserved"]),
        "available": str(account["balance"] + credit - account["reserved"]),
        "max_concurrent": account["max_concurrent"],
        "live_sessions": [
            {
                "uniqueid": row["uniqueid"],
                "reserved": str(row["amount"]),
                "number": row["number"],
                "since": row["created_at"].isoformat(),
            }
            for row in live
        ],
    }
