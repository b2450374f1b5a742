"""The Client API: an account manages itself through `/client-api/index.php`.

Every handler acts on the account of the API key and nothing else: SIP
accounts, IP authorizations, caller IDs, calls and refills are looked up by
that account's id, so another account's object gets the same 404 as one
that does not exist. A reseller's or the admin's key acts on that account
itself, never on its clients.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from api.http import Api, Context, QueryParameter, Reply, flag, money, timestamp
from engine import callerids, clients, history, provisioning, ratelimit, vouchers

API = Api(
    "client",
    "/client-api",
    envelope="data",
    title="callgate Client API",
    description=(
        "An account manages its own SIP accounts, IP authorizations, caller IDs, "
        "plan, vouchers and password. Each endpoint is served at "
        "/client-api/index.php?endpoint=NAME and at the alias /client-api/NAME."
    ),
)

MAX_PAGE = 500
MAX_OFFSET = 10**9
DEFAULT_PAGE = 50

MONEY = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{4}$"}
FLAG = {"type": "integer", "enum": [0, 1]}
ID = {"type": "integer", "minimum": 1}
TEXT = {"type": "string"}
NULLABLE_TEXT = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "description": "UTC, YYYY-MM-DD HH:MM:SS"}


def _object(properties: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(properties)
    return schema


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    # Unknown fields are ignored, so scripts that send extra fields still work.
    return {"type": "object", "properties": properties, "required": required}


ME = _object(
    {
        "id": ID,
        "username": TEXT,
        "balance": MONEY,
        "active": FLAG,
        "id_plan": {"type": ["integer", "null"]},
        "plan_name": NULLABLE_TEXT,
    }
)
BALANCE = _object({"username": TEXT, "balance": MONEY, "currency": TEXT})
PLAN = _object({"id": ID, "name": TEXT, "current": FLAG})
SIP = _object(
    {
        "id": ID,
        "name": TEXT,
        "sip_login": TEXT,
        "password": NULLABLE_TEXT,
        "main": FLAG,
        "status": FLAG,
        "callerid": NULLABLE_TEXT,
        "created_at": TIME,
    }
)
IP_AUTH = _object(
    {
        "id": ID,
        "sip_login": TEXT,
        "peer_name": TEXT,
        "ip": TEXT,
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "status": FLAG,
    }
)
CALLERID = _object({"id": ID, "cid": TEXT, "name": NULLABLE_TEXT, "active": FLAG})
CALL = _object(
    {
        "id": ID,
        "uniqueid": TEXT,
        "date": TIME,
        "sip_login": NULLABLE_TEXT,
        "number": TEXT,
        "destination": NULLABLE_TEXT,
        "callerid": NULLABLE_TEXT,
        "answered_seconds": {"type": "integer"},
        "billed_seconds": {"type": "integer"},
        "cost": MONEY,
        "disposition": TEXT,
    }
)
REFILL = _object(
    {
        "id": ID,
        "date": TIME,
        "amount": MONEY,
        "kind": TEXT,
        "balance_after": MONEY,
        "description": NULLABLE_TEXT,
    }
)
PAGE_QUERY = (
    QueryParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
        f"Rows per page, at most {MAX_PAGE}.",
    ),
    QueryParameter(
        "offset",
        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        "Rows to skip, newest first.",
    ),
)
# Request fields: what the handlers accept, which is a little wider than what
# they return (digit strings for numbers, numbers for codes, null for absent).
ID_IN = {
    "type": ["integer", "string"],
    "minimum": 1,
    "maximum": 2**63 - 1,
    "pattern": r"^\s*0*[1-9][0-9]{0,17}\s*$",
}


def _text_in(max_length: int, pattern: str = r"\S") -> dict[str, Any]:
    return {
        "type": ["string", "integer"],
        "minLength": 1,
        "maxLength": max_length,
        "pattern": pattern,
    }


SIP_NAME_IN = _text_in(80)
CID_IN = {**_text_in(32, r"^\s*\+[1-9][0-9]{7,14}\s*$"), "type": "string"}
NAME_IN = {**_text_in(callerids.MAX_NAME_LENGTH), "type": ["string", "integer", "null"]}
PASSWORD_IN = {"type": "string", "minLength": 10, "maxLength": 128}
SIP_PASSWORD_IN = {
    "type": "string",
    "pattern": provisioning.SIP_PASSWORD_PATTERN.pattern,
}
BOOLEAN_IN = {
    "type": ["boolean", "integer", "string", "null"],
    "enum": [True, False, 0, 1, "true", "false", "1", "0", None],
}
ID_BODY = _body({"id": ID_IN}, ["id"])
WARNING = {"warning": {"type": "string"}}


def _sip(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "sip_login": row["name"],
        "password": row["password"],
        "main": flag(row["kind"] == "main"),
        "status": flag(row["status"] == "active"),
        "callerid": row["callerid"],
        "created_at": timestamp(row["created_at"]),
    }


def _ip_auth(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "sip_login": row["sip_login"],
        "peer_name": row["peer_name"],
        "ip": row["ip"],
        "port": row["port"],
        "status": flag(row["status"] == "active"),
    }


def _callerid(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "cid": row["cid"],
        "name": row["name"],
        "active": flag(row["active"]),
    }


def _page(context: Context) -> tuple[int, int]:
    limit = context.query.integer(
        "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE
    )
    offset = context.query.integer("offset", default=0, minimum=0, maximum=MAX_OFFSET)
    return limit, offset


@API.endpoint("me", "GET", summary="Account status.", response=ME)
async def me(context: Context) -> Reply:
    caller = context.caller
    return Reply(
        {
            "id": caller.account_id,
            "username": caller.login,
            "balance": money(caller.balance),
            # authenticate accepts only active accounts.
            "active": 1,
            "id_plan": caller.plan_id,
            "plan_name": caller.plan_name,
        }
    )


@API.endpoint("balance", "GET", summary="Balance.", response=BALANCE)
async def balance(context: Context) -> Reply:
    caller = context.caller
    return Reply(
        {
            "username": caller.login,
            "balance": money(caller.balance),
            "currency": caller.currency,
        }
    )


@API.endpoint(
    "plans",
    "GET",
    summary="Tariff plans offered to this account.",
    response={"type": "array", "items": PLAN},
)
async def plans(context: Context) -> Reply:
    async with context.database.pool.acquire() as connection:
        rows = await clients.offered_plans(connection, context.caller.account_id)
    current = context.caller.plan_id
    return Reply(
        [
            {
                "id": row["id"],
                "name": row["name"],
                "current": flag(row["id"] == current),
            }
            for row in rows
        ]
    )


@API.endpoint(
    "change-plan",
    "POST",
    summary="Change to one of the offered plans.",
    body=_body({"id_plan": ID_IN}, ["id_plan"]),
    response=_object({"id_plan": ID, "plan_name": TEXT}),
)
async def change_plan(context: Context) -> Reply:
    plan_id = context.body.integer("id_plan")
    async with context.database.transaction() as connection:
        plan = await clients.change_plan(
            connection, context.caller.account_id, context.caller.kind, plan_id
        )
    return Reply({"id_plan": plan["id"], "plan_name": plan["name"]}, "Plan changed")


@API.endpoint(
    "sip",
    "GET",
    summary="SIP accounts with SIP login and password.",
    response={"type": "array", "items": SIP},
)
async def sip(context: Context) -> Reply:
    async with context.database.pool.acquire() as connection:
        rows = await provisioning.list_sip_accounts(
            connection, context.caller.account_id
        )
    return Reply([_sip(row) for row in rows])


@API.endpoint(
    "create-sip",
    "POST",
    summary="Create an additional SIP account; without a password one is generated.",
    body=_body({"password": {**SIP_PASSWORD_IN, "type": ["string", "null"]}}, []),
    response=SIP,
)
async def create_sip(context: Context) -> Reply:
    password = context.body.secret("password", required=False)
    async with context.database.transaction() as connection:
        row = await provisioning.create_sip_account(
            connection, context.caller.account_id, context.caller.login, password
        )
    return Reply(_sip(row), "SIP account created")


@API.endpoint(
    "update-sip-password",
    "POST",
    summary="Change a SIP account's password.",
    body=_body(
        {"name": SIP_NAME_IN, "password": SIP_PASSWORD_IN}, ["name", "password"]
    ),
    response=SIP,
)
async def update_sip_password(context: Context) -> Reply:
    name = context.body.text("name", max_length=80)
    password = context.body.secret("password")
    assert name is not None and password is not None
    async with context.database.transaction() as connection:
        row = await provisioning.update_sip_password(
            connection, context.caller.account_id, name, password
        )
    return Reply(_sip(row), "SIP password updated")


@API.endpoint(
    "delete-sip",
    "POST",
    summary="Delete an additional SIP account (never the main one).",
    body=_body({"name": SIP_NAME_IN}, ["name"]),
    response=_object({"name": TEXT}),
)
async def delete_sip(context: Context) -> Reply:
    name = context.body.text("name", max_length=80)
    assert name is not None
    async with context.database.transaction() as connection:
        await provisioning.delete_sip_account(
            connection, context.caller.account_id, name
        )
    return Reply({"name": name}, "SIP account deleted")


@API.endpoint(
    "ip-auth-list",
    "GET",
    summary="SIP accounts and their IP authorizations.",
    response=_object(
        {
            "sip_accounts": {
                "type": "array",
                "items": _object({"id": ID, "sip_login": TEXT}),
            },
            "ip_auth": {"type": "array", "items": IP_AUTH},
        }
    ),
)
async def ip_auth_list(context: Context) -> Reply:
    account_id = context.caller.account_id
    async with context.database.pool.acquire() as connection:
        sips = await provisioning.list_sip_accounts(connection, account_id)
        rows = await provisioning.list_ip_authorizations(connection, account_id)
    return Reply(
        {
            "sip_accounts": [
                {"id": row["id"], "sip_login": row["name"]} for row in sips
            ],
            "ip_auth": [_ip_auth(row) for row in rows],
        }
    )


@API.endpoint(
    "ip-auth-create",
    "POST",
    summary="Authorize a public static PBX IP address for one of your SIP accounts.",
    body=_body(
        {
            "sip_login": SIP_NAME_IN,
            "ip": {"type": "string", "minLength": 2, "maxLength": 64},
            "port": {
                "type": ["integer", "string", "null"],
                "minimum": 1,
                "maximum": 65535,
                "pattern": r"^\s*0*[1-9][0-9]{0,4}\s*$",
                "default": 5060,
            },
        },
        ["sip_login", "ip"],
    ),
    response=IP_AUTH,
)
async def ip_auth_create(context: Context) -> Reply:
    sip_login = context.body.text("sip_login", max_length=80)
    ip_text = context.body.text("ip", max_length=64, expected="an IP address")
    port = context.body.integer("port", default=5060, minimum=1, maximum=65535)
    assert sip_login is not None and ip_text is not None
    ip = provisioning.check_ip(
        ip_text, allow_private=context.settings.allow_private_ip_auth
    )
    async with context.database.transaction() as connection:
        row = await provisioning.create_ip_authorization(
            connection, context.caller.account_id, sip_login, ip, port
        )
    return Reply(_ip_auth(row), "IP authentication created")


async def _set_ip_auth(context: Context, active: bool) -> asyncpg.Record:
    ip_auth_id = context.body.integer("id")
    async with context.database.transaction() as connection:
        return await provisioning.set_ip_authorization_status(
            connection, context.caller.account_id, ip_auth_id, active
        )


@API.endpoint(
    "ip-auth-disable",
    "POST",
    summary="Disable an IP authorization; Asterisk no longer sees the peer.",
    body=ID_BODY,
    response=IP_AUTH,
)
async def ip_auth_disable(context: Context) -> Reply:
    row = await _set_ip_auth(context, False)
    return Reply(_ip_auth(row), "IP authentication disabled")


@API.endpoint(
    "ip-auth-enable",
    "POST",
    summary="Re-enable a disabled IP authorization.",
    body=ID_BODY,
    response=IP_AUTH,
)
async def ip_auth_enable(context: Context) -> Reply:
    row = await _set_ip_auth(context, True)
    return Reply(_ip_auth(row), "IP authentication enabled")


@API.endpoint(
    "ip-auth-delete",
    "POST",
    summary="Delete an IP authorization permanently.",
    body=ID_BODY,
    response=IP_AUTH,
)
async def ip_auth_delete(context: Context) -> Reply:
    ip_auth_id = context.body.integer("id")
    async with context.database.transaction() as connection:
        row = await provisioning.delete_ip_authorization(
            connection, context.caller.account_id, ip_auth_id
        )
    data = _ip_auth(row)
    return Reply(data, "IP authentication deleted")


@API.endpoint(
    "callerids",
    "GET",
    summary="Caller IDs of the account; at most one is active.",
    response={"type": "array", "items": CALLERID},
)
async def list_callerids(context: Context) -> Reply:
    async with context.database.pool.acquire() as connection:
        rows = await callerids.list_callerids(connection, context.caller.account_id)
    return Reply([_callerid(row) for row in rows])


@API.endpoint(
    "add-callerid",
    "POST",
    summary="Add a caller ID in E.164 form, optionally making it the active one.",
    body=_body({"cid": CID_IN, "name": NAME_IN, "set_active": BOOLEAN_IN}, ["cid"]),
    response=CALLERID,
    top_level=WARNING,
)
async def add_callerid(context: Context) -> Reply:
    cid_text = context.body.text("cid", max_length=32, expected=callerids.E164_EXPECTED)
    name = context.body.text(
        "name", required=False, max_length=callerids.MAX_NAME_LENGTH
    )
    set_active = context.body.boolean("set_active")
    assert cid_text is not None
    checked = callerids.check_e164("cid", cid_text)
    async with context.database.transaction() as connection:
        row = await callerids.add_callerid(
            connection, context.caller.account_id, checked.number, name, set_active
        )
    extra = {"warning": checked.warning} if checked.warning else {}
    return Reply(_callerid(row), "Caller ID added", extra)


@API.endpoint(
    "set-callerid",
    "POST",
    summary="Make one of your existing caller IDs the active one.",
    body=_body({"cid": CID_IN}, ["cid"]),
    response=CALLERID,
)
async def set_callerid(context: Context) -> Reply:
    cid = context.body.text("cid", max_length=32, expected=callerids.E164_EXPECTED)
    assert cid is not None
    async with context.database.transaction() as connection:
        row = await callerids.activate_callerid(
            connection, context.caller.account_id, cid.strip()
        )
    return Reply(_callerid(row), "Caller ID set as active")


@API.endpoint(
    "delete-callerid",
    "POST",
    summary="Delete one of your caller IDs.",
    body=ID_BODY,
    response=CALLERID,
)
async def delete_callerid(context: Context) -> Reply:
    callerid_id = context.body.integer("id")
    async with context.database.transaction() as connection:
        row = await callerids.delete_callerid(
            connection, context.caller.account_id, callerid_id
        )
    return Reply(_callerid(row), "Caller ID deleted")


@API.endpoint(
    "clear-callerid",
    "POST",
    summary="Clear the active caller ID; SIP accounts present their own again.",
    body=_body({}, []),
    response=_object({"cleared": FLAG}),
)
async def clear_callerid(context: Context) -> Reply:
    async with context.database.transaction() as connection:
        changed = await callerids.clear_active_callerid(
            connection, context.caller.account_id
        )
    return Reply({"cleared": flag(changed > 0)}, "Caller ID cleared")


@API.endpoint(
    "calls",
    "GET",
    summary="Call history (CDRs), newest first.",
    query=PAGE_QUERY,
    response=_object(
        {
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "total_cost": MONEY,
            "total_billed_seconds": {"type": "integer"},
            "calls": {"type": "array", "items": CALL},
        }
    ),
)
async def calls(context: Context) -> Reply:
    limit, offset = _page(context)
    async with context.database.pool.acquire() as connection:
        page = await history.calls_page(
            connection, context.caller.account_id, limit, offset
        )
    rows = [
        {
            "id": row["id"],
            "uniqueid": row["uniqueid"],
            "date": timestamp(row["started_at"]),
            "sip_login": row["sip_name"],
            "number": row["number"],
            "destination": row["destination"],
            "callerid": row["callerid"],
            "answered_seconds": row["answered_seconds"],
            "billed_seconds": row["billed_seconds"],
            "cost": money(row["cost"]),
            "disposition": row["disposition"],
        }
        for row in page.rows
    ]
    return Reply(
        {
            "total": page.total,
            "limit": limit,
            "offset": offset,
            "total_cost": money(page.total_amount),
            "total_billed_seconds": page.total_seconds,
            "calls": rows,
        }
    )


@API.endpoint(
    "refills",
    "GET",
    summary="Refill history (credits to the balance), newest first.",
    query=PAGE_QUERY,
    response=_object(
        {
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "total_amount": MONEY,
            "refills": {"type": "array", "items": REFILL},
        }
    ),
)
async def refills(context: Context) -> Reply:
    limit, offset = _page(context)
    async with context.database.pool.acquire() as connection:
        page = await history.refills_page(
            connection, context.caller.account_id, limit, offset
        )
    rows = [
        {
            "id": row["id"],
            "date": timestamp(row["created_at"]),
            "amount": money(row["amount"]),
            "kind": row["kind"],
            "balance_after": money(row["balance_after"]),
            "description": row["note"],
        }
        for row in page.rows
    ]
    return Reply(
        {
            "total": page.total,
            "limit": limit,
            "offset": offset,
            "total_amount": money(page.total_amount),
            "refills": rows,
        }
    )


@API.endpoint(
    "redeem-voucher",
    "POST",
    summary="Redeem a voucher code and add its value to the balance.",
    body=_body({"voucher": _text_in(64)}, ["voucher"]),
    response=_object({"voucher": TEXT, "amount": MONEY, "balance": MONEY}),
)
async def redeem_voucher(context: Context) -> Reply:
    code = context.body.text("voucher", max_length=64, expected="a voucher code")
    assert code is not None
    caller, settings = context.caller, context.settings
    # Counted outside the redemption's transaction, so failed guesses count.
    async with context.database.pool.acquire() as connection:
        await ratelimit.hit_within(
            connection,
            f"voucher:{caller.key_id}",
            settings.voucher_limit,
            settings.voucher_window,
            "voucher redemptions with this API key",
        )
    async with context.database.transaction() as connection:
        redemption = await vouchers.redeem_voucher(
            connection,
            caller.account_id,
            caller.reseller_id,
            caller.currency,
            code.strip(),
        )
    return Reply(
        {
            "voucher": code.strip(),
            "amount": money(redemption.amount),
            "balance": money(redemption.balance),
        },
        "Voucher redeemed",
    )


@API.endpoint(
    "change-password",
    "POST",
    summary="Change the account's login password.",
    body=_body(
        {"current_password": PASSWORD_IN, "new_password": PASSWORD_IN},
        ["current_password", "new_password"],
    ),
    response=_object({"username": TEXT}),
)
async def change_password(context: Context) -> Reply:
    current = context.body.secret("current_password")
    new = context.body.secret("new_password")
    assert current is not None and new is not None
    caller, settings = context.caller, context.settings
    clients.check_new_password(new)
    # Wrong current passwords count like failed authentications, per key, so a
    # stolen key cannot be used to guess the login password quickly.
    failure_key = f"password:{caller.key_id}"
    async with context.database.pool.acquire() as connection:
        count = await ratelimit.current(
            connection, failure_key, settings.auth_failure_window
        )
        if count.hits >= settings.auth_failure_limit:
            raise ratelimit.limited("wrong current passwords with this API key", count)
        try:
            async with connection.transaction():
                await clients.change_password(
                    connection, caller.account_id, current, new
                )
        except clients.WrongPassword:
            await ratelimit.hit(connection, failure_key, settings.auth_failure_window)
            raise
    return Reply({"username": caller.login}, "Password changed")
