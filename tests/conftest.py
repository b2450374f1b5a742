"""Shared fixtures: a real PostgreSQL, a fresh migrated database per test.

The server is CALLGATE_TEST_DATABASE_URL when set, else an embedded
PostgreSQL (pgserver) started once per test run in a temporary directory.
Each test gets its own database cloned from a migrated template, so tests
share no state and run in any order.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from engine import accounts, db, plans
from engine.calls import CallService
from engine.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
# Byte-exact FastAGI and AMI traffic recorded from Asterisk 22.10.1.
FIXTURES = REPO / "tests" / "fixtures" / "asterisk-22"
DATA = REPO / "data"
TEMPLATE = "callgate_template"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    configured = os.environ.get("CALLGATE_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    import pgserver

    data_dir = tempfile.mkdtemp(prefix="cgpg")
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
async def template_url(server_url: str) -> str:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    url = with_database(server_url, TEMPLATE)
    await db.migrate_url(url)
    return url


@pytest.fixture
async def database_url(server_url: str, template_url: str) -> AsyncIterator[str]:
    name = "t_" + uuid.uuid4().hex[:16]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    yield with_database(server_url, name)
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        {"CALLGATE_DATABASE_URL": database_url, "CALLGATE_DATA_DIR": str(tmp_path)}
    )


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[db.Database]:
    database = await db.Database.connect(database_url, max_size=30)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def calls(database: db.Database, settings: Settings) -> CallService:
    return CallService(database, settings)


class World:
    """Builds plans, accounts, trunks and routes for a test, by name."""

    def __init__(self, database: db.Database, currency: str = "EUR") -> None:
        self.db = database
        self.currency = currency
        self.plans: dict[str, int] = {}
        self.accounts: dict[str, int] = {}
        self.sip_passwords: dict[str, str] = {}

    async def plan(
        self,
        name: str,
        rates: list[tuple[str, str, int, int, str]],
        **options: Any,
    ) -> int:
        """Create a plan; rates are (prefix, rate, initblock, billingblock, fee)."""
        async with self.db.transaction() as connection:
            plan_id = await plans.create_plan(
                connection, name, plans.PlanOptions(**options)
            )
            rows = [
                plans.RateRow(
                    i,
                    prefix,
                    f"dest {prefix}",
                    Decimal(rate),
                    init,
                    block,
                    Decimal(fee),
                )
                for i, (prefix, rate, init, block, fee) in enumerate(rates)
            ]
            await plans.replace_rates(connection, plan_id, rows)
        self.plans[name] = plan_id
        return plan_id

    async def trunk(
        self,
        name: str,
        plan: str,
        *,
        prefix: str = "",
        priority: int = 1,
        dialstring: str | None = None,
        cost_plan: str | None = None,
    ) -> int:
        async with self.db.transaction() as connection:
            trunk_id = await connection.fetchval(
                "SELECT id FROM trunks WHERE name = $1", name
            )
            if trunk_id is None:
                trunk_id = await plans.add_trunk(
                    connection,
                    name,
                    dialstring or f"PJSIP/{{number}}@{name}",
                    cost_plan_id=self.plans.get(cost_plan) if cost_plan else None,
                )
            await plans.add_route(
                connection, self.plans[plan], trunk_id, prefix=prefix, priority=priority
            )
            await connection.execute(
                """
                INSERT INTO routes (plan_id, prefix, trunk_id, priority)
                SELECT id, $2, $3, $4 FROM plans WHERE parent_plan_id = $1
                ON CONFLICT DO NOTHING
                """,
                self.plans[plan],
                prefix,
                trunk_id,
                priority,
            )
        return int(trunk_id)

    async def reseller(
        self,
        login: str,
        plan: str,
        balance: str = "0",
        *,
        parent: str | None = None,
        markup: str = "0.20",
        **kw: Any,
    ) -> int:
        async with self.db.transaction() as connection:
            created = await accounts.create_account(
                connection,
                kind="reseller",
                currency=self.currency,
                login=login,
                parent_id=self.accounts.get(parent) if parent else None,
                plan_id=self.plans[plan],
                balance=Decimal(balance),
                markup=Decimal(markup),
                **kw,
            )
            retail = await connection.fetchval(
                "SELECT id FROM plans WHERE owner_id = $1 ORDER BY id LIMIT 1",
                created.id,
            )
        self.accounts[login] = created.id
        self.plans[f"{login}-retail"] = retail
        return created.id

    async def client(
        self,
        login: str,
        plan: str | None = None,
        balance: str = "0",
        *,
        reseller: str | None = None,
        **kw: Any,
    ) -> int:
        async with self.db.transaction() as connection:
            created = await accounts.create_account(
                connection,
                kind="client",
                currency=self.currency,
                login=login,
                parent_id=self.accounts.get(reseller) if reseller else None,
                plan_id=self.plans[plan] if plan else None,
                balance=Decimal(balance),
                **kw,
            )
        self.accounts[login] = created.id
        assert created.sip_password is not None
        self.sip_passwords[login] = created.sip_password
        return created.id

    async def balance(self, login: str) -> Decimal:
        async with self.db.pool.acquire() as connection:
            value: Decimal = await connection.fetchval(
                "SELECT balance FROM accounts WHERE login = $1", login
            )
        return value

    async def reserved(self, login: str) -> Decimal:
        async with self.db.pool.acquire() as connection:
            value: Decimal = await connection.fetchval(
                "SELECT reserved FROM accounts WHERE login = $1", login
            )
        return value

    async def ledger_sum(self, login: str) -> Decimal:
        async with self.db.pool.acquire() as connection:
            value: Decimal = await connection.fetchval(
                """
                SELECT coalesce(sum(l.amount), 0) FROM ledger l
                JOIN accounts a ON a.id = l.account_id WHERE a.login = $1
                """,
                login,
            )
        return value


@pytest.fixture
def world(database: db.Database) -> World:
    return World(database)


async def wait_until(
    predicate: Any, timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Poll an async or plain predicate until it is true, failing after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
