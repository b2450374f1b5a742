"""White-label portal, markup, Web Phone and account management endpoints.

They belong to the Reseller API and register on api.reseller.API. Portal
responses (`portal-bootstrap`, `client-*`) show what a client may see: its
own balance, calls at its retail cost and its retail rates. They never show
the reseller's balance, its wholesale rates, its markup or a call failure
that names the reseller's credit. Markup endpoints are for the reseller itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

from api.http import ApiError, Context, QueryParameter, Reply, timestamp
from api.reseller import (
    API,
    BOOLEAN,
    CLIENT,
    CLIENT_REF,
    ID,
    INTEGER,
    LOGIN,
    LOGIN_QUERY,
    NULLABLE_NUMBER,
    NULLABLE_TEXT,
    NUMBER,
    PAGE,
    SIP_SECRET,
    TEXT,
    TIME,
    array,
    body,
    client_view,
    login_field,
    number,
    page,
    page_query,
    reseller,
    schema,
)
from engine import callerids, history, markup, portal, ratelimit, resellers
from engine.apikeys import Caller
from engine.errors import InvalidInput

PORTAL_PAGE = 50
RATES_PAGE = 100
RECENT_CALLS = 5
API_VERSION = 1
PORTAL_ENDPOINTS = [
    "client-auth",
    "client-dashboard",
    "client-sip",
    "client-calls",
    "client-failed-calls",
    "client-refills",
    "client-callerids",
    "client-rates",
    "client-softphone-token",
    "register-agent-payment",
]

PORTAL_CLIENT = schema(
    {
        "id": ID,
        "login": TEXT,
        "name": NULLABLE_TEXT,
        "email": NULLABLE_TEXT,
        "phone": NULLABLE_TEXT,
        "language": NULLABLE_TEXT,
        "active": BOOLEAN,
        "balance": NUMBER,
        "currency": TEXT,
        "plan": schema({"id": {"type": ["integer", "null"]}, "name": NULLABLE_TEXT}),
        "sip_accounts": INTEGER,
        "created_at": TIME,
    }
)
PORTAL_SIP = schema(
    {
        "id": ID,
        "name": TEXT,
        "sip_login": TEXT,
        "kind": {"enum": ["main", "normal", "ipauth", "webrtc"]},
        "service": BOOLEAN,
        "active": BOOLEAN,
        "callerid": NULLABLE_TEXT,
        "ip": NULLABLE_TEXT,
        "port": {"type": ["integer", "null"]},
        "sip_parent": NULLABLE_TEXT,
        "created_at": TIME,
    }
)
PORTAL_CALL = schema(
    {
        "id": ID,
        "uniqueid": TEXT,
        "date": TIME,
        "sip_login": NULLABLE_TEXT,
        "number": TEXT,
        "destination": NULLABLE_TEXT,
        "callerid": NULLABLE_TEXT,
        "answered_seconds": INTEGER,
        "billed_seconds": INTEGER,
        "cost": NUMBER,
        "disposition": TEXT,
    }
)
FAILED_CALL = schema(
    {
        "id": ID,
        "uniqueid": TEXT,
        "date": TIME,
        "sip_login": NULLABLE_TEXT,
        "number": NULLABLE_TEXT,
        "destination": NULLABLE_TEXT,
        "dialstatus": NULLABLE_TEXT,
        "reason": TEXT,
        "hangup_cause": {"type": ["integer", "null"]},
    }
)
REFILL = schema(
    {
        "id": ID,
        "date": TIME,
        "amount": NUMBER,
        "kind": TEXT,
        "balance_after": NUMBER,
        "description": NULLABLE_TEXT,
    }
)
PORTAL_CALLERID = schema(
    {"id": ID, "cid": TEXT, "name": NULLABLE_TEXT, "active": BOOLEAN}
)
RETAIL_RATE = schema(
    {
        "prefix": TEXT,
        "destination": TEXT,
        "rate": NUMBER,
        "connect_fee": NUMBER,
        "initblock": INTEGER,
        "billingblock": INTEGER,
    }
)
RETAIL_PLAN = schema({"id": ID, "name": TEXT, "rates": INTEGER})
PRICE = schema(
    {
        "prefix": TEXT,
        "destination": TEXT,
        "initblock": INTEGER,
        "billingblock": INTEGER,
        "wholesale_rate": NUMBER,
        "wholesale_connect_fee": NUMBER,
        "rate": NULLABLE_NUMBER,
        "connect_fee": NULLABLE_NUMBER,
        "new_rate": NUMBER,
        "new_connect_fee": NUMBER,
    }
)
MARKUP_PERCENT = {
    "type": ["number", "string"],
    "description": f"0 to {markup.MAX_MARKUP_PERCENT}, at most 4 decimals; 50 = +50 %.",
}
SAMPLE_QUERY = QueryParameter(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": 500, "default": RATES_PAGE},
    "Prices shown, by prefix.",
)
LOGIN_BODY = body({"login": LOGIN}, ["login"])
WARNING = {"warning": TEXT}


def portal_client(row: asyncpg.Record, sip_accounts: int) -> dict[str, Any]:
    """Return a client as its portal shows it: its own data at retail only."""
    return {
        "id": row["id"],
        "login": row["login"],
        "name": row["name"],
        "email": row["email"],
        "phone": row["phone"],
        "language": row["language"],
        "active": row["status"] == "active",
        "balance": number(row["balance"]),
        "currency": row["currency"].strip(),
        "plan": {"id": row["plan_id"], "name": row["plan_name"]},
        "sip_accounts": sip_accounts,
        "created_at": timestamp(row["created_at"]),
    }


def portal_call(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "uniqueid": row["uniqueid"],
        "date": timestamp(row["started_at"]),
        "sip_login": row["sip_name"],
        "number": row["number"],
        "destination": row["destination"],
        "callerid": row["callerid"],
        "answered_seconds": row["answered_seconds"],
        "billed_seconds": row["billed_seconds"],
        "cost": number(row["cost"]),
        "disposition": row["disposition"],
    }


async def _client(context: Context, *, query: bool = True) -> asyncpg.Record:
    caller = reseller(context)
    login = login_field(context, query=query)
    async with context.database.pool.acquire() as connection:
        return await resellers.find_client(connection, caller.account_id, login)


def _lockout_key(caller: Caller, login: str) -> str:
    # Per reseller and login, so one reseller's failures never lock out the
    # client of another reseller that uses the same portal login.
    return f"portal-auth:{caller.account_id}:{login}"


async def _refuse_locked(
    connection: asyncpg.Connection, context: Context, key: str
) -> None:
    settings = context.settings
    count = await ratelimit.current(
        connection, key, settings.portal_auth_failure_window
    )
    if count.hits >= settings.portal_auth_failure_limit:
        raise ratelimit.limited("wrong passwords for this client login", count)


@API.endpoint(
    "portal-bootstrap",
    "GET",
    summary="Installer check for a portal: the key works; what the portal can use.",
    response=schema(
        {
            "portal": schema(
                {
                    "api_version": INTEGER,
                    "currency": TEXT,
                    "server_time": TEXT,
                    "webphone": schema({"enabled": BOOLEAN, "ws_url": NULLABLE_TEXT}),
                    "endpoints": array(TEXT),
                }
            )
        }
    ),
)
async def portal_bootstrap(context: Context) -> Reply:
    reseller(context)
    settings = context.settings
    enabled = bool(settings.janus_secret)
    return Reply(
        {
            "portal": {
                "api_version": API_VERSION,
                "currency": settings.currency,
                "server_time": timestamp(datetime.now(UTC)),
                "webphone": {
                    "enabled": enabled,
                    "ws_url": settings.webphone_ws_url if enabled else None,
                },
                "endpoints": PORTAL_ENDPOINTS,
            }
        }
    )


@API.endpoint(
    "client-auth",
    "POST",
    summary=(
        "Verify a client's login and password for the portal; repeated failures "
        "lock the login out for a while (HTTP 429)."
    ),
    body=body({"login": LOGIN, "password": TEXT}, ["login", "password"]),
    response=schema({"client": PORTAL_CLIENT}),
)
async def client_auth(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    password = context.body.secret("password")
    assert password is not None
    key = _lockout_key(caller, login)
    async with context.database.pool.acquire() as connection:
        await _refuse_locked(connection, context, key)
        client = await resellers.verify_client_password(
            connection, caller.account_id, login, password
        )
        if client is None:
            await ratelimit.hit(
                connection, key, context.settings.portal_auth_failure_window
            )
            raise ApiError(401, "invalid login or password for the client portal")
        if client["status"] != "active":
            raise ApiError(403, f"client {login!r} is {client['status']}")
        sip_count = await portal.count_sip_accounts(connection, client["id"])
    return Reply({"client": portal_client(client, sip_count)})


@API.endpoint(
    "client-dashboard",
    "GET",
    summary="A client's dashboard: profile, visible balance and recent calls.",
    query=(LOGIN_QUERY,),
    response=schema(
        {
            "client": PORTAL_CLIENT,
            "recent_calls": array(PORTAL_CALL),
            "totals": schema(
                {"calls": INTEGER, "cost": NUMBER, "billed_seconds": INTEGER}
            ),
        }
    ),
)
async def client_dashboard(context: Context) -> Reply:
    client = await _client(context)
    async with context.database.pool.acquire() as connection:
        sip_count = await portal.count_sip_accounts(connection, client["id"])
        calls = await history.calls_page(connection, client["id"], RECENT_CALLS, 0)
    return Reply(
        {
            "client": portal_client(client, sip_count),
            "recent_calls": [portal_call(row) for row in calls.rows],
            "totals": {
                "calls": calls.total,
                "cost": number(calls.total_amount),
                "billed_seconds": calls.total_seconds,
            },
        }
    )


@API.endpoint(
    "client-sip",
    "GET",
    summary=(
        "A client's SIP accounts, without passwords; service accounts (_ipaN, "
        "_webN) only with include_service=1."
    ),
    query=(
        LOGIN_QUERY,
        QueryParameter(
            "include_service",
            {"enum": ["0", "1"]},
            "1 to list IP authorizations and Web Phone accounts too.",
        ),
    ),
    response=schema({"sip_accounts": array(PORTAL_SIP)}),
)
async def client_sip(context: Context) -> Reply:
    client = await _client(context)
    include_service = context.query.boolean("include_service")
    async with context.database.pool.acquire() as connection:
        rows = await portal.list_sip_accounts(connection, client["id"], include_service)
    return Reply(
        {
            "sip_accounts": [
                {
                    "id": row["id"],
                    "name": row["name"],
                    "sip_login": row["name"],
                    "kind": row["kind"],
                    "service": row["kind"] in resellers.SERVICE_KINDS,
                    "active": row["status"] == "active",
                    "callerid": row["callerid"],
                    "ip": row["ip"],
                    "port": row["port"],
                    "sip_parent": row["parent_name"],
                    "created_at": timestamp(row["created_at"]),
                }
                for row in rows
            ]
        }
    )


@API.endpoint(
    "client-calls",
    "GET",
    summary="A client's answered calls at its retail cost, newest first.",
    query=(LOGIN_QUERY, *page_query(PORTAL_PAGE)),
    response=schema(
        {
            "calls": array(PORTAL_CALL),
            **PAGE,
            "total_cost": NUMBER,
            "total_billed_seconds": INTEGER,
        }
    ),
)
async def client_calls(context: Context) -> Reply:
    client = await _client(context)
    limit, offset = page(context, PORTAL_PAGE)
    async with context.database.pool.acquire() as connection:
        calls = await history.calls_page(connection, client["id"], limit, offset)
    return Reply(
        {
            "calls": [portal_call(row) for row in calls.rows],
            "total": calls.total,
            "limit": limit,
            "offset": offset,
            "total_cost": number(calls.total_amount),
            "total_billed_seconds": calls.total_seconds,
        }
    )


@API.endpoint(
    "client-failed-calls",
    "GET",
    summary="A client's failed and rejected calls, newest first.",
    query=(LOGIN_QUERY, *page_query(PORTAL_PAGE)),
    response=schema({"failed_calls": array(FAILED_CALL), **PAGE}),
)
async def client_failed_calls(context: Context) -> Reply:
    client = await _client(context)
    limit, offset = page(context, PORTAL_PAGE)
    async with context.database.pool.acquire() as connection:
        rows, total = await portal.failed_calls_page(
            connection, client["id"], limit, offset
        )
    return Reply(
        {
            "failed_calls": [
                {
                    "id": row["id"],
                    "uniqueid": row["uniqueid"],
                    "date": timestamp(row["created_at"]),
                    "sip_login": row["sip_name"],
                    "number": row["number"],
                    "destination": row["destination"],
                    "dialstatus": row["dialstatus"],
                    "reason": portal.client_reason(row["reason"]),
                    "hangup_cause": row["hangup_cause"],
                }
                for row in rows
            ],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


@API.endpoint(
    "client-refills",
    "GET",
    summary="Credits to a client's balance (transfers, payments, vouchers).",
    query=(LOGIN_QUERY, *page_query(PORTAL_PAGE)),
    response=schema({"refills": array(REFILL), **PAGE, "total_amount": NUMBER}),
)
async def client_refills(context: Context) -> Reply:
    client = await _client(context)
    limit, offset = page(context, PORTAL_PAGE)
    async with context.database.pool.acquire() as connection:
        refills = await history.refills_page(connection, client["id"], limit, offset)
    return Reply(
        {
            "refills": [
                {
                    "id": row["id"],
                    "date": timestamp(row["created_at"]),
                    "amount": number(row["amount"]),
                    "kind": row["kind"],
                    "balance_after": number(row["balance_after"]),
                    "description": row["note"],
                }
                for row in refills.rows
            ],
            "total": refills.total,
            "limit": limit,
            "offset": offset,
            "total_amount": number(refills.total_amount),
        }
    )


@API.endpoint(
    "client-callerids",
    "GET",
    summary="A client's caller IDs; at most one is active.",
    query=(LOGIN_QUERY,),
    response=schema({"callerids": array(PORTAL_CALLERID)}),
)
async def client_callerids(context: Context) -> Reply:
    client = await _client(context)
    async with context.database.pool.acquire() as connection:
        rows = await callerids.list_callerids(connection, client["id"])
    return Reply(
        {
            "callerids": [
                {
                    "id": row["id"],
                    "cid": row["cid"],
                    "name": row["name"],
                    "active": row["active"],
                }
                for row in rows
            ]
        }
    )


@API.endpoint(
    "client-rates",
    "GET",
    summary="The retail rates of a client's plan, by prefix.",
    query=(LOGIN_QUERY, *page_query(RATES_PAGE)),
    response=schema({"rates": array(RETAIL_RATE), **PAGE, "currency": TEXT}),
)
async def client_rates(context: Context) -> Reply:
    client = await _client(context)
    limit, offset = page(context, RATES_PAGE)
    async with context.database.pool.acquire() as connection:
        rows, total = await portal.retail_rates_page(
            connection, client["id"], limit, offset
        )
    return Reply(
        {
            "rates": [
                {
                    "prefix": row["prefix"],
                    "destination": row["destination"],
                    "rate": number(row["rate"]),
                    "connect_fee": number(row["connect_fee"]),
                    "initblock": row["initblock"],
                    "billingblock": row["billingblock"],
                }
                for row in rows
            ],
            "total": total,
            "limit": limit,
            "offset": offset,
            "currency": client["currency"].strip(),
        }
    )


@API.endpoint(
    "client-softphone-token",
    "POST",
    summary=(
        "Ensure the client's <login>_web1 WebRTC account exists and return a Janus "
        "token with the SIP credentials a Web Phone registers with."
    ),
    body=LOGIN_BODY,
    response=schema(
        {
            "softphone": schema(
                {
                    "token": TEXT,
                    "expires_at": INTEGER,
                    "expires": TEXT,
                    "plugins": array(TEXT),
                    "ws_url": TEXT,
                    "sip": schema(
                        {
                            "username": TEXT,
                            "password": TEXT,
                            "identity": TEXT,
                            "domain": TEXT,
                            "display_name": TEXT,
                            "callerid": NULLABLE_TEXT,
                        }
                    ),
                }
            )
        }
    ),
)
async def client_softphone_token(context: Context) -> Reply:
    caller = reseller(context)
    settings = context.settings
    login = login_field(context)
    if not settings.janus_secret:
        raise ApiError(
            503,
            "the Web Phone is not configured: set CALLGATE_JANUS_SECRET to the "
            "Janus token_auth_secret",
        )
    async with context.database.transaction() as connection:
        client = await resellers.find_client(
            connection, caller.account_id, login, lock=True
        )
        account = await portal.ensure_webphone_account(connection, client)
    expiry = int(time.time()) + settings.softphone_token_ttl
    domain = settings.webphone_sip_domain
    return Reply(
        {
            "softphone": {
                "token": portal.janus_token(
                    settings.janus_secret, settings.janus_plugins, expiry
                ),
                "expires_at": expiry,
                "expires": timestamp(datetime.fromtimestamp(expiry, UTC)),
                "plugins": settings.janus_plugins.split(","),
                "ws_url": settings.webphone_ws_url,
                "sip": {
                    "username": account.name,
                    "password": account.password,
                    "identity": f"sip:{account.name}@{domain}",
                    "domain": domain,
                    "display_name": client["name"] or client["login"],
                    "callerid": account.callerid,
                },
            }
        }
    )


def _retail_plans(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [
        {"id": row["id"], "name": row["name"], "rates": row["rate_count"]}
        for row in rows
    ]


def _prices(prices: list[markup.Price]) -> list[dict[str, Any]]:
    def optional(value: Any) -> Any:
        return None if value is None else number(value)

    return [
        {
            "prefix": price.prefix,
            "destination": price.destination,
            "initblock": price.initblock,
            "billingblock": price.billingblock,
            "wholesale_rate": number(price.wholesale_rate),
            "wholesale_connect_fee": number(price.wholesale_connect_fee),
            "rate": optional(price.current_rate),
            "connect_fee": optional(price.current_connect_fee),
            "new_rate": number(price.new_rate),
            "new_connect_fee": number(price.new_connect_fee),
        }
        for price in prices
    ]


MARKUP_VIEW = schema(
    {
        "markup_percent": NUMBER,
        "plans": array(RETAIL_PLAN),
        "prices": array(PRICE),
    }
)


@API.endpoint(
    "agent-markup",
    "GET",
    summary="Your markup and retail tariff, with the wholesale cost of each prefix.",
    query=(SAMPLE_QUERY,),
    response=schema({"markup": MARKUP_VIEW}),
)
async def agent_markup(context: Context) -> Reply:
    caller = reseller(context)
    limit = context.query.integer("limit", default=RATES_PAGE, maximum=500)
    async with context.database.pool.acquire() as connection:
        current = await markup.tariff(connection, caller.account_id, limit=limit)
    return Reply(
        {
            "markup": {
                "markup_percent": number(markup.percent(current.markup)),
                "plans": _retail_plans(current.plans),
                "prices": _prices(current.prices),
            }
        }
    )


@API.endpoint(
    "preview-agent-markup",
    "POST",
    summary="Show the retail prices a new markup would give; writes nothing.",
    body=body({"markup_percent": MARKUP_PERCENT, "limit": INTEGER}, ["markup_percent"]),
    response=schema(
        {
            "preview": schema(
                {
                    "markup_percent": NUMBER,
                    "current_markup_percent": NUMBER,
                    "prices": array(PRICE),
                }
            )
        }
    ),
)
async def preview_agent_markup(context: Context) -> Reply:
    caller = reseller(context)
    new_markup = markup.parse_percent(context.body.values.get("markup_percent"))
    limit = context.body.integer("limit", default=RATES_PAGE, maximum=500)
    async with context.database.pool.acquire() as connection:
        preview = await markup.tariff(
            connection, caller.account_id, new_markup, limit=limit
        )
    return Reply(
        {
            "preview": {
                "markup_percent": number(markup.percent(new_markup)),
                "current_markup_percent": number(markup.percent(preview.markup)),
                "prices": _prices(preview.prices),
            }
        }
    )


@API.endpoint(
    "set-agent-markup",
    "POST",
    summary=(
        "Apply a new markup to all your retail plans (and those of resellers "
        "below you) in one transaction; an unchanged markup rewrites nothing."
    ),
    body=body({"markup_percent": MARKUP_PERCENT}, ["markup_percent"]),
    response=schema(
        {
            "markup": schema(
                {
                    "markup_percent": NUMBER,
                    "previous_markup_percent": NUMBER,
                    "changed": BOOLEAN,
                    "plans": array(RETAIL_PLAN),
                }
            )
        }
    ),
)
async def set_agent_markup(context: Context) -> Reply:
    caller = reseller(context)
    new_markup = markup.parse_percent(context.body.values.get("markup_percent"))
    async with context.database.transaction() as connection:
        change = await markup.set_markup(connection, caller.account_id, new_markup)
    return Reply(
        {
            "markup": {
                "markup_percent": number(markup.percent(change.markup)),
                "previous_markup_percent": number(markup.percent(change.previous)),
                "changed": change.changed,
                "plans": _retail_plans(change.plans),
            }
        }
    )


@API.endpoint(
    "check-client-login",
    ("GET", "POST"),
    summary=(
        "Whether a login is available or taken, the same answer for every tenant; "
        "rate-limited per API key."
    ),
    query=(QueryParameter("login", TEXT, "The login to check."),),
    body=LOGIN_BODY,
    response=schema({"login": TEXT, "status": {"enum": ["available", "taken"]}}),
)
async def check_client_login(context: Context) -> Reply:
    caller = reseller(context)
    from_query = context.request.method != "POST" or (
        "login" not in context.body.values and "login" in context.query.values
    )
    login = login_field(context, query=from_query)
    settings = context.settings
    async with context.database.pool.acquire() as connection:
        await ratelimit.hit_within(
            connection,
            f"login-check:{caller.key_id}",
            settings.login_check_limit,
            settings.login_check_window,
            "login checks with this API key",
        )
        status = await resellers.check_login(connection, login)
    return Reply({"login": login, "status": status})


@API.endpoint(
    "reset-client-password",
    "POST",
    summary="Give a client a new temporary login password, returned only here.",
    body=LOGIN_BODY,
    response=schema({"client": CLIENT_REF, "password": TEXT}),
)
async def reset_client_password(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    async with context.database.transaction() as connection:
        client, password = await resellers.reset_password(
            connection, caller.account_id, login
        )
    return Reply(
        {"client": {"id": client["id"], "login": client["login"]}, "password": password}
    )


@API.endpoint(
    "set-client-password",
    "POST",
    summary="Set a client's login password chosen by the portal.",
    body=body({"login": LOGIN, "password": TEXT}, ["login", "password"]),
    response=schema({"client": CLIENT_REF}),
)
async def set_client_password(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    password = context.body.secret("password")
    assert password is not None
    async with context.database.transaction() as connection:
        client = await resellers.set_password(
            connection, caller.account_id, login, password
        )
    return Reply({"client": {"id": client["id"], "login": client["login"]}})


@API.endpoint(
    "client-change-password",
    "POST",
    summary=(
        "Change a client's login password after verifying the current one; wrong "
        "current passwords count toward the portal login lockout."
    ),
    body=body(
        {"login": LOGIN, "current_password": TEXT, "new_password": TEXT},
        ["login", "current_password", "new_password"],
    ),
    response=schema({"client": CLIENT_REF}),
)
async def client_change_password(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    current = context.body.secret("current_password")
    new = context.body.secret("new_password")
    assert current is not None and new is not None
    resellers.check_password("new_password", new)
    key = _lockout_key(caller, login)
    async with context.database.pool.acquire() as connection:
        await _refuse_locked(connection, context, key)
        try:
            async with connection.transaction():
                client = await resellers.change_password(
                    connection, caller.account_id, login, current, new
                )
        except resellers.WrongPassword:
            await ratelimit.hit(
                connection, key, context.settings.portal_auth_failure_window
            )
            raise
    return Reply({"client": {"id": client["id"], "login": client["login"]}})


@API.endpoint(
    "reset-client-sip-password",
    "POST",
    summary=(
        "Give a client's main SIP account, or the normal one named by name, a new "
        "password, returned only here; service accounts are refused (403)."
    ),
    body=body({"login": LOGIN, "name": TEXT}, ["login"]),
    response=schema({"sip_account": SIP_SECRET}),
)
async def reset_client_sip_password(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    name = context.body.text("name", required=False, max_length=80)
    async with context.database.transaction() as connection:
        sip_name, password = await resellers.reset_sip_password(
            connection, caller.account_id, login, name.strip() if name else None
        )
    return Reply(
        {"sip_account": {"name": sip_name, "sip_login": sip_name, "password": password}}
    )


@API.endpoint(
    "client-profile-update",
    "POST",
    summary=(
        "Update a client's name, email, phone (E.164) or language; an empty "
        "string clears a field."
    ),
    body=body(
        {"login": LOGIN, "name": TEXT, "email": TEXT, "phone": TEXT, "language": TEXT},
        ["login"],
    ),
    response=schema({"client": CLIENT, **WARNING}, optional=("warning",)),
)
async def client_profile_update(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    changes: dict[str, str | None] = {}
    for field in resellers.PROFILE_FIELDS:
        value = context.body.values.get(field)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > 300:
            raise InvalidInput(field, value, "text of at most 300 characters")
        changes[field] = value
    profile = resellers.check_profile(changes)
    async with context.database.transaction() as connection:
        row = await resellers.update_profile(
            connection, caller.account_id, login, profile
        )
    data: dict[str, Any] = {"client": client_view(row)}
    if profile.warning:
        data["warning"] = profile.warning
    return Reply(data)
