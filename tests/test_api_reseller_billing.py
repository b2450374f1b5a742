"""The reseller billing model end to end, and agent payments applied once."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from agi.fastagi import FastAGIServer
from engine.calls import AuthorizeRequest, CallService, SettleRequest
from tests import test_api_reseller as support
from tests.conftest import World
from tests.test_agi_callpath import authorize, settle, start_agi
from tests.test_api_reseller import ResellerClient, assert_field_error, snapshot

# The loopback server and its scene, shared with the core API tests.
api = support.api
api_settings = support.api_settings

PAYMENT = {
    "login": "7770000001",
    "amount": "20.00",
    "currency": "EUR",
    "provider": "plisio",
    "external_id": "plisio_order_123",
    "provider_txid": "tx_or_invoice_id",
    "status": "paid",
}


async def created_client(api: ResellerClient, credit: str) -> str:
    """Create a client through the API and grant it credit; return its login."""
    created = await api.post("create-client", "resa", {})
    login: str = created.body["client"]["login"]
    granted = await api.post("transfer", "resa", {"login": login, "amount": credit})
    assert granted.status == 200
    return login


async def test_client_pays_retail_reseller_wholesale(
    api: ResellerClient, world: World, calls: CallService
):
    login = await created_client(api, "5")
    call = AuthorizeRequest("1796391000.1", f"PJSIP/{login}-00000001", "15555550101")

    result = await calls.authorize(call)
    await calls.settle(SettleRequest(call.uniqueid, "ANSWER", 61, 16))

    assert result.status == "OK"
    # 61 s at 0.012/min retail (0.01 x 1.20) and at 0.01/min wholesale.
    assert await world.balance(login) == Decimal("5") - Decimal("0.012200")
    assert await world.balance("resa") == Decimal("10") - Decimal("0.010167")
    assert await world.ledger_sum(login) == await world.balance(login)
    assert await world.ledger_sum("resa") == await world.balance("resa")


async def test_reseller_without_funds_blocks_client(
    api: ResellerClient, world: World, calls: CallService
):
    login = await created_client(api, "5")
    async with world.db.transaction() as connection:
        from engine.ledger import change_balance

        await change_balance(
            connection, world.accounts["resa"], Decimal(-10), "adjustment"
        )
    call = AuthorizeRequest("1796391000.2", f"PJSIP/{login}-00000001", "15555550101")

    result = await calls.authorize(call)

    assert result.status == "REJECTED"
    assert result.reason == "reseller_no_credit"
    assert await world.balance(login) == Decimal(5)


async def test_fastagi_call_of_reseller_created_client(
    api: ResellerClient, world: World, calls: CallService
):
    login = await created_client(api, "1")
    server: FastAGIServer = await start_agi(calls)
    try:
        uniqueid, variables = await authorize(server.port, login)
        await settle(server.port, uniqueid, login, "ANSWER", "30", "16")
    finally:
        await server.close()

    assert variables["CALLGATE_STATUS"] == "OK"
    assert await world.balance(login) == Decimal("1") - Decimal("0.006000")
    assert await world.balance("resa") == Decimal("10") - Decimal("0.005000")


async def test_agent_payment_credits_once_with_ledger_entry(
    api: ResellerClient, world: World
):
    first = await api.post("register-agent-payment", "resa", PAYMENT)
    replays = [await api.post("register-agent-payment", "resa", PAYMENT) for _ in "ab"]

    assert first.status == 200
    assert first.body["replayed"] is False
    payment = first.body["payment"]
    assert payment["type"] == "agent_payment"
    assert payment["status"] == "success"
    assert payment["amount"] == 20
    assert payment["provider"] == "plisio"
    assert payment["provider_txid"] == "tx_or_invoice_id"
    assert payment["balance_after"] == 20
    for replay in replays:
        assert replay.body["replayed"] is True
        assert replay.body["payment"] == payment
    assert await world.balance("7770000001") == Decimal(20)
    assert await world.balance("resa") == Decimal(10)
    async with world.db.pool.acquire() as connection:
        entries = await connection.fetch(
            "SELECT kind, amount, provider, provider_txid, external_id FROM ledger"
            " WHERE account_id = $1",
            world.accounts["7770000001"],
        )
    assert [dict(row) for row in entries] == [
        {
            "kind": "agent_payment",
            "amount": Decimal(20),
            "provider": "plisio",
            "provider_txid": "tx_or_invoice_id",
            "external_id": "plisio_order_123",
        }
    ]


async def test_agent_payment_three_concurrent_deliveries(
    api: ResellerClient, world: World
):
    replies = await asyncio.gather(
        *(api.post("register-agent-payment", "resa", PAYMENT) for _ in range(3))
    )

    assert [reply.status for reply in replies] == [200, 200, 200]
    assert sorted(reply.body["replayed"] for reply in replies) == [False, True, True]
    assert len({str(reply.body["payment"]) for reply in replies}) == 1
    assert await world.balance("7770000001") == Decimal(20)
    assert await world.ledger_sum("7770000001") == Decimal(20)


async def test_agent_payment_status_machine(api: ResellerClient, world: World):
    async def notify(external_id: str, status: str) -> dict[str, Any]:
        body = {**PAYMENT, "external_id": external_id, "status": status}
        reply = await api.post("register-agent-payment", "resa", body)
        assert reply.status == 200, reply.body
        result: dict[str, Any] = reply.body
        return result

    pending = await notify("A", "pending")
    paid = await notify("A", "paid")
    after_paid = [await notify("A", status) for status in ("failed", "pending", "paid")]
    failed = await notify("B", "failed")
    failed_again = await notify("B", "failed")
    late = await notify("B", "paid")

    assert pending["payment"]["status"] == "pending"
    assert pending["payment"]["balance_after"] is None
    assert paid["replayed"] is False
    assert paid["payment"]["status"] == "success"
    assert all(reply["replayed"] for reply in after_paid)
    assert all(reply["payment"] == paid["payment"] for reply in after_paid)
    assert failed["payment"]["status"] == "failed"
    assert failed_again["replayed"] is True
    assert late["replayed"] is False
    assert late["payment"]["status"] == "success"
    assert await world.balance("7770000001") == Decimal(40)
    assert await world.ledger_sum("7770000001") == Decimal(40)


async def test_agent_payment_conflicts_and_rejections(
    api: ResellerClient, world: World
):
    await world.client("7770000002", reseller="resa")
    await api.post("register-agent-payment", "resa", PAYMENT)
    before = await snapshot(world.db)

    for change in ({"amount": "20.01"}, {"login": "7770000002"}):
        reply = await api.post("register-agent-payment", "resa", {**PAYMENT, **change})

        assert reply.status == 409, change
        assert "plisio_order_123" in reply.body["error"]
    for change, field in [
        ({"currency": "USD"}, "currency"),
        ({"status": "refunded"}, "status"),
        ({"provider": "Bad Provider"}, "provider"),
        ({"provider": None}, "provider"),
        ({"external_id": None}, "external_id"),
        ({"amount": "0"}, "amount"),
    ]:
        reply = await api.post("register-agent-payment", "resa", {**PAYMENT, **change})

        assert_field_error(reply, field)
    assert await snapshot(world.db) == before


async def test_agent_payment_id_per_provider(api: ResellerClient, world: World):
    first = await api.post("register-agent-payment", "resa", PAYMENT)
    other = await api.post(
        "register-agent-payment", "resa", {**PAYMENT, "provider": "heleket"}
    )
    transfer = await api.post(
        "transfer",
        "resa",
        {"login": "7770000001", "amount": 1, "external_id": "plisio_order_123"},
    )

    assert first.body["replayed"] is False
    assert other.body["replayed"] is False
    assert transfer.body["replayed"] is False
    assert await world.balance("7770000001") == Decimal(41)
