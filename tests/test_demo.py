"""The demo world `make run` seeds: once, with a call that rates and fails over."""

from __future__ import annotations

from decimal import Decimal

from engine import demo
from engine.calls import AuthorizeRequest, CallService, SettleRequest
from engine.db import Database
from engine.secrets import hash_api_key


async def test_demo_seeded_once_and_callable(database: Database, calls: CallService):
    async with database.transaction() as connection:
        keys = await demo.seed_demo(connection, "EUR", Decimal("0.20"))
        again = await demo.seed_demo(connection, "EUR", Decimal("0.20"))

    result = await calls.authorize(
        AuthorizeRequest(
            "1796390000.1", f"PJSIP/{demo.CLIENT}-00000001", "442079460000"
        )
    )
    await calls.settle(SettleRequest("1796390000.1", "ANSWER", 61, 16, 2))

    assert keys is not None
    assert again is None
    assert result.status == "OK"
    assert result.routes == (
        "PJSIP/442079460000@carrier",
        "PJSIP/442079460000@carrier-backup",
    )
    async with database.pool.acquire() as connection:
        cdr = await connection.fetchrow("SELECT cost, trunk_name FROM cdrs")
        stored = await connection.fetchval(
            "SELECT count(*) FROM api_keys WHERE key_hash = $1",
            hash_api_key(keys.client_key),
        )
    # 61 s at the London retail rate 0.012442 (0.010368 wholesale x 1.2).
    assert cdr["cost"] == Decimal("0.012649")
    assert cdr["trunk_name"] == "carrier-backup"
    assert stored == 1
