"""The SMS API: `/sms-api/index.php`, for client and reseller keys.

A client key sends for its own account and may not name a client_login. A
reseller key (or the operator's) must name one of its own clients in
client_login. The message is charged to that client at retail and to each
reseller above at its own price. Another account's message, campaign or
client gets the same 404 as one that does not exist.

Delivery reports do not use an API key: the provider signs them (see
`delivery_report`), so they are served on their own route, DLR_PATH.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import asyncpg
from aiohttp import web

from api.http import (
    DATABASE_KEY,
    INFO_KEY,
    SETTINGS_KEY,
    Api,
    ApiError,
    Context,
    QueryParameter,
    Reply,
    json_response,
    money,
    timestamp,
)
from engine.charges import AccountUnavailable, ChainCannotPay
from engine.errors import InsufficientFunds, InvalidInput, NotFound
from engine.sms import (
    SENDER_WARNING,
    Quota,
    SmsRequest,
    SmsService,
    Status,
    campaign_status,
    format_offset,
)

API = Api(
    "sms",
    "/sms-api",
    envelope="flat",
    title="callgate SMS API",
    description=(
        "Send, schedule and bulk-send SMS, billed from the account balance. "
        "Reseller keys act for their own clients (client_login). Each endpoint "
        "is served at /sms-api/index.php?endpoint=NAME and at /sms-api/NAME."
    ),
)

DLR_PATH = "/sms-api/dlr/{provider}"
SIGNATURE_HEADER = "X-Callgate-Signature"
MAX_PAGE = 500
DEFAULT_PAGE = 20
MAX_MESSAGE_LENGTH = 2000

MONEY = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{4}$"}
NULLABLE_MONEY = {"type": ["string", "null"], "pattern": r"^-?[0-9]+\.[0-9]{4}$"}
ID = {"type": "integer", "minimum": 1}
TEXT = {"type": "string"}
NULLABLE_TEXT = {"type": ["string", "null"]}
COUNT = {"type": "integer", "minimum": 0}
NULLABLE_COUNT = {"type": ["integer", "null"], "minimum": 0}
TIME = {"type": ["string", "null"], "description": "UTC, YYYY-MM-DD HH:MM:SS"}
OFFSET = {"type": "string", "pattern": r"^[+-][0-9]{2}:[0-9]{2}$"}
STATUS = {"type": "string", "enum": [str(status) for status in Status]}
SENDER_BLOCK = {
    "type": "object",
    "properties": {
        "requested": NULLABLE_TEXT,
        "guaranteed": {"const": False},
        "warning": {"const": SENDER_WARNING},
    },
    "required": ["requested", "guaranteed", "warning"],
}
CLIENT_LOGIN = {
    "type": "string",
    "description": "Required with a reseller key: the client the SMS is for.",
}


def _object(properties: dict[str, Any], *optional: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**properties, "client_login": CLIENT_LOGIN},
        "required": required,
    }


MESSAGE = _object(
    {
        "sms_id": ID,
        "campaign_id": {"type": ["integer", "null"]},
        "provider": TEXT,
        "phone": TEXT,
        "sender_id": NULLABLE_TEXT,
        "message": TEXT,
        "segments": {"type": "integer", "minimum": 1},
        "encoding": {"enum": ["GSM-7", "UCS-2"]},
        "price": MONEY,
        "status": STATUS,
        "error": NULLABLE_TEXT,
        "scheduled_at": TIME,
        "created_at": TIME,
        "sent_at": TIME,
    }
)
SCHEDULED_ITEM = _object(
    {
        "scheduled_sms_id": ID,
        "provider": TEXT,
        "phone": TEXT,
        "sender_id": NULLABLE_TEXT,
        "message": TEXT,
        "segments": {"type": "integer"},
        "price": MONEY,
        "status": STATUS,
        "scheduled_at": TIME,
        "scheduled_at_local": TEXT,
        "server_utc_offset": OFFSET,
    }
)
CAMPAIGN = _object(
    {
        "campaign_id": ID,
        "provider": TEXT,
        "sender_id": NULLABLE_TEXT,
        "message": TEXT,
        "status": {"enum": ["QUEUED", "SENDING", "DONE", "CANCELLED"]},
        "recipients": COUNT,
        "duplicates": COUNT,
        "counts": {"type": "object", "additionalProperties": COUNT},
        "price": MONEY,
        "scheduled_at": TIME,
        "created_at": TIME,
        "cancelled_at": TIME,
    }
)
PAGE_QUERY = (
    QueryParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
        f"Rows per page, at most {MAX_PAGE}.",
    ),
    QueryParameter(
        "offset", {"type": "integer", "minimum": 0, "default": 0}, "Rows to skip."
    ),
    QueryParameter("client_login", CLIENT_LOGIN, CLIENT_LOGIN["description"]),
)
LOGIN_QUERY = (
    QueryParameter("client_login", CLIENT_LOGIN, CLIENT_LOGIN["description"]),
)
PROVIDER_QUERY = QueryParameter(
    "provider", {"type": "string"}, "Provider code; default: the first configured."
)
WARNING = {"warning": {"type": "string"}}
SEND_FIELDS = {
    "phone": {"type": "string", "description": "E.164, e.g. +447575396991"},
    "message": {"type": "string"},
    "provider": {"type": "string"},
    "sender_id": {"type": "string"},
}


def _service(context: Context) -> SmsService:
    return SmsService(context.database, context.settings)


def _login(context: Context) -> str | None:
    login = context.body.text("client_login", required=False, max_length=64)
    if login is None:
        login = context.query.text("client_login", required=False, max_length=64)
    return login


async def client_of(context: Context, *, required: bool = True) -> int:
    """Return the id of the client a request acts for.

    A client key acts for itself and may not send client_login. A reseller
    or operator key acts for one of its direct clients, named by
    client_login. Without one it acts for itself, but only where required
    is False (rates, providers).
    """
    caller = context.caller
    login = _login(context)
    if caller.kind == "client":
        if login is not None:
            raise InvalidInput(
                "client_login",
                login,
                "no client_login with a client API key, which acts for its own account",
            )
        return caller.account_id
    if login is None:
        if not required:
            return caller.account_id
        raise InvalidInput(
            "client_login", None, "the login of one of your clients (reseller API key)"
        )
    async with context.database.pool.acquire() as connection:
        client_id = await connection.fetchval(
            "SELECT id FROM accounts WHERE login = $1 AND parent_id = $2 "
            "AND kind = 'client'",
            login,
            caller.account_id,
        )
    if client_id is None:
        raise NotFound(f"client {login!r} not found")
    return int(client_id)


def _page(context: Context) -> tuple[int, int]:
    limit = context.query.integer(
        "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE
    )
    offset = context.query.integer("offset", default=0, minimum=0, maximum=10**9)
    return limit, offset


def _funds_error(exc: InsufficientFunds) -> ApiError:
    """Say why a purchase cannot be paid, without showing a reseller's figures."""
    depth = getattr(exc, "depth", 0)
    if isinstance(exc, AccountUnavailable) and depth == 0:
        # Nothing to pay would change this: the account itself is switched off.
        return ApiError(403, "the account is not active; SMS cannot be sent")
    if depth > 0:
        return ApiError(
            402, "sending is blocked: the reseller account cannot pay for it"
        )
    if isinstance(exc, ChainCannotPay):
        return ApiError(
            402,
            f"insufficient balance: this costs {money(exc.amount)}, "
            f"{money(exc.available)} is available; top up and retry",
        )
    return ApiError(402, "insufficient balance; top up and retry")


def _sender_block(sender_id: str | None) -> dict[str, Any]:
    return {"requested": sender_id, "guaranteed": False, "warning": SENDER_WARNING}


def message_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "sms_id": row["id"],
        "campaign_id": row["campaign_id"],
        "provider": row["provider"],
        "phone": row["phone"],
        "sender_id": row["sender_id"],
        "message": row["message"],
        "segments": row["segments"],
        "encoding": row["encoding"],
        "price": money(row["price"]),
        "status": row["status"],
        "error": row["error"],
        "scheduled_at": timestamp(row["scheduled_at"]),
        "created_at": timestamp(row["created_at"]),
        "sent_at": timestamp(row["sent_at"]),
    }


def campaign_json(row: asyncpg.Record) -> dict[str, Any]:
    counts = row["counts"]
    if isinstance(counts, str):
        counts = json.loads(counts)
    return {
        "campaign_id": row["id"],
        "provider": row["provider"],
        "sender_id": row["sender_id"],
        "message": row["message"],
        "status": campaign_status(row, counts),
        "recipients": row["recipients"],
        "duplicates": row["duplicates"],
        "counts": counts,
        "price": money(row["price"]),
        "scheduled_at": timestamp(row["scheduled_at"]),
        "created_at": timestamp(row["created_at"]),
        "cancelled_at": timestamp(row["cancelled_at"]),
    }


def _text(context: Context, name: str, max_length: int = 200) -> str:
    value = context.body.text(name, max_length=max_length)
    assert value is not None
    return value


def _request(context: Context) -> SmsRequest:
    return SmsRequest(
        phone=_text(context, "phone", 32),
        message=_text(context, "message", MAX_MESSAGE_LENGTH),
        provider=context.body.text("provider", required=False, max_length=32),
        sender_id=context.body.text("sender_id", required=False, max_length=32),
    )


@API.endpoint(
    "providers",
    "GET",
    summary="SMS providers configured on this server; the first is the default.",
    response=_object(
        {
            "providers": {
                "type": "array",
                "items": _object(
                    {
                        "code": TEXT,
                        "name": TEXT,
                        "default": {"enum": [0, 1]},
                        "sender_id_guaranteed": {"const": False},
                    }
                ),
            }
        }
    ),
)
async def providers(context: Context) -> Reply:
    service = _service(context)
    items = [
        {
            "code": provider.code,
            "name": provider.name,
            "default": 1 if index == 0 else 0,
            "sender_id_guaranteed": False,
        }
        for index, provider in enumerate(service.providers.values())
    ]
    return Reply({"providers": items})


@API.endpoint(
    "rates",
    "GET",
    summary="SMS prices per segment by destination prefix, for the account's plan.",
    query=(PROVIDER_QUERY, *LOGIN_QUERY),
    response=_object(
        {
            "currency": TEXT,
            "rates": {
                "type": "array",
                "items": _object(
                    {
                        "provider": TEXT,
                        "prefix": TEXT,
                        "destination": TEXT,
                        "price": MONEY,
                    }
                ),
            },
        }
    ),
)
async def rates(context: Context) -> Reply:
    account_id = await client_of(context, required=False)
    provider = context.query.text("provider", required=False, max_length=32)
    found = await _service(context).rates(account_id, provider)
    return Reply(
        {
            "currency": context.settings.currency,
            "rates": [
                {
                    "provider": code,
                    "prefix": rate.prefix,
                    "destination": rate.destination,
                    "price": money(rate.price),
                }
                for code, rate in found
            ],
        }
    )


@API.endpoint(
    "quota",
    "GET",
    summary="How many one-segment SMS the balance covers (an estimate).",
    query=(
        PROVIDER_QUERY,
        QueryParameter("phone", {"type": "string"}, "Price this destination too."),
        *LOGIN_QUERY,
    ),
    response=_object(
        {
            "provider": TEXT,
            "currency": TEXT,
            "balance": MONEY,
            "available": MONEY,
            "price_min": NULLABLE_MONEY,
            "price_max": NULLABLE_MONEY,
            "messages_min": NULLABLE_COUNT,
            "messages_max": NULLABLE_COUNT,
            "phone": TEXT,
            "price": NULLABLE_MONEY,
            "messages": NULLABLE_COUNT,
        },
        "phone",
        "price",
        "messages",
    ),
)
async def quota(context: Context) -> Reply:
    client_id = await client_of(context)
    provider = context.query.text("provider", required=False, max_length=32)
    phone = context.query.text("phone", required=False, max_length=32)
    estimate = await _service(context).quota(client_id, provider, phone)
    data = _quota_json(estimate, context.settings.currency)
    if phone is not None:
        data["phone"] = phone.strip()
        data["price"] = _money_or_none(estimate.price)
        data["messages"] = Quota.capped(
            Quota.messages(estimate.available, estimate.price),
            estimate.resellers_at_price,
        )
    return Reply(data)


def _money_or_none(amount: Any) -> str | None:
    return None if amount is None else money(amount)


def _quota_json(estimate: Quota, currency: str) -> dict[str, Any]:
    return {
        "provider": estimate.provider,
        "currency": currency,
        "balance": money(estimate.balance),
        "available": money(estimate.available),
        "price_min": _money_or_none(estimate.price_min),
        "price_max": _money_or_none(estimate.price_max),
        # messages_min is at the maximum price, messages_max at the minimum.
        "messages_min": Quota.capped(
            Quota.messages(estimate.available, estimate.price_max),
            estimate.resellers_min,
        ),
        "messages_max": Quota.capped(
            Quota.messages(estimate.available, estimate.price_min),
            estimate.resellers_max,
        ),
    }


@API.endpoint(
    "send",
    "POST",
    summary="Send one SMS now. The fee is charged when the provider accepts it.",
    body=_body(SEND_FIELDS, ["phone", "message"]),
    response=_object(
        {
            "sms_id": ID,
            "provider": TEXT,
            "provider_name": TEXT,
            "status": STATUS,
            "balance_after": MONEY,
            "segments": {"type": "integer"},
            "encoding": TEXT,
            "price": MONEY,
            "sender_id": SENDER_BLOCK,
        }
    ),
    top_level=WARNING,
)
async def send(context: Context) -> Reply:
    client_id = await client_of(context)
    request = _request(context)
    service = _service(context)
    try:
        sent = await service.send(client_id, request)
    except InsufficientFunds as exc:
        raise _funds_error(exc) from exc
    row = sent.message
    if row["status"] == Status.FAILED:
        raise ApiError(
            502,
            f"the provider did not accept SMS {row['id']}: "
            f"{row['error'] or 'no reason given'}; it was not charged",
        )
    provider = service.providers[row["provider"]]
    return Reply(
        {
            "sms_id": row["id"],
            "provider": provider.code,
            "provider_name": provider.name,
            "status": row["status"],
            "balance_after": money(sent.balance_after),
            "segments": row["segments"],
            "encoding": row["encoding"],
            "price": money(row["price"]),
            "sender_id": _sender_block(row["sender_id"]),
        },
        extra={"warning": sent.warning} if sent.warning else {},
    )


@API.endpoint(
    "schedule",
    "POST",
    summary="Schedule one SMS; the price is reserved now and charged when sent.",
    body=_body(
        {
            **SEND_FIELDS,
            "scheduled_at": {
                "type": "string",
                "description": "YYYY-MM-DD HH:MM:SS in the server's time zone, "
                "or ISO 8601 with an offset.",
            },
        },
        ["phone", "message", "scheduled_at"],
    ),
    response=_object(
        {
            "scheduled_sms_id": ID,
            "provider": TEXT,
            "status": {"const": "SCHEDULED"},
            "server_utc_offset": OFFSET,
            "scheduled_at": TIME,
            "scheduled_at_local": TEXT,
            "price": MONEY,
            "sender_id": SENDER_BLOCK,
        }
    ),
    top_level=WARNING,
)
async def schedule(context: Context) -> Reply:
    client_id = await client_of(context)
    request = _request(context)
    scheduled_at = _text(context, "scheduled_at", 64)
    try:
        scheduled = await _service(context).schedule(client_id, request, scheduled_at)
    except InsufficientFunds as exc:
        raise _funds_error(exc) from exc
    row = scheduled.message
    return Reply(
        {
            "scheduled_sms_id": row["id"],
            "provider": row["provider"],
            "status": row["status"],
            "server_utc_offset": scheduled.schedule.server_utc_offset,
            "scheduled_at": timestamp(scheduled.schedule.at),
            "scheduled_at_local": timestamp(scheduled.schedule.local),
            "price": money(row["price"]),
            "sender_id": _sender_block(row["sender_id"]),
        },
        extra={"warning": scheduled.warning} if scheduled.warning else {},
    )


@API.endpoint(
    "scheduled",
    "GET",
    summary="Scheduled SMS not sent yet, soonest first.",
    query=PAGE_QUERY,
    response=_object({"scheduled": {"type": "array", "items": SCHEDULED_ITEM}}),
)
async def scheduled(context: Context) -> Reply:
    client_id = await client_of(context)
    limit, offset = _page(context)
    service = _service(context)
    rows = await service.scheduled(client_id, limit, offset)
    items = []
    for row in rows:
        local = row["due_at"].astimezone(service.zone)
        items.append(
            {
                "scheduled_sms_id": row["id"],
                "provider": row["provider"],
                "phone": row["phone"],
                "sender_id": row["sender_id"],
                "message": row["message"],
                "segments": row["segments"],
                "price": money(row["price"]),
                "status": row["status"],
                "scheduled_at": timestamp(row["scheduled_at"]),
                "scheduled_at_local": timestamp(local),
                "server_utc_offset": _offset(local),
            }
        )
    return Reply({"scheduled": items})


def _offset(local: Any) -> str:
    return format_offset(local.utcoffset())


@API.endpoint(
    "cancel-scheduled",
    "POST",
    summary="Cancel a scheduled SMS and release its reservation.",
    body=_body({"scheduled_sms_id": ID}, ["scheduled_sms_id"]),
    response=_object(
        {"scheduled_sms_id": ID, "status": {"const": "CANCELLED"}, "released": MONEY}
    ),
)
async def cancel_scheduled(context: Context) -> Reply:
    client_id = await client_of(context)
    message_id = context.body.integer("scheduled_sms_id")
    row = await _service(context).cancel_scheduled(client_id, message_id)
    return Reply(
        {
            "scheduled_sms_id": row["id"],
            "status": row["status"],
            "released": money(row["price"]),
        }
    )


@API.endpoint(
    "bulk",
    "POST",
    summary="Queue a campaign: phones validated, duplicates removed, all reserved.",
    body=_body(
        {
            "phones": {"type": "array", "items": {"type": "string"}},
            "message": {"type": "string"},
            "provider": {"type": "string"},
            "sender_id": {"type": "string"},
            "scheduled_at": {"type": "string"},
        },
        ["phones", "message"],
    ),
    response=_object(
        {
            "campaign_id": ID,
            "recipients_queued": COUNT,
            "status": {"const": "QUEUED"},
            "duplicates_removed": COUNT,
            "duplicates": {"type": "array", "items": TEXT},
            "price": MONEY,
            "scheduled_at": TIME,
            "server_utc_offset": OFFSET,
            "sender_id": SENDER_BLOCK,
            "warnings": {"type": "array", "items": TEXT},
        },
        "server_utc_offset",
        "warnings",
    ),
)
async def bulk(context: Context) -> Reply:
    client_id = await client_of(context)
    phones = context.body.values.get("phones")
    if not isinstance(phones, list):
        raise InvalidInput(
            "phones", phones, 'a JSON array of phone numbers such as ["+1234567890"]'
        )
    message = _text(context, "message", MAX_MESSAGE_LENGTH)
    provider = context.body.text("provider", required=False, max_length=32)
    sender_id = context.body.text("sender_id", required=False, max_length=32)
    scheduled_at = context.body.text("scheduled_at", required=False, max_length=64)

    try:
        created = await _service(context).bulk(
            client_id, phones, message, provider, sender_id, scheduled_at
        )
    except InsufficientFunds as exc:
        raise _funds_error(exc) from exc

    campaign = created.campaign
    data: dict[str, Any] = {
        "campaign_id": campaign["id"],
        "recipients_queued": created.recipients,
        "status": "QUEUED",
        "duplicates_removed": len(created.duplicates),
        "duplicates": created.duplicates,
        "scheduled_at": timestamp(campaign["scheduled_at"]),
        "sender_id": _sender_block(campaign["sender_id"]),
    }
    if created.schedule is not None:
        data["server_utc_offset"] = created.schedule.server_utc_offset
    if created.warnings:
        data["warnings"] = created.warnings
    return Reply(data)


@API.endpoint(
    "campaigns",
    "GET",
    summary="Bulk campaigns, newest first, with message counts by status.",
    query=PAGE_QUERY,
    response=_object({"campaigns": {"type": "array", "items": CAMPAIGN}}),
)
async def campaigns(context: Context) -> Reply:
    client_id = await client_of(context)
    limit, offset = _page(context)
    rows = await _service(context).campaigns(client_id, limit, offset)
    return Reply({"campaigns": [campaign_json(row) for row in rows]})


@API.endpoint(
    "cancel-campaign",
    "POST",
    summary="Stop what is left of a campaign and release its reservation.",
    body=_body({"campaign_id": ID}, ["campaign_id"]),
    response=_object(
        {
            "campaign_id": ID,
            "status": {"const": "CANCELLED"},
            "recipients_cancelled": COUNT,
        }
    ),
)
async def cancel_campaign(context: Context) -> Reply:
    client_id = await client_of(context)
    campaign_id = context.body.integer("campaign_id")
    stopped = await _service(context).cancel_campaign(client_id, campaign_id)
    return Reply(
        {
            "campaign_id": campaign_id,
            "status": "CANCELLED",
            "recipients_cancelled": stopped,
        }
    )


@API.endpoint(
    "status",
    "GET",
    summary="One SMS (id), checked with the provider while PENDING; or a "
    "campaign with its recipients (campaign_id).",
    query=(
        QueryParameter("id", ID, "The sms_id or scheduled_sms_id."),
        QueryParameter("campaign_id", ID, "A campaign, instead of id."),
        *PAGE_QUERY,
    ),
    response={
        "type": "object",
        "properties": {
            **MESSAGE["properties"],
            "campaign": CAMPAIGN,
            "recipients": {"type": "array", "items": MESSAGE},
        },
    },
)
async def status(context: Context) -> Reply:
    client_id = await client_of(context)
    service = _service(context)
    if context.query.values.get("campaign_id") is not None:
        campaign_id = context.query.integer("campaign_id")
        limit, offset = _page(context)
        campaign = await service.campaign(client_id, campaign_id)
        rows = await service.history(client_id, limit, offset, campaign_id)
        return Reply(
            {
                "campaign": campaign_json(campaign),
                "recipients": [message_json(row) for row in rows],
            }
        )
    message_id = context.query.integer("id")
    return Reply(message_json(await service.status(client_id, message_id)))


@API.endpoint(
    "history",
    "GET",
    summary="SMS history, newest first, campaign recipients included.",
    query=PAGE_QUERY,
    response=_object({"history": {"type": "array", "items": MESSAGE}}),
)
async def history(context: Context) -> Reply:
    client_id = await client_of(context)
    limit, offset = _page(context)
    rows = await _service(context).history(client_id, limit, offset)
    return Reply({"history": [message_json(row) for row in rows]})


# --- delivery reports ------------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    """Return the X-Callgate-Signature value of a delivery report body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _report_error(status: int, message: str) -> web.Response:
    return json_response({"success": False, "error": message}, status)


async def delivery_report(request: web.Request) -> web.Response:
    """Apply a provider's signed delivery report: POST DLR_PATH.

    The body is JSON {"id", "reference", "status", "error"}; the header
    X-Callgate-Signature is "sha256=" + the hex HMAC-SHA256 of the raw body
    under CALLGATE_SMS_DLR_SECRET.
    """
    info = request.get(INFO_KEY)
    if info is not None:
        info.api, info.endpoint = "sms", "dlr"
    settings = request.app[SETTINGS_KEY]
    secret = settings.sms_dlr_secret
    if not secret:
        return _report_error(404, "delivery reports are not enabled on this server")
    if (request.content_length or 0) > settings.api_max_body_bytes:
        return _report_error(413, "delivery report too large")
    # The application's client_max_size caps this read at the same limit.
    raw = await request.read()
    presented = request.headers.get(SIGNATURE_HEADER, "")
    if not hmac.compare_digest(presented.encode(), signature(secret, raw).encode()):
        return _report_error(401, f"invalid or missing {SIGNATURE_HEADER}")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        return _report_error(400, "invalid delivery report: expected JSON with status")
    service = SmsService(request.app[DATABASE_KEY], settings)
    provider_id = body.get("id")
    reference = body.get("reference")
    error = body.get("error")
    try:
        row = await service.delivery_report(
            request.match_info["provider"],
            str(provider_id)[:128] if provider_id is not None else None,
            reference if isinstance(reference, str) else None,
            body["status"][:32],
            error[:200] if isinstance(error, str) else None,
        )
    except NotFound as exc:
        return _report_error(404, str(exc))
    return json_response(
        {"success": True, "sms_id": row["id"], "status": row["status"]}
    )


def add_routes(app: web.Application) -> None:
    """Add the routes the Api framework cannot serve: the delivery reports."""
    app.router.add_post(DLR_PATH, delivery_report)
