"""The demo world `make run` seeds on first start, so `callgate call` works at once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg

from engine import accounts, plans
from engine.errors import InvalidInput
from engine.secrets import hash_api_key, new_api_key

log = logging.getLogger("callgate.demo")

DECK = Path(__file__).resolve().parent.parent / "data" / "ratedeck-world.csv"
WHOLESALE = "demo-wholesale"
RESELLER = "demo-reseller"
CLIENT = "1000000001"
OPERATOR_CLIENT = "2000000001"
SMS_PRICE = Decimal("0.035")


@dataclass(frozen=True)
class DemoKeys:
    reseller_key: str
    client_key: str
    operator_client_key: str
    client_sip_password: str


async def seed_demo(
    connection: asyncpg.Connection, currency: str, markup: Decimal
) -> DemoKeys | None:
    """Create the demo plans, accounts, trunk and keys; None if already seeded."""
    if await connection.fetchval("SELECT true FROM plans WHERE name = $1", WHOLESALE):
        return None
    rows, errors = plans.read_rate_file(DECK)
    if errors:
        raise InvalidInput("rate deck", str(DECK), f"a valid deck ({errors[0]})")
    options = plans.PlanOptions(signup=True)
    wholesale_id = await plans.create_plan(connection, WHOLESALE, options)
    await plans.replace_rates(connection, wholesale_id, rows)
    # SMS at one price per segment for every country code, on both providers;
    # retail plans follow by their reseller's markup.
    countries = [row for row in rows if " - " not in row.destination]
    await connection.executemany(
        """
        INSERT INTO sms_rates (plan_id, provider, prefix, destination, price)
        VALUES ($1, $2, $3, $4, $5)
        """,
        [
            (wholesale_id, provider, row.prefix, row.destination, SMS_PRICE)
            for provider in ("local", "cryptosms")
            for row in countries
        ],
    )
    trunk_id = await plans.add_trunk(connection, "carrier", "PJSIP/{number}@carrier")
    await plans.add_route(connection, wholesale_id, trunk_id)
    # A second route, so `callgate call --outcome CHANUNAVAIL,ANSWER` shows the
    # dialplan's failover to it.
    backup_id = await plans.add_trunk(
        connection, "carrier-backup", "PJSIP/{number}@carrier-backup"
    )
    await plans.add_route(connection, wholesale_id, backup_id, priority=2)

    reseller = await accounts.create_account(
        connection,
        kind="reseller",
        currency=currency,
        login=RESELLER,
        plan_id=wholesale_id,
        balance=Decimal(100),
        markup=markup,
    )
    client = await accounts.create_account(
        connection,
        kind="client",
        currency=currency,
        login=CLIENT,
        parent_id=reseller.id,
        balance=Decimal(10),
    )
    operator_client = await accounts.create_account(
        connection,
        kind="client",
        currency=currency,
        login=OPERATOR_CLIENT,
        plan_id=wholesale_id,
        balance=Decimal(5),
    )
    keys = []
    for account_id in (reseller.id, client.id, operator_client.id):
        key = new_api_key()
        await connection.execute(
            "INSERT INTO api_keys (account_id, key_hash, label)"
            " VALUES ($1, $2, 'demo')",
            account_id,
            hash_api_key(key),
        )
        keys.append(key)
    assert client.sip_password is not None
    log.info(
        "demo seeded: %d rates, reseller %s, clients %s and %s",
        len(rows),
        RESELLER,
        CLIENT,
        OPERATOR_CLIENT,
    )
    return DemoKeys(keys[0], keys[1], keys[2], client.sip_password)
