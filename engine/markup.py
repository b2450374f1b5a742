"""A reseller's markup: its retail prices over its wholesale plan.

The markup belongs to the reseller (`accounts.markup`, 0.37 = +37 %) and
applies to every retail plan it owns: rate and connect fee x (1 + markup),
rounded half-up to 6 decimals. Changing it re-derives those plans and, down
the chain, the retail plans of resellers below, in the caller's transaction,
so readers see the old prices or the new ones and never a mix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from engine import accounts, plans
from engine.errors import InvalidInput, NotFound

log = logging.getLogger("callgate.accounts")

MAX_MARKUP_PERCENT = Decimal(1000)
# accounts.markup is NUMERIC(12, 6), so a percentage keeps 4 decimals.
PERCENT_PLACES = Decimal("0.0001")
SIX_PLACES = Decimal("0.000001")
PERCENT = Decimal(100)

LOCK_RESELLER = """
SELECT id, login, markup, plan_id, tenant_id
FROM accounts
WHERE id = $1 AND kind = 'reseller'
FOR UPDATE
"""

RESELLER_MARKUP = """
SELECT id, login, markup, plan_id, tenant_id
FROM accounts
WHERE id = $1 AND kind = 'reseller'
"""

RETAIL_PLANS = """
SELECT p.id, p.name, p.parent_plan_id,
       (SELECT count(*) FROM rates r WHERE r.plan_id = p.id) AS rate_count
FROM plans p
WHERE p.owner_id = $1 AND p.parent_plan_id IS NOT NULL
ORDER BY p.id
"""

SET_MARKUP = """
UPDATE accounts
SET markup = $2, updated_at = now()
WHERE id = $1
"""

# Wholesale rows of the reseller's first retail plan, with the retail price
# at the current markup next to them.
PRICE_SAMPLE = """
SELECT w.prefix, w.destination, w.rate AS wholesale_rate,
       w.connect_fee AS wholesale_connect_fee, w.initblock, w.billingblock,
       r.rate AS retail_rate, r.connect_fee AS retail_connect_fee
FROM rates w
LEFT JOIN rates r
    ON r.plan_id = $2 AND r.prefix = w.prefix AND r.valid_from = w.valid_from
WHERE w.plan_id = $1
ORDER BY w.prefix, w.valid_from
LIMIT $3
"""


@dataclass(frozen=True)
class Price:
    """One prefix of the retail tariff: its wholesale cost and retail prices."""

    prefix: str
    destination: str
    initblock: int
    billingblock: int
    wholesale_rate: Decimal
    wholesale_connect_fee: Decimal
    current_rate: Decimal | None
    current_connect_fee: Decimal | None
    new_rate: Decimal
    new_connect_fee: Decimal


@dataclass(frozen=True)
class Tariff:
    """A reseller's markup, its retail plans and a sample of their prices."""

    markup: Decimal
    plans: list[asyncpg.Record]
    prices: list[Price]


@dataclass(frozen=True)
class MarkupChange:
    markup: Decimal
    previous: Decimal
    changed: bool
    plans: list[asyncpg.Record]


def parse_percent(value: object) -> Decimal:
    """Return the markup for a markup_percent (37 -> 0.37); raise InvalidInput."""
    expected = (
        f"a percentage from 0 to {MAX_MARKUP_PERCENT} with at most 4 decimals, "
        "such as 50"
    )
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise InvalidInput("markup_percent", value, expected)
    try:
        percent = plans.parse_money("markup_percent", value)
    except InvalidInput as exc:
        raise InvalidInput("markup_percent", value, expected) from exc
    if percent > MAX_MARKUP_PERCENT or percent != percent.quantize(PERCENT_PLACES):
        raise InvalidInput("markup_percent", value, expected)
    return percent / PERCENT


def percent(markup: Decimal) -> Decimal:
    """Return a markup as a percentage: 0.37 -> 37."""
    return (markup * PERCENT).quantize(PERCENT_PLACES).normalize()


def apply_markup(amount: Decimal, markup: Decimal) -> Decimal:
    """Return amount x (1 + markup), half-up to 6 decimals, as derive_rates does."""
    return (amount * (1 + markup)).quantize(SIX_PLACES, rounding=ROUND_HALF_UP)


async def _reseller(
    connection: asyncpg.Connection, reseller_id: int, *, lock: bool
) -> asyncpg.Record:
    row = await connection.fetchrow(
        LOCK_RESELLER if lock else RESELLER_MARKUP, reseller_id
    )
    if row is None:
        raise NotFound(f"reseller {reseller_id} not found")
    return row


async def retail_plans(
    connection: asyncpg.Connection, reseller_id: int
) -> list[asyncpg.Record]:
    return list(await connection.fetch(RETAIL_PLANS, reseller_id))


async def tariff(
    connection: asyncpg.Connection,
    reseller_id: int,
    new_markup: Decimal | None = None,
    limit: int = 100,
) -> Tariff:
    """Return the reseller's markup and prices, at new_markup when given.

    Reads only: a preview writes nothing.
    """
    reseller = await _reseller(connection, reseller_id, lock=False)
    markup = reseller["markup"] if new_markup is None else new_markup
    owned = await retail_plans(connection, reseller_id)
    prices: list[Price] = []
    if owned:
        first = owned[0]
        rows = await connection.fetch(
            PRICE_SAMPLE, first["parent_plan_id"], first["id"], limit
        )
        prices = [_price(row, markup) for row in rows]
    return Tariff(reseller["markup"], owned, prices)


def _price(row: asyncpg.Record, markup: Decimal) -> Price:
    return Price(
        prefix=row["prefix"],
        destination=row["destination"],
        initblock=row["initblock"],
        billingblock=row["billingblock"],
        wholesale_rate=row["wholesale_rate"],
        wholesale_connect_fee=row["wholesale_connect_fee"],
        current_rate=row["retail_rate"],
        current_connect_fee=row["retail_connect_fee"],
        new_rate=apply_markup(row["wholesale_rate"], markup),
        new_connect_fee=apply_markup(row["wholesale_connect_fee"], markup),
    )


async def set_markup(
    connection: asyncpg.Connection, reseller_id: int, markup: Decimal
) -> MarkupChange:
    """Apply a new markup to all the reseller's retail plans and those below.

    The reseller's row is locked, so two changes at once apply in turn. An
    unchanged markup writes nothing at all. A reseller without a retail plan
    (possible only for rows made outside callgate) gets one.
    """
    reseller = await _reseller(connection, reseller_id, lock=True)
    previous: Decimal = reseller["markup"]
    owned = await retail_plans(connection, reseller_id)
    if markup == previous and owned:
        return MarkupChange(markup, previous, False, owned)

    await connection.execute(SET_MARKUP, reseller_id, markup)
    if not owned and reseller["plan_id"] is not None:
        await accounts.create_retail_plan(
            connection,
            reseller_id,
            reseller["login"],
            reseller["plan_id"],
            markup,
            reseller["tenant_id"],
        )
    for plan in owned:
        await plans.derive_rates(connection, plan["id"], plan["parent_plan_id"], markup)
        await plans.rederive_children(connection, plan["id"])
    log.info(
        "markup changed account=%s markup=%s previous=%s plans=%s",
        reseller_id,
        markup,
        previous,
        len(owned),
    )
    return MarkupChange(
        markup, previous, True, await retail_plans(connection, reseller_id)
    )
