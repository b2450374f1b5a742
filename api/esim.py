"""The eSIM API: `/esim-api/index.php`, for client and reseller keys.

A client key buys for itself at its retail price, and each reseller above it
pays its own price in the same transaction. A reseller (or operator) key
buys for itself, from its own balance, at its own price. Orders are listed
and refreshed only for the account that bought them; another account's
order returns the same 404 as one that does not exist.

Activation data: `lpa` is the LPA activation string (LPA:1$SM-DP+$CODE) and
`qr_code_data` is the text a QR code for the eSIM must encode (the same
string); the API returns no image.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from api.http import Api, ApiError, Context, QueryParameter, Reply, money, timestamp
from engine.errors import InsufficientFunds, InvalidInput
from engine.esim import EsimService, NotConfigured, UpstreamFailed
from engine.providers.base import Package

API = Api(
    "esim",
    "/esim-api",
    envelope="flat",
    title="callgate eSIM API",
    description=(
        "List eSIM data packages at the caller's price, buy them from the account "
        "balance and follow orders, activation data and usage. Each endpoint is "
        "served at /esim-api/index.php?endpoint=NAME and at /esim-api/NAME."
    ),
)

MAX_PACKAGES = 100
DEFAULT_PACKAGES = 20
MAX_PAGE = 500
DEFAULT_PAGE = 50

MONEY = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{4}$"}
ID = {"type": "integer", "minimum": 1}
TEXT = {"type": "string"}
NULLABLE_TEXT = {"type": ["string", "null"]}
NULLABLE_COUNT = {"type": ["integer", "null"], "minimum": 0}
TIME = {"type": ["string", "null"], "description": "UTC, YYYY-MM-DD HH:MM:SS"}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


COVERAGE = _object(
    {"country": TEXT, "name": TEXT, "networks": {"type": "array", "items": TEXT}}
)
PACKAGE = _object(
    {
        "package_code": TEXT,
        "name": TEXT,
        "region": TEXT,
        "data_mb": {"type": "integer"},
        "validity_days": {"type": "integer"},
        "countries": {"type": "array", "items": TEXT},
        "price": MONEY,
        "currency": TEXT,
    }
)
ACTIVATION = {
    "type": ["object", "null"],
    "properties": {
        "lpa": TEXT,
        "smdp_address": NULLABLE_TEXT,
        "activation_code": NULLABLE_TEXT,
        "qr_code_data": TEXT,
    },
}
ORDER = _object(
    {
        "order_id": ID,
        "external_id": NULLABLE_TEXT,
        "package_code": TEXT,
        "package_name": TEXT,
        "price": MONEY,
        "currency": TEXT,
        "status": {"enum": ["PENDING", "ACTIVE", "FAILED"]},
        "iccid": NULLABLE_TEXT,
        "activation": ACTIVATION,
        "data_total_mb": NULLABLE_COUNT,
        "data_used_mb": NULLABLE_COUNT,
        "data_remaining_mb": NULLABLE_COUNT,
        "expires_at": TIME,
        "created_at": TIME,
        "error": NULLABLE_TEXT,
    }
)


def _service(context: Context) -> EsimService:
    return EsimService(context.database, context.settings)


def _reject_client_login(context: Context) -> None:
    login = context.body.values.get("client_login") or context.query.values.get(
        "client_login"
    )
    if login is not None:
        raise InvalidInput(
            "client_login",
            login,
            "no client_login: the eSIM API buys for the account of the API key",
        )


def _package_json(package: Package, price: Any) -> dict[str, Any]:
    return {
        "package_code": package.code,
        "name": package.name,
        "region": package.region,
        "data_mb": package.data_mb,
        "validity_days": package.validity_days,
        "countries": [country.country for country in package.coverage],
        "price": money(price),
        "currency": package.currency,
    }


def activation(lpa: str | None) -> dict[str, Any] | None:
    """Split an LPA string LPA:1$SMDP$CODE into its parts, with the QR text."""
    if not lpa:
        return None
    parts = lpa.split("$")
    smdp = parts[1] if len(parts) > 1 and parts[1] else None
    code = parts[2] if len(parts) > 2 and parts[2] else None
    return {
        "lpa": lpa,
        "smdp_address": smdp,
        "activation_code": code,
        "qr_code_data": lpa,
    }


def order_json(row: asyncpg.Record) -> dict[str, Any]:
    total, used = row["data_total_mb"], row["data_used_mb"]
    remaining = None
    if total is not None:
        remaining = max(total - (used or 0), 0)
    return {
        "order_id": row["id"],
        "external_id": row["external_id"],
        "package_code": row["package_code"],
        "package_name": row["package_name"],
        "price": money(row["price"]),
        "currency": row["currency"].strip(),
        "status": row["status"],
        "iccid": row["iccid"],
        "activation": activation(row["lpa"]),
        "data_total_mb": total,
        "data_used_mb": used,
        "data_remaining_mb": remaining,
        "expires_at": timestamp(row["expires_at"]),
        "created_at": timestamp(row["created_at"]),
        "error": row["error"],
    }


async def _run(call: Any) -> Any:
    """Await a service call, turning its failures into API errors."""
    try:
        return await call
    except NotConfigured as exc:
        raise ApiError(503, str(exc)) from exc
    except UpstreamFailed as exc:
        raise ApiError(502, str(exc)) from exc
    except InsufficientFunds as exc:
        if getattr(exc, "depth", 0) > 0:
            raise ApiError(
                402, "the purchase is blocked: the reseller account cannot pay for it"
            ) from exc
        raise ApiError(402, "insufficient balance for this package; top up") from exc


@API.endpoint(
    "packages",
    "GET",
    summary="Packages matching q, at the caller's price.",
    query=(
        QueryParameter("q", {"type": "string"}, "Text in code, name or countries."),
        QueryParameter(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_PACKAGES},
            f"Most packages returned, default {DEFAULT_PACKAGES}.",
        ),
    ),
    response=_object(
        {"packages": {"type": "array", "items": PACKAGE}, "count": {"type": "integer"}}
    ),
)
async def packages(context: Context) -> Reply:
    _reject_client_login(context)
    query = context.query.text("q", required=False, max_length=64)
    limit = context.query.integer(
        "limit", default=DEFAULT_PACKAGES, minimum=1, maximum=MAX_PACKAGES
    )
    found = await _run(
        _service(context).price_list(context.caller.account_id, query, limit)
    )
    items = [_package_json(package, price) for package, price in found]
    return Reply({"packages": items, "count": len(items)})


@API.endpoint(
    "coverage",
    "GET",
    summary="Countries and networks of a package.",
    query=(QueryParameter("package_code", TEXT, "The package."),),
    response=_object(
        {
            "package_code": TEXT,
            "name": TEXT,
            "coverage": {"type": "array", "items": COVERAGE},
        }
    ),
)
async def coverage(context: Context) -> Reply:
    code = context.query.text("package_code", max_length=64)
    assert code is not None
    package = await _run(_service(context).package(code))
    return Reply(
        {
            "package_code": package.code,
            "name": package.name,
            "coverage": [
                {
                    "country": country.country,
                    "name": country.name,
                    "networks": list(country.networks),
                }
                for country in package.coverage
            ],
        }
    )


@API.endpoint(
    "balance",
    "GET",
    summary="The balance eSIM purchases are paid from.",
    response=_object({"balance": MONEY, "currency": TEXT}),
)
async def balance(context: Context) -> Reply:
    amount = await _service(context).balance(context.caller.account_id)
    return Reply({"balance": money(amount), "currency": context.caller.currency})


@API.endpoint(
    "buy",
    "POST",
    summary="Buy a package; a repeated external_id returns the first order.",
    body={
        "type": "object",
        "properties": {"package_code": TEXT, "external_id": TEXT},
        "required": ["package_code"],
    },
    response=_object(
        {"order": ORDER, "balance_after": MONEY, "replayed": {"enum": [0, 1]}}
    ),
)
async def buy(context: Context) -> Reply:
    _reject_client_login(context)
    code = context.body.text("package_code", max_length=64)
    external_id = context.body.text("external_id", required=False, max_length=100)
    assert code is not None
    caller = context.caller
    purchase = await _run(
        _service(context).buy(
            caller.account_id,
            code,
            external_id,
            charge_chain=caller.kind == "client",
        )
    )
    return Reply(
        {
            "order": order_json(purchase.order),
            "balance_after": money(purchase.balance_after),
            "replayed": 1 if purchase.replayed else 0,
        }
    )


@API.endpoint(
    "orders",
    "GET",
    summary="The caller's orders, newest first, with activation data and usage.",
    query=(
        QueryParameter("limit", {"type": "integer", "minimum": 1}, "Rows per page."),
        QueryParameter("offset", {"type": "integer", "minimum": 0}, "Rows to skip."),
    ),
    response=_object({"orders": {"type": "array", "items": ORDER}}),
)
async def orders(context: Context) -> Reply:
    limit = context.query.integer(
        "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE
    )
    offset = context.query.integer("offset", default=0, minimum=0, maximum=10**9)
    rows = await _service(context).orders(context.caller.account_id, limit, offset)
    return Reply({"orders": [order_json(row) for row in rows]})


@API.endpoint(
    "sync-order",
    "GET",
    summary="Refresh an order's status, activation data and usage from upstream.",
    query=(QueryParameter("order_id", ID, "The order."),),
    response=_object({"order": ORDER}),
)
async def sync_order(context: Context) -> Reply:
    order_id = context.query.integer("order_id")
    row = await _run(_service(context).sync(context.caller.account_id, order_id))
    return Reply({"order": order_json(row)})
