"""The Reseller API: a reseller manages its own clients at `/reseller-api/index.php`.

Envelope `{"ok": true, <named keys>}`; money is printed as JSON numbers, as
the reference document's examples do. Only a reseller's API key is accepted.
Every client is looked up by login among the reseller's own clients, so
another tenant's or the operator's client gets the same 404 as a login
that does not exist. The portal, markup and Web Phone endpoints are in
api.portal, registered on the same API.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from api.http import (
    Api,
    ApiError,
    Context,
    FieldError,
    QueryParameter,
    Reply,
    timestamp,
)
from engine import payments, plans, ratelimit, resellers
from engine.apikeys import Caller
from engine.errors import Conflict, InvalidInput
from engine.secrets import new_login_password

API = Api(
    "reseller",
    "/reseller-api",
    envelope="named",
    title="callgate Reseller API",
    description=(
        "A reseller creates and manages its own clients, grants them retail "
        "credit, registers their payments, sets its markup and serves a "
        "white-label client portal. Each endpoint is served at "
        "/reseller-api/index.php?endpoint=NAME and at the alias /reseller-api/NAME."
    ),
)

MAX_PAGE = 500
DEFAULT_PAGE = 10
MAX_LOGIN_LENGTH = 64
# Most significant digits a JSON number carries through a double exactly.
FLOAT_DIGITS = 15

NUMBER = {"type": "number"}
NULLABLE_NUMBER = {"type": ["number", "null"]}
ID = {"type": "integer", "minimum": 1}
NULLABLE_ID = {"type": ["integer", "null"]}
TEXT = {"type": "string"}
NULLABLE_TEXT = {"type": ["string", "null"]}
BOOLEAN = {"type": "boolean"}
INTEGER = {"type": "integer"}
TIME = {"type": ["string", "null"], "description": "UTC, YYYY-MM-DD HH:MM:SS"}
AMOUNT = {
    "type": ["number", "string"],
    "description": 'Above 0, at most 6 decimals; a decimal string such as "20.00".',
}
LOGIN = {"type": ["string", "integer"], "description": "The client's login."}


def schema(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> Any:
    """Return an object schema whose fields are required unless listed optional."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


def body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    # Unknown fields are ignored, so portal scripts that send more still work.
    return {"type": "object", "properties": properties, "required": required}


def array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def page_query(default: int = DEFAULT_PAGE) -> tuple[QueryParameter, ...]:
    return (
        QueryParameter(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": default},
            f"Rows per page, at most {MAX_PAGE}.",
        ),
        QueryParameter(
            "offset",
            {"type": "integer", "minimum": 0, "default": 0},
            "Rows to skip.",
        ),
    )


LOGIN_QUERY = QueryParameter("login", TEXT, "The client's login.")
PAGE = {"total": INTEGER, "limit": INTEGER, "offset": INTEGER}

RESELLER = schema(
    {
        "id": ID,
        "username": TEXT,
        "group": {"const": "Agent"},
        "balance": NUMBER,
        "active": {"const": True},
    }
)
PLAN = schema(
    {
        "id": ID,
        "name": TEXT,
        "signup": BOOLEAN,
        "initial_credit": NUMBER,
        "tariff_limit": INTEGER,
        "agent_rates": INTEGER,
    }
)
CLIENT = schema(
    {
        "id": ID,
        "login": TEXT,
        "active": BOOLEAN,
        "status": {"enum": ["active", "inactive", "blocked"]},
        "balance": NUMBER,
        "currency": TEXT,
        "plan_id": NULLABLE_ID,
        "plan_name": NULLABLE_TEXT,
        "name": NULLABLE_TEXT,
        "email": NULLABLE_TEXT,
        "phone": NULLABLE_TEXT,
        "language": NULLABLE_TEXT,
        "created_at": TIME,
    }
)
CLIENT_SIP = schema(
    {"name": TEXT, "kind": {"enum": ["main", "normal"]}, "active": BOOLEAN}
)
CLIENT_DETAIL = schema({**CLIENT["properties"], "sip_accounts": array(CLIENT_SIP)})
CLIENT_REF = schema({"id": ID, "login": TEXT})
SIP_SECRET = schema({"name": TEXT, "sip_login": TEXT, "password": TEXT})
PAYMENT = schema(
    {
        "id": ID,
        "type": {"enum": ["transfer", "agent_payment"]},
        "login": TEXT,
        "amount": NUMBER,
        "currency": TEXT,
        "status": {"enum": ["success", "pending", "failed"]},
        "provider": NULLABLE_TEXT,
        "external_id": TEXT,
        "provider_txid": NULLABLE_TEXT,
        "balance_after": NULLABLE_NUMBER,
        "created_at": TIME,
        "updated_at": TIME,
        "credited_at": TIME,
    }
)
# The document's `status=success` means credited, stored as paid.
STATUS_FILTER = {"success": "paid", "pending": "pending", "failed": "failed"}
SHOWN_STATUS = {stored: shown for shown, stored in STATUS_FILTER.items()}


def number(amount: Decimal) -> int | Decimal:
    """Return money as a JSON number: 1 for 1.000000, 987.6543 for 987.654300.

    The response writer prints a Decimal as its exact digits, so no amount
    passes through a float.
    """
    value = amount.normalize()
    if value == value.to_integral_value():
        return int(value)
    return Decimal(format(value, "f"))


def reseller(context: Context) -> Caller:
    """Return the caller if its key is a reseller's; raise ApiError 403 otherwise."""
    caller = context.caller
    if caller.kind != "reseller":
        raise ApiError(
            403,
            f"the Reseller API needs a reseller's API key; this key belongs to "
            f"a {caller.kind} account (use the Client API)",
        )
    return caller


def login_field(context: Context, *, query: bool = False) -> str:
    """Return the `login` field of the body (or query); any text is looked up."""
    fields = context.query if query else context.body
    login = fields.text("login", max_length=MAX_LOGIN_LENGTH, expected="a client login")
    assert login is not None
    return login.strip()


def money_field(context: Context, name: str) -> Decimal:
    """Return a required amount above 0: a JSON number or a decimal string."""
    value = context.body.values.get(name)
    if value is None:
        raise FieldError(name, None, "an amount above 0", missing=True)
    if not isinstance(value, int | str | Decimal) or isinstance(value, bool):
        raise InvalidInput(name, value, "an amount above 0 such as 20.00")
    return plans.parse_money(name, value, allow_zero=False)


def page(context: Context, default: int = DEFAULT_PAGE) -> tuple[int, int]:
    limit = context.query.integer("limit", default=default, minimum=1, maximum=MAX_PAGE)
    offset = context.query.integer("offset", default=0, minimum=0, maximum=10**9)
    return limit, offset


def client_view(row: asyncpg.Record) -> dict[str, Any]:
    """Return the reseller's view of a client, without any secret."""
    return {
        "id": row["id"],
        "login": row["login"],
        "active": row["status"] == "active",
        "status": row["status"],
        "balance": number(row["balance"]),
        "currency": row["currency"].strip(),
        "plan_id": row["plan_id"],
        "plan_name": row["plan_name"],
        "name": row["name"],
        "email": row["email"],
        "phone": row["phone"],
        "language": row["language"],
        "created_at": timestamp(row["created_at"]),
    }


def payment_view(row: asyncpg.Record) -> dict[str, Any]:
    provider = row["provider"]
    balance_after = row["balance_after"]
    return {
        "id": row["id"],
        "type": "transfer"
        if provider == payments.TRANSFER_PROVIDER
        else "agent_payment",
        "login": row["login"],
        "amount": number(row["amount"]),
        "currency": row["currency"].strip(),
        "status": SHOWN_STATUS[row["status"]],
        "provider": provider or None,
        "external_id": row["external_id"],
        "provider_txid": row["provider_txid"],
        "balance_after": None if balance_after is None else number(balance_after),
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
        "credited_at": timestamp(row["credited_at"]),
    }


@API.endpoint(
    "me",
    "GET",
    summary="The reseller's account.",
    response=schema({"reseller": RESELLER}),
)
async def me(context: Context) -> Reply:
    caller = reseller(context)
    return Reply(
        {
            "reseller": {
                "id": caller.account_id,
                "username": caller.login,
                "group": "Agent",
                "balance": number(caller.balance),
                # authenticate accepts only keys of active accounts.
                "active": True,
            }
        }
    )


@API.endpoint(
    "plans",
    "GET",
    summary="The reseller's own retail plans; agent_rates is the number of rates.",
    response=schema({"plans": array(PLAN)}),
)
async def list_plans(context: Context) -> Reply:
    caller = reseller(context)
    async with context.database.pool.acquire() as connection:
        rows = await resellers.own_plans(connection, caller.account_id)
    return Reply(
        {
            "plans": [
                {
                    "id": row["id"],
                    "name": row["name"],
                    "signup": row["signup"],
                    "initial_credit": number(row["initial_credit"]),
                    "tariff_limit": row["tariff_limit"],
                    "agent_rates": row["rate_count"],
                }
                for row in rows
            ]
        }
    )


async def _count_taken_login(context: Context, caller: Caller) -> None:
    # Counted outside the failed creation's transaction, which rolls back.
    async with context.database.pool.acquire() as connection:
        await ratelimit.hit(
            connection,
            f"login-check:{caller.key_id}",
            context.settings.login_check_window,
        )


async def _refuse_login_probes(context: Context, caller: Caller) -> None:
    settings = context.settings
    async with context.database.pool.acquire() as connection:
        count = await ratelimit.current(
            connection, f"login-check:{caller.key_id}", settings.login_check_window
        )
    if count.hits >= settings.login_check_limit:
        raise ratelimit.limited("login checks with this API key", count)


@API.endpoint(
    "create-client",
    "POST",
    summary=(
        "Create a client on one of your plans with its main SIP account; the SIP "
        "password (and a generated login password) are returned only here."
    ),
    body=body({"login": LOGIN, "password": TEXT, "plan_id": ID}, []),
    response=schema(
        {"client": CLIENT, "sip_account": SIP_SECRET, "password": TEXT},
        optional=("password",),
    ),
)
async def create_client(context: Context) -> Reply:
    caller = reseller(context)
    login = context.body.text(
        "login", required=False, max_length=MAX_LOGIN_LENGTH, expected="a login"
    )
    password = context.body.secret("password", required=False)
    plan_id = None
    if context.body.values.get("plan_id") is not None:
        plan_id = context.body.integer("plan_id")
    generated = None
    if password is None:
        generated = password = new_login_password()
    if login is not None:
        await _refuse_login_probes(context, caller)
    try:
        async with context.database.transaction() as connection:
            created = await resellers.create_client(
                connection,
                caller.account_id,
                context.settings.currency,
                login=login.strip() if login else None,
                password=password,
                plan_id=plan_id,
            )
            client = await resellers.find_client(
                connection, caller.account_id, created.login
            )
    except Conflict:
        await _count_taken_login(context, caller)
        raise
    assert created.sip_name is not None and created.sip_password is not None
    data: dict[str, Any] = {
        "client": client_view(client),
        "sip_account": {
            "name": created.sip_name,
            "sip_login": created.sip_name,
            "password": created.sip_password,
        },
    }
    if generated is not None:
        data["password"] = generated
    return Reply(data)


@API.endpoint(
    "client",
    "GET",
    summary="One of your clients, with its SIP account names (never passwords).",
    query=(LOGIN_QUERY,),
    response=schema({"client": CLIENT_DETAIL}),
)
async def get_client(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context, query=True)
    async with context.database.pool.acquire() as connection:
        row = await resellers.find_client(connection, caller.account_id, login)
        sips = await connection.fetch(
            "SELECT name, kind, status FROM sip_accounts"
            " WHERE account_id = $1 AND kind IN ('main', 'normal')"
            " ORDER BY kind <> 'main', id",
            row["id"],
        )
    view = client_view(row)
    view["sip_accounts"] = [
        {"name": sip["name"], "kind": sip["kind"], "active": sip["status"] == "active"}
        for sip in sips
    ]
    return Reply({"client": view})


@API.endpoint(
    "clients",
    "GET",
    summary="Your clients, oldest first.",
    query=page_query(),
    response=schema({"clients": array(CLIENT), **PAGE}),
)
async def list_clients(context: Context) -> Reply:
    caller = reseller(context)
    limit, offset = page(context)
    async with context.database.pool.acquire() as connection:
        rows, total = await resellers.list_clients(
            connection, caller.account_id, limit, offset
        )
    return Reply(
        {
            "clients": [client_view(row) for row in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


@API.endpoint(
    "transfer",
    "POST",
    summary=(
        "Grant retail credit to your client; your wholesale balance is charged "
        "only when the client calls. external_id makes a retry safe."
    ),
    body=body(
        {"login": LOGIN, "amount": AMOUNT, "external_id": TEXT, "currency": TEXT},
        ["login", "amount"],
    ),
    response=schema({"transfer": PAYMENT, "replayed": BOOLEAN}),
)
async def transfer(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    amount = money_field(context, "amount")
    external_id = context.body.text(
        "external_id", required=False, max_length=payments.MAX_EXTERNAL_ID_LENGTH
    )
    currency = payments.check_currency(
        context.body.text("currency", required=False, max_length=8),
        context.settings.currency,
    )
    async with context.database.transaction() as connection:
        client = await resellers.find_client(connection, caller.account_id, login)
        outcome = await payments.apply_credit(
            connection,
            payments.Credit(
                reseller_id=caller.account_id,
                client_id=client["id"],
                provider=payments.TRANSFER_PROVIDER,
                external_id=payments.check_external_id(
                    external_id or payments.new_external_id()
                ),
                amount=amount,
                currency=currency,
                status="paid",
            ),
        )
    return Reply(
        {"transfer": payment_view(outcome.payment), "replayed": outcome.replayed}
    )


@API.endpoint(
    "register-agent-payment",
    "POST",
    summary=(
        "Register a client payment received by your portal (Plisio, Heleket, ...). "
        "Applied once per provider and external_id; the client is credited when "
        "the status becomes paid."
    ),
    body=body(
        {
            "login": LOGIN,
            "amount": AMOUNT,
            "currency": TEXT,
            "provider": TEXT,
            "external_id": TEXT,
            "provider_txid": TEXT,
            "status": {"enum": ["pending", "paid", "failed"], "default": "paid"},
        },
        ["login", "amount", "provider", "external_id"],
    ),
    response=schema({"payment": PAYMENT, "replayed": BOOLEAN}),
)
async def register_agent_payment(context: Context) -> Reply:
    caller = reseller(context)
    fields = context.body
    login = login_field(context)
    amount = money_field(context, "amount")
    currency = payments.check_currency(
        fields.text("currency", required=False, max_length=8),
        context.settings.currency,
    )
    provider = fields.text("provider", max_length=64, expected="a provider name")
    external_id = fields.text("external_id", max_length=payments.MAX_EXTERNAL_ID_LENGTH)
    txid = fields.text(
        "provider_txid", required=False, max_length=payments.MAX_TXID_LENGTH
    )
    status = fields.text("status", required=False, max_length=16) or "paid"
    assert provider is not None and external_id is not None
    credit_status = payments.check_status(status.strip().lower())
    async with context.database.transaction() as connection:
        client = await resellers.find_client(connection, caller.account_id, login)
        outcome = await payments.apply_credit(
            connection,
            payments.Credit(
                reseller_id=caller.account_id,
                client_id=client["id"],
                provider=payments.check_provider(provider.strip().lower()),
                external_id=payments.check_external_id(external_id),
                amount=amount,
                currency=currency,
                status=credit_status,
                provider_txid=txid,
            ),
        )
    return Reply(
        {"payment": payment_view(outcome.payment), "replayed": outcome.replayed}
    )


@API.endpoint(
    "transactions",
    "GET",
    summary="Your transfers and agent payments, newest first.",
    query=(
        QueryParameter(
            "status",
            {"enum": ["success", "pending", "failed"]},
            "success (credited), pending or failed; all when absent.",
        ),
        *page_query(),
    ),
    response=schema({"transactions": array(PAYMENT), **PAGE}),
)
async def transactions(context: Context) -> Reply:
    caller = reseller(context)
    limit, offset = page(context)
    shown = context.query.text("status", required=False, max_length=16)
    status = None
    if shown is not None:
        status = STATUS_FILTER.get(shown.strip().lower())
        if status is None:
            raise InvalidInput("status", shown, "success, pending or failed")
    async with context.database.pool.acquire() as connection:
        rows, total = await payments.list_payments(
            connection, caller.account_id, status, limit, offset
        )
    return Reply(
        {
            "transactions": [payment_view(row) for row in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


@API.endpoint(
    "set-client-status",
    "POST",
    summary="Activate or deactivate one of your clients.",
    body=body({"login": LOGIN, "active": BOOLEAN}, ["login", "active"]),
    response=schema({"client": CLIENT}),
)
async def set_client_status(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    if context.body.values.get("active") is None:
        raise FieldError("active", None, "true or false", missing=True)
    active = context.body.boolean("active")
    async with context.database.transaction() as connection:
        row = await resellers.set_client_status(
            connection, caller.account_id, login, active
        )
    return Reply({"client": client_view(row)})


@API.endpoint(
    "change-plan",
    "POST",
    summary="Move one of your clients to one of your plans.",
    body=body({"login": LOGIN, "plan_id": ID}, ["login", "plan_id"]),
    response=schema({"client": CLIENT}),
)
async def change_plan(context: Context) -> Reply:
    caller = reseller(context)
    login = login_field(context)
    plan_id = context.body.integer("plan_id")
    async with context.database.transaction() as connection:
        row = await resellers.change_client_plan(
            connection, caller.account_id, login, plan_id
        )
    return Reply({"client": client_view(row)})


# The portal, markup and Web Phone endpoints register on API when imported.
from api import portal  # noqa: E402, F401
