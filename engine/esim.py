"""eSIM resale: the catalogue at each account's price, orders and their money.

Prices follow the chain like retail plans. The operator's price is the
upstream price x (1 + CALLGATE_ESIM_MARKUP), and the top reseller pays it.
Each account below pays the price of the account above x (1 + that
reseller's markup), half-up to 6 decimals at each step.

A purchase is reserved on every account that pays: a client and each
reseller above, or a reseller alone when it buys for itself. It is placed
upstream with an idempotency key, debited once when the upstream reports the
eSIM ready, and released when it fails. An order whose outcome is unknown
stays PENDING with its reservation held until sync-order settles it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from engine import charges, metrics
from engine.charges import Charge
from engine.db import Database
from engine.errors import CallgateError, Conflict, InvalidInput, NotFound
from engine.providers import esim_provider
from engine.providers.base import EsimOrder, EsimProvider, Outcome, Package
from engine.providers.esim_upstream import ProviderFailed
from engine.settings import Settings

log = logging.getLogger("callgate.esim")

MAX_EXTERNAL_ID = 100
IDEMPOTENCY_PREFIX = "callgate-esim-"

ACCOUNT_LINEAGE = """
SELECT a.id, a.kind, a.markup, a.ancestors, a.tenant_id
FROM accounts a
WHERE a.id = ANY($1::bigint[])
"""

FIND_BY_EXTERNAL_ID = """
SELECT * FROM esim_orders WHERE account_id = $1 AND external_id = $2
"""

INSERT_ORDER = """
INSERT INTO esim_orders (
    account_id, tenant_id, provider, external_id, idempotency_key,
    package_code, package_name, price, currency, status, data_total_mb
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'PENDING', $10)
RETURNING *
"""

INSERT_CHARGES = """
INSERT INTO esim_charges (order_id, account_id, depth, amount)
SELECT $1, * FROM unnest($2::bigint[], $3::smallint[], $4::numeric[])
"""

ORDER_CHARGES = """
SELECT account_id, depth, amount FROM esim_charges WHERE order_id = $1
ORDER BY account_id
"""

LOCK_ORDER = """
SELECT * FROM esim_orders WHERE id = $1 FOR UPDATE
"""

OWN_ORDER = """
SELECT * FROM esim_orders WHERE id = $1 AND account_id = $2
"""

UPDATE_ORDER = """
UPDATE esim_orders
SET status = $2, money = $3, upstream_order_id = coalesce($4, upstream_order_id),
    upstream_status = coalesce($5, upstream_status), iccid = coalesce($6, iccid),
    lpa = coalesce($7, lpa), data_total_mb = coalesce($8, data_total_mb),
    data_used_mb = coalesce($9, data_used_mb),
    expires_at = coalesce($10, expires_at), error = $11, updated_at = now()
WHERE id = $1
RETURNING *
"""

ORDERS = """
SELECT * FROM esim_orders
WHERE account_id = $1
ORDER BY id DESC
LIMIT $2 OFFSET $3
"""

BALANCE = """
SELECT balance FROM accounts WHERE id = $1
"""


class NotConfigured(CallgateError):
    """No eSIM provider is configured on this server."""


class UpstreamFailed(CallgateError):
    """The upstream refused an order or could not be read; nothing was charged."""

    def __init__(self, message: str, order: asyncpg.Record | None = None) -> None:
        self.order = order
        super().__init__(message)


@dataclass(frozen=True)
class Purchase:
    order: asyncpg.Record
    balance_after: Decimal
    replayed: bool


def check_package_code(value: str) -> str:
    code = value.strip()
    if not (
        0 < len(code) <= 64
        and code.isascii()
        and code.replace("-", "").replace("_", "").isalnum()
    ):
        raise InvalidInput("package_code", value, "a package code such as P2CYMUS93")
    return code


def check_external_id(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not 0 < len(text) <= MAX_EXTERNAL_ID or not text.isprintable():
        raise InvalidInput(
            "external_id", value, f"1 to {MAX_EXTERNAL_ID} printable characters"
        )
    return text


def matches(package: Package, query: str) -> bool:
    """Return whether a search text occurs in a package's code, name or countries."""
    needle = query.strip().casefold()
    fields = [package.code, package.name, package.region]
    for country in package.coverage:
        fields.extend((country.country, country.name))
    return any(needle in field.casefold() for field in fields)


class EsimService:
    """The catalogue, purchases and orders of the eSIM API."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        provider: EsimProvider | None = None,
    ) -> None:
        self.db = database
        self.settings = settings
        self._provider = esim_provider(settings) if provider is None else provider

    @property
    def provider(self) -> EsimProvider:
        if self._provider is None:
            raise NotConfigured("eSIM sales are not configured on this server")
        return self._provider

    async def catalogue(self) -> list[Package]:
        try:
            return await self.provider.packages()
        except ProviderFailed as exc:
            log.error("esim catalogue unavailable: %s", exc)
            raise UpstreamFailed(f"the eSIM catalogue is unavailable: {exc}") from exc

    async def package(self, code: str) -> Package:
        checked = check_package_code(code)
        for package in await self.catalogue():
            if package.code == checked:
                return package
        raise NotFound(f"package {code!r} not found")

    async def prices(
        self, connection: asyncpg.Connection, account_id: int, base: Decimal
    ) -> list[Charge]:
        """Price a package for an account and every reseller above, nearest first."""
        ancestors = await connection.fetchval(
            "SELECT ancestors FROM accounts WHERE id = $1", account_id
        )
        chain_ids = [account_id, *(ancestors or [])]
        rows = {r["id"]: r for r in await connection.fetch(ACCOUNT_LINEAGE, chain_ids)}
        price = charges.apply_markup(base, self.settings.esim_markup)
        priced: list[Charge] = []
        for depth in range(len(chain_ids) - 1, -1, -1):
            account = chain_ids[depth]
            priced.append(Charge(account, depth, price))
            price = charges.apply_markup(price, rows[account]["markup"])
        return sorted(priced, key=lambda charge: charge.depth)

    async def price_list(
        self, account_id: int, query: str | None, limit: int
    ) -> list[tuple[Package, Decimal]]:
        """Return packages matching query with the account's own price."""
        packages = [p for p in await self.catalogue() if not query or matches(p, query)]
        async with self.db.pool.acquire() as connection:
            found = []
            for package in packages[:limit]:
                chain = await self.prices(connection, account_id, package.price)
                found.append((package, chain[0].amount))
        return found

    async def buy(
        self,
        buyer_id: int,
        package_code: str,
        external_id: str | None,
        *,
        charge_chain: bool,
    ) -> Purchase:
        """Reserve, order upstream and settle; a repeated external_id replays.

        charge_chain: the buyer is a client, so each reseller above pays its
        own price as well; a reseller buying for itself pays alone.
        """
        external_id = check_external_id(external_id)
        package = await self.package(package_code)
        async with self.db.pool.acquire() as connection:
            chain = await self.prices(connection, buyer_id, package.price)
            paying = chain if charge_chain else chain[:1]
            async with connection.transaction():
                locked = await charges.lock_chain(
                    connection, sorted(c.account_id for c in paying)
                )
                # The buyer's row lock serializes its purchases, so this
                # check and the insert below cannot race on external_id.
                if external_id is not None:
                    first = await connection.fetchrow(
                        FIND_BY_EXTERNAL_ID, buyer_id, external_id
                    )
                    if first is not None:
                        return await self._replay(first, package.code)
                await charges.reserve(connection, locked, paying)
                order = await self._insert(
                    connection, buyer_id, package, external_id, paying
                )
        result = await asyncio.shield(self._place(order))
        if result["status"] == "FAILED":
            raise UpstreamFailed(
                f"the eSIM upstream rejected order {result['id']}: "
                f"{result['error'] or 'no reason given'}; nothing was charged",
                result,
            )
        return Purchase(result, await self.balance(buyer_id), False)

    async def _replay(self, first: asyncpg.Record, package_code: str) -> Purchase:
        if first["package_code"] != package_code:
            raise Conflict(
                f"external_id {first['external_id']!r} was used for package "
                f"{first['package_code']}, not {package_code}"
            )
        return Purchase(first, await self.balance(first["account_id"]), True)

    async def _insert(
        self,
        connection: asyncpg.Connection,
        buyer_id: int,
        package: Package,
        external_id: str | None,
        paying: Sequence[Charge],
    ) -> asyncpg.Record:
        tenant_id = await connection.fetchval(
            "SELECT tenant_id FROM accounts WHERE id = $1", buyer_id
        )
        order = await connection.fetchrow(
            INSERT_ORDER,
            buyer_id,
            tenant_id,
            self.provider.code,
            external_id,
            IDEMPOTENCY_PREFIX + uuid.uuid4().hex,
            package.code,
            package.name,
            paying[0].amount,
            self.settings.currency,
            package.data_mb,
        )
        await connection.execute(
            INSERT_CHARGES,
            order["id"],
            [c.account_id for c in paying],
            [c.depth for c in paying],
            [c.amount for c in paying],
        )
        metrics.esim_orders.labels("PENDING").inc()
        return order

    async def _place(self, order: asyncpg.Record) -> asyncpg.Record:
        result = await self.provider.place_order(
            order["package_code"], order["idempotency_key"]
        )
        if result.outcome is Outcome.UNAVAILABLE:
            # Nothing reached the upstream, so the order certainly failed.
            result = EsimOrder(Outcome.REFUSED, error=result.error)
        return await self.apply(order["id"], result)

    async def apply(self, order_id: int, result: EsimOrder) -> asyncpg.Record:
        """Apply an upstream result: debit when ready, release when failed."""
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(LOCK_ORDER, order_id)
            status, money = row["status"], row["money"]
            if money == "reserved":
                if (
                    result.outcome is Outcome.ACCEPTED
                    and result.upstream_status == "ready"
                ):
                    status, money = "ACTIVE", "charged"
                elif result.outcome is Outcome.REFUSED:
                    status, money = "FAILED", "released"
            if money != row["money"]:
                await self._settle_money(connection, row, money, result)
            updated = await connection.fetchrow(
                UPDATE_ORDER,
                order_id,
                status,
                money,
                result.upstream_order_id,
                result.upstream_status,
                result.iccid,
                result.lpa,
                result.data_total_mb,
                result.data_used_mb,
                result.expires_at,
                result.error if status != "ACTIVE" else None,
            )
        if updated["status"] != row["status"]:
            metrics.esim_orders.labels(updated["status"]).inc()
            log.info(
                "esim order id=%s %s -> %s upstream=%s error=%s",
                order_id,
                row["status"],
                updated["status"],
                result.upstream_status or "-",
                result.error or "-",
            )
        return updated

    async def _settle_money(
        self,
        connection: asyncpg.Connection,
        row: asyncpg.Record,
        money: str,
        result: EsimOrder,
    ) -> None:
        chain = [
            Charge(r["account_id"], r["depth"], r["amount"])
            for r in await connection.fetch(ORDER_CHARGES, row["id"])
        ]
        await charges.lock_chain(connection, [c.account_id for c in chain])
        if money == "charged":
            await charges.debit(
                connection,
                chain,
                "esim",
                reference=f"esim:{row['id']}",
                provider=row["provider"],
                provider_txid=result.upstream_order_id,
            )
        else:
            await charges.release(connection, chain)

    async def orders(
        self, account_id: int, limit: int, offset: int
    ) -> list[asyncpg.Record]:
        async with self.db.pool.acquire() as connection:
            return list(await connection.fetch(ORDERS, account_id, limit, offset))

    async def sync(self, account_id: int, order_id: int) -> asyncpg.Record:
        """Refresh an order's status, activation and usage from the upstream."""
        async with self.db.pool.acquire() as connection:
            row = await connection.fetchrow(OWN_ORDER, order_id, account_id)
        if row is None:
            raise NotFound(f"order {order_id} not found")
        if row["status"] == "FAILED":
            return row
        result = await self.provider.order(
            row["idempotency_key"], row["upstream_order_id"], row["package_code"]
        )
        if result.outcome in (Outcome.UNKNOWN, Outcome.UNAVAILABLE):
            log.warning("esim sync failed id=%s: %s", order_id, result.error)
            return row
        return await self.apply(order_id, result)

    async def balance(self, account_id: int) -> Decimal:
        async with self.db.pool.acquire() as connection:
            value: Decimal = await connection.fetchval(BALANCE, account_id)
        return value
