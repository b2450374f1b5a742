"""Authorize, reserve and settle on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from itertools import count

import pytest

from engine.calls import AuthorizeRequest, CallService, SettleRequest
from engine.db import Database
from engine.settings import Settings
from tests.conftest import World

_ids = count(1)


def new_call(sip: str, number: str, node: str = "") -> AuthorizeRequest:
    sequence = next(_ids)
    uniqueid = f"1796389402.{sequence}"
    if node:
        uniqueid = f"{node}-{uniqueid}"
    return AuthorizeRequest(uniqueid, f"PJSIP/{sip}-{sequence:08x}", number)


async def answered(calls: CallService, call: AuthorizeRequest, seconds: int) -> None:
    await calls.settle(SettleRequest(call.uniqueid, "ANSWER", seconds, 16))


async def test_authorize_balance_one_at_half_per_minute(
    world: World, calls: CallService
):
    await world.plan("retail", [("1", "0.50", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("1000000001", "retail", "1.00")

    call = new_call("1000000001", "15555550101")
    result = await calls.authorize(call)

    assert result.status == "OK"
    assert result.max_seconds == 120
    assert result.routes == ("PJSIP/15555550101@carrier",)
    assert await world.reserved("1000000001") == Decimal("1.000000")
    await answered(calls, call, 120)
    assert await world.balance("1000000001") == Decimal("0.000000")
    assert await world.reserved("1000000001") == Decimal("0")
    assert await world.ledger_sum("1000000001") == Decimal("0")


async def test_authorize_rejects_credit_below_initial_block(
    world: World, calls: CallService
):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.trunk("carrier", "retail")
    await world.client("1000000001", "retail", "0.01")

    result = await calls.authorize(new_call("1000000001", "15555550101"))

    assert result.status == "REJECTED"
    assert result.reason == "no_credit"
    assert result.cause == 21
    assert await world.reserved("1000000001") == 0


async def test_authorize_longest_prefix_wins(world: World, calls: CallService):
    await world.plan("retail", [("1", "0.01", 1, 1, "0"), ("1234", "0.20", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("1000000001", "retail", "10")
    call = new_call("1000000001", "1234567890123")

    await calls.authorize(call)
    await answered(calls, call, 60)

    assert await world.balance("1000000001") == Decimal("9.800000")


async def test_authorize_postpaid_uses_credit_limit(world: World, calls: CallService):
    await world.plan("retail", [("1", "60", 1, 1, "0")])  # 1.00 per second
    await world.trunk("carrier", "retail")
    await world.client("post", "retail", "0", postpaid=True, credit_limit=Decimal(500))

    first = new_call("post", "15555550101")
    result = await calls.authorize(first)
    assert result.status == "OK"
    assert result.max_seconds == 500
    await answered(calls, first, 499)
    second = new_call("post", "15555550101")
    assert (await calls.authorize(second)).max_seconds == 1
    await answered(calls, second, 1)

    third = await calls.authorize(new_call("post", "15555550101"))

    assert third.status == "REJECTED"
    assert await world.balance("post") == Decimal("-500.000000")


async def test_reseller_chain_charges_retail_and_wholesale(
    world: World, calls: CallService
):
    await world.plan("wholesale", [("1", "0.025", 1, 1, "0")])
    await world.trunk("carrier", "wholesale")
    await world.reseller("res", "wholesale", "10")
    await world.client("cli", balance="10", reseller="res")
    call = new_call("cli", "15555550101")

    result = await calls.authorize(call)
    await answered(calls, call, 61)

    assert result.status == "OK"
    assert await world.balance("cli") == Decimal("10") - Decimal("0.030500")
    assert await world.balance("res") == Decimal("10") - Decimal("0.025417")
    async with world.db.pool.acquire() as connection:
        charges = await connection.fetch(
            "SELECT depth, cost FROM cdr_charges ORDER BY depth"
        )
    assert [(row["depth"], row["cost"]) for row in charges] == [
        (0, Decimal("0.030500")),
        (1, Decimal("0.025417")),
    ]


async def test_three_level_chain_debited_together(world: World, calls: CallService):
    await world.plan("wholesale", [("44", "0.10", 1, 1, "0")])
    await world.trunk("carrier", "wholesale")
    await world.reseller("top", "wholesale", "10")
    await world.reseller("mid", "top-retail", "10", parent="top")
    await world.client("cli", balance="10", reseller="mid")
    call = new_call("cli", "+447700900123")

    await calls.authorize(call)
    await answered(calls, call, 60)

    assert await world.balance("top") == Decimal("9.900000")
    assert await world.balance("mid") == Decimal("9.880000")  # 0.12/min
    assert await world.balance("cli") == Decimal("9.856000")  # 0.144/min
    for login in ("top", "mid", "cli"):
        assert await world.ledger_sum(login) == await world.balance(login)


async def test_reseller_without_funds_blocks_client(world: World, calls: CallService):
    await world.plan("wholesale", [("1", "0.025", 60, 60, "0")])
    await world.trunk("carrier", "wholesale")
    await world.reseller("res", "wholesale", "0")
    await world.client("cli", balance="10", reseller="res")

    result = await calls.authorize(new_call("cli", "15555550101"))

    assert result.status == "REJECTED"
    assert result.reason == "reseller_no_credit"
    assert await world.reserved("cli") == 0


async def test_rejected_call_writes_failed_cdr_once(world: World, calls: CallService):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "0")
    call = new_call("cli", "15555550101")

    await calls.authorize(call)
    later = await calls.settle(SettleRequest(call.uniqueid, "ANSWER", 30, 16))

    assert later.outcome == "already_settled"
    async with world.db.pool.acquire() as connection:
        failed = await connection.fetch("SELECT reason, hangup_cause FROM failed_cdrs")
        cdrs = await connection.fetchval("SELECT count(*) FROM cdrs")
    assert [(row["reason"], row["hangup_cause"]) for row in failed] == [
        ("no_credit", 21)
    ]
    assert cdrs == 0
    assert await world.balance("cli") == 0


async def test_settle_unknown_call_blocks_later_authorize(
    world: World, calls: CallService
):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "10")
    call = new_call("cli", "15555550101")

    settled = await calls.settle(SettleRequest(call.uniqueid, "ANSWER", 30, 16))
    result = await calls.authorize(call)

    assert settled.outcome == "unauthorized"
    assert result.status == "REJECTED"
    assert result.reason == "duplicate_call"
    assert await world.reserved("cli") == 0


async def test_settle_twice_charges_once(world: World, calls: CallService):
    await world.plan("retail", [("1", "0.60", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "10")
    call = new_call("cli", "15555550101")
    await calls.authorize(call)

    results = await asyncio.gather(
        calls.settle(SettleRequest(call.uniqueid, "ANSWER", 10, 16)),
        calls.settle(SettleRequest(call.uniqueid, "ANSWER", 10, 16)),
    )

    assert sorted(r.outcome for r in results) == ["already_settled", "settled"]
    assert await world.balance("cli") == Decimal("9.900000")


@pytest.mark.parametrize(
    ("dialstatus", "cause", "reason"),
    [
        ("BUSY", 17, "busy"),
        ("NOANSWER", 16, "no_answer"),
        ("CHANUNAVAIL", 3, "unavailable"),
        ("CONGESTION", 34, "congestion"),
        ("CANCEL", 127, "cancel"),
    ],
)
async def test_unanswered_call_writes_one_failed_cdr(
    world: World, calls: CallService, dialstatus: str, cause: int, reason: str
):
    await world.plan("retail", [("1", "0.60", 1, 1, "0.10")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "10")
    call = new_call("cli", "15555550101")
    await calls.authorize(call)

    await calls.settle(SettleRequest(call.uniqueid, dialstatus, None, cause))

    async with world.db.pool.acquire() as connection:
        failed = await connection.fetch("SELECT reason, hangup_cause FROM failed_cdrs")
    assert [(row["reason"], row["hangup_cause"]) for row in failed] == [(reason, cause)]
    assert await world.balance("cli") == Decimal(10)
    assert await world.reserved("cli") == 0


async def test_concurrent_limit_rejects_third_call(world: World, calls: CallService):
    await world.plan("retail", [("1", "0.01", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "10", max_concurrent=2)
    first, second = new_call("cli", "15555550101"), new_call("cli", "15555550102")
    assert (await calls.authorize(first)).status == "OK"
    assert (await calls.authorize(second)).status == "OK"

    third = await calls.authorize(new_call("cli", "15555550103"))
    await answered(calls, first, 5)
    fourth = await calls.authorize(new_call("cli", "15555550104"))

    assert third.reason == "concurrent_limit"
    assert fourth.status == "OK"


async def test_hundred_authorizations_reserve_three_blocks(
    database: Database, settings: Settings, world: World
):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "0.12")
    short = CallService(database, settings.replace(max_call_duration=60))

    results = await asyncio.gather(
        *(short.authorize(new_call("cli", "15555550101")) for _ in range(100))
    )

    assert sum(r.status == "OK" for r in results) == 3
    assert await world.reserved("cli") == Decimal("0.12")


async def test_hundred_authorizations_default_cap_one_call(
    world: World, calls: CallService
):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "0.12")

    results = await asyncio.gather(
        *(calls.authorize(new_call("cli", "15555550101")) for _ in range(100))
    )

    ok = [r for r in results if r.status == "OK"]
    assert len(ok) == 1
    assert ok[0].max_seconds == 180
    assert await world.reserved("cli") == Decimal("0.12")


async def test_no_route_rejects(world: World, calls: CallService):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")])
    await world.client("cli", "retail", "10")

    result = await calls.authorize(new_call("cli", "15555550101"))

    assert result.reason == "no_route"
    assert result.cause == 34


async def test_unknown_endpoint_rejects(calls: CallService):
    result = await calls.authorize(new_call("nobody", "15555550101"))

    assert result.reason == "unknown_endpoint"


async def test_routes_ordered_and_limited(world: World, calls: CallService):
    await world.plan("retail", [("1", "0.04", 60, 60, "0")], tariff_limit=2)
    await world.trunk("backup", "retail", priority=5)
    await world.trunk("primary", "retail", priority=1)
    await world.trunk("third", "retail", priority=9)

    await world.client("cli", "retail", "10")
    result = await calls.authorize(new_call("cli", "15555550101"))

    assert result.routes == ("PJSIP/15555550101@primary", "PJSIP/15555550101@backup")


async def test_expiry_bills_from_asterisk_cdr(
    database: Database, settings: Settings, world: World
):
    await world.plan("retail", [("1", "0.60", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "10")
    calls = CallService(
        database,
        settings.replace(ring_timeout=1, expiry_margin=0, max_call_duration=60),
    )
    billed, lost = new_call("cli", "15555550101"), new_call("cli", "15555550102")
    await calls.authorize(billed)
    await calls.authorize(lost)
    async with database.pool.acquire() as connection:
        await connection.execute(
            "UPDATE sessions SET created_at = now() - interval '4 hours'"
        )
        await connection.execute(
            "INSERT INTO cdr (uniqueid, disposition, billsec)"
            " VALUES ($1, 'ANSWERED', 30)",
            billed.uniqueid,
        )

    assert await calls.expire_sessions() == 2

    assert await world.balance("cli") == Decimal("9.700000")
    assert await world.reserved("cli") == 0
    async with database.pool.acquire() as connection:
        rows = await connection.fetch(
            "SELECT uniqueid, billed_seconds, unresolved FROM cdrs ORDER BY uniqueid"
        )
    assert [(r["billed_seconds"], r["unresolved"]) for r in rows] == [
        (30, False),
        (0, True),
    ]
    assert calls.unresolved_total == 1


async def test_settle_caps_answered_time_at_max_duration(
    world: World, calls: CallService
):
    await world.plan("retail", [("1", "0.60", 1, 1, "0")])
    await world.trunk("carrier", "retail")
    await world.client("cli", "retail", "1.00")
    call = new_call("cli", "15555550101")
    result = await calls.authorize(call)

    await answered(calls, call, 2_147_483_647)

    assert result.max_seconds == 100
    assert await world.balance("cli") == Decimal("0.000000")
    assert await world.reserved("cli") == 0
