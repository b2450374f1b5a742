"""SMS API endpoints against the database: documented shapes, money and access."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import sms as sms_api
from api.app import create_app
from engine.db import Database
from engine.ledger import change_balance
from engine.secrets import hash_api_key, new_api_key
from engine.settings import Settings
from tests.conftest import World

pytestmark = pytest.mark.timeout(60)

OWNER = "1234567801"
OTHER = "5550000001"
RESELLER = "reseller1"
RESOLD = "7770000001"
MONEY = re.compile(r"^-?[0-9]+\.[0-9]{4}$")
SENDER_BLOCK = {
    "requested": "MyBrand",
    "guaranteed": False,
    "warning": "Sender ID / Caller ID is not guaranteed.",
}


async def issue_key(database: Database, login: str) -> str:
    key = new_api_key()
    async with database.pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO api_keys (account_id, key_hash, label) "
            "SELECT id, $2, 'test' FROM accounts WHERE login = $1",
            login,
            hash_api_key(key),
        )
    return key


@dataclass
class Reply:
    status: int
    body: Any


@dataclass
class SmsClient:
    http: TestClient[Any, Any]
    keys: dict[str, str] = field(default_factory=dict)
    path: str = "/sms-api/index.php"

    async def call(
        self,
        method: str,
        endpoint: str,
        as_: str | None,
        body: Any = None,
        **query: str,
    ) -> Reply:
        headers = {"X-API-Key": self.keys[as_]} if as_ else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        response = await self.http.request(
            method,
            self.path,
            params={"endpoint": endpoint, **query},
            data=data,
            headers=headers,
        )
        return Reply(response.status, json.loads(await response.text()))

    async def get(self, endpoint: str, as_: str, **query: str) -> Reply:
        return await self.call("GET", endpoint, as_, **query)

    async def post(self, endpoint: str, as_: str, body: Any) -> Reply:
        return await self.call("POST", endpoint, as_, body)


async def add_sms_rates(
    database: Database, plan_id: int, provider: str, rates: dict[str, str]
) -> None:
    async with database.pool.acquire() as connection:
        await connection.executemany(
            "INSERT INTO sms_rates (plan_id, provider, prefix, destination, price) "
            "VALUES ($1, $2, $3, $4, $5)",
            [
                (plan_id, provider, prefix, f"dest {prefix}", Decimal(price))
                for prefix, price in rates.items()
            ],
        )


async def build_sms_scene(world: World, database: Database) -> None:
    """Operator plan standard, reseller1 on wholesale (markup 20 %), clients.

    standard SMS: 44 -> 0.035, 1 -> 0.010, 49 -> 0.050 per segment;
    wholesale: 44 -> 0.020, 1 -> 0.005, so reseller1's retail is 0.024 and
    0.006.
    """
    rates = [("1", "0.010000", 1, 1, "0")]
    await world.plan("standard", rates)
    await world.plan("wholesale", rates)
    for provider in ("local", "cryptosms"):
        await add_sms_rates(
            database,
            world.plans["standard"],
            provider,
            {"44": "0.035", "1": "0.010", "49": "0.050"},
        )
        await add_sms_rates(
            database, world.plans["wholesale"], provider, {"44": "0.020", "1": "0.005"}
        )
    await world.client(OWNER, "standard", "1.00")
    await world.client(OTHER, "standard", "2.00")
    await world.reseller(RESELLER, "wholesale", "100")
    await world.client(RESOLD, balance="3.00", reseller=RESELLER)


def sms_settings(settings: Settings, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "local_providers": True,
        "timezone": "Europe/Berlin",
        "sms_dlr_secret": "dlr-test-secret",
    }
    values.update(changes)
    return settings.replace(**values)


async def open_client(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[SmsClient]:
    await build_sms_scene(world, database)
    app = create_app(database, settings, [sms_api.API])
    sms_api.add_routes(app)
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await http.start_server()
    client = SmsClient(http)
    for login in (OWNER, OTHER, RESELLER, RESOLD, "admin"):
        client.keys[login] = await issue_key(database, login)
    try:
        yield client
    finally:
        await http.close()


@pytest.fixture
async def api(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[SmsClient]:
    async for client in open_client(database, sms_settings(settings), world):
        yield client


async def fetchval(database: Database, query: str, *args: object) -> Any:
    async with database.pool.acquire() as connection:
        return await connection.fetchval(query, *args)


async def set_balance(database: Database, login: str, amount: str) -> None:
    """Move a balance to amount through the ledger, so the two stay equal."""
    async with database.transaction() as connection:
        row = await connection.fetchrow(
            "SELECT id, balance FROM accounts WHERE login = $1 FOR UPDATE", login
        )
        await change_balance(
            connection, row["id"], Decimal(amount) - row["balance"], "adjustment"
        )


def future(days: int = 30) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S")


SEND = {
    "phone": "+447575396991",
    "provider": "local",
    "sender_id": "MyBrand",
    "message": "MyBrand: Your code is 123456",
}


# --- send ---------------------------------------------------------------------


async def test_send_documented_shape(api: SmsClient, world: World):
    reply = await api.post("send", OWNER, SEND)

    assert reply.status == 200, reply.body
    assert reply.body == {
        "success": True,
        "sms_id": reply.body["sms_id"],
        "provider": "local",
        "provider_name": "Local development provider",
        "status": "SENT_TO_PROVIDER",
        "balance_after": "0.9650",
        "segments": 1,
        "encoding": "GSM-7",
        "price": "0.0350",
        "sender_id": SENDER_BLOCK,
    }
    assert await world.balance(OWNER) == Decimal("0.965000")
    assert await world.ledger_sum(OWNER) == await world.balance(OWNER)
    assert await world.reserved(OWNER) == Decimal(0)


async def test_send_index_and_alias_same_handler(api: SmsClient):
    api.path = "/sms-api/send"
    reply = await api.post("send", OWNER, SEND)

    assert reply.status == 200
    assert reply.body["status"] == "SENT_TO_PROVIDER"


async def test_send_reseller_charges_client_and_reseller(api: SmsClient, world: World):
    body = {**SEND, "client_login": RESOLD}
    reply = await api.post("send", RESELLER, body)

    assert reply.status == 200, reply.body
    # The client pays reseller1's retail 0.020 x 1.2; reseller1 its 0.020.
    assert reply.body["price"] == "0.0240"
    assert reply.body["balance_after"] == "2.9760"
    assert await world.balance(RESOLD) == Decimal("2.976000")
    assert await world.balance(RESELLER) == Decimal("99.980000")
    for login in (RESOLD, RESELLER):
        assert await world.ledger_sum(login) == await world.balance(login)
        assert await world.reserved(login) == Decimal(0)


async def test_send_client_under_reseller_pays_both(api: SmsClient, world: World):
    reply = await api.post("send", RESOLD, SEND)

    assert reply.status == 200
    assert await world.balance(RESOLD) == Decimal("2.976000")
    assert await world.balance(RESELLER) == Decimal("99.980000")


async def test_send_reseller_requires_client_login(api: SmsClient):
    reply = await api.post("send", RESELLER, SEND)

    assert reply.status == 400
    assert reply.body["success"] is False
    assert "client_login" in reply.body["error"]


async def test_send_client_key_rejects_client_login(api: SmsClient, world: World):
    reply = await api.post("send", OWNER, {**SEND, "client_login": OTHER})

    assert reply.status == 400
    assert "client_login" in reply.body["error"]
    assert await world.balance(OTHER) == Decimal("2.000000")


async def test_send_reseller_other_client_not_found(api: SmsClient, world: World):
    operator_client = await api.post("send", RESELLER, {**SEND, "client_login": OWNER})
    unknown = await api.post("send", RESELLER, {**SEND, "client_login": "nobody99"})

    assert operator_client.status == 404
    assert unknown.status == 404
    assert operator_client.body["error"] == f"client {OWNER!r} not found"
    assert await world.balance(OWNER) == Decimal("1.000000")


async def test_send_admin_acts_for_operator_client(api: SmsClient, world: World):
    reply = await api.post("send", "admin", {**SEND, "client_login": OWNER})

    assert reply.status == 200
    assert await world.balance(OWNER) == Decimal("0.965000")


@pytest.mark.parametrize(
    "phone",
    ["447575396991", "+44", "+9991234567", "+4475753969911234", "+44 7575 396991", ""],
)
async def test_send_invalid_phone_rejected(api: SmsClient, world: World, phone: str):
    reply = await api.post("send", OWNER, {**SEND, "phone": phone})

    assert reply.status == 400
    assert "phone" in reply.body["error"]
    assert await world.balance(OWNER) == Decimal("1.000000")


async def test_send_placeholder_number_passes_with_warning(api: SmsClient):
    reply = await api.post("send", OWNER, {**SEND, "phone": "+1234567890"})

    assert reply.status == 200
    assert reply.body["price"] == "0.0100"
    assert "not a valid number" in reply.body["warning"]


async def test_send_invalid_fields_rejected(api: SmsClient):
    cases = [
        ({**SEND, "provider": "nosuch"}, "provider"),
        ({**SEND, "sender_id": "Much Too Long Brand"}, "sender_id"),
        ({**SEND, "message": "   "}, "message"),
        ({k: v for k, v in SEND.items() if k != "message"}, "message"),
        ({**SEND, "phone": "+819012345678"}, "SMS rate"),
        ({**SEND, "message": "x" * 1531}, "segments"),
    ]
    for body, expected in cases:
        reply = await api.post("send", OWNER, body)
        assert reply.status == 400, body
        assert expected in reply.body["error"], reply.body


async def test_send_segments_priced_each(api: SmsClient, world: World):
    gsm = await api.post("send", OWNER, {**SEND, "message": "a" * 161})
    extension = await api.post("send", OWNER, {**SEND, "message": "€" * 80})
    ucs2 = await api.post("send", OWNER, {**SEND, "message": "Привет " * 10})

    assert (gsm.body["segments"], gsm.body["encoding"]) == (2, "GSM-7")
    assert gsm.body["price"] == "0.0700"
    assert (extension.body["segments"], extension.body["encoding"]) == (1, "GSM-7")
    assert (ucs2.body["segments"], ucs2.body["encoding"]) == (1, "UCS-2")
    assert await world.balance(OWNER) == Decimal("1.000000") - Decimal("0.140")


async def test_send_insufficient_balance_not_sent(
    api: SmsClient, world: World, database: Database
):
    await fetchval(
        database, "UPDATE accounts SET balance = 0.01 WHERE login = $1", OWNER
    )
    reply = await api.post("send", OWNER, SEND)

    assert reply.status == 402
    assert reply.body == {
        "success": False,
        "error": "insufficient balance: this costs 0.0350, 0.0100 is available; "
        "top up and retry",
    }
    assert await fetchval(database, "SELECT count(*) FROM sms_messages") == 0
    assert await world.reserved(OWNER) == Decimal(0)


async def test_send_reseller_without_funds_blocks(
    api: SmsClient, world: World, database: Database
):
    await fetchval(
        database, "UPDATE accounts SET balance = 0 WHERE login = $1", RESELLER
    )
    reply = await api.post("send", RESOLD, SEND)

    assert reply.status == 402
    assert "reseller" in reply.body["error"]
    assert "100" not in reply.body["error"]
    assert await world.balance(RESOLD) == Decimal("3.000000")


async def test_send_concurrent_exactly_affordable(
    api: SmsClient, world: World, database: Database
):
    # 0.35 pays for exactly 10 messages at 0.035.
    await set_balance(database, OWNER, "0.35")
    replies = await asyncio.gather(*(api.post("send", OWNER, SEND) for _ in range(25)))

    statuses = sorted(reply.status for reply in replies)
    assert statuses.count(200) == 10
    assert statuses.count(402) == 15
    assert await world.balance(OWNER) == Decimal(0)
    assert await world.reserved(OWNER) == Decimal(0)
    assert await world.ledger_sum(OWNER) == Decimal(0)


# --- schedule, scheduled, cancel-scheduled -------------------------------------


def next_year(month: int, day: int, hour: int) -> str:
    year = datetime.now(UTC).year + 1
    return f"{year}-{month:02d}-{day:02d} {hour:02d}:00:00"


async def test_schedule_documented_shape(api: SmsClient, world: World):
    body = {**SEND, "phone": "+1234567890", "scheduled_at": next_year(7, 1, 23)}
    reply = await api.post("schedule", OWNER, body)

    assert reply.status == 200, reply.body
    assert reply.body["success"] is True
    assert reply.body["status"] == "SCHEDULED"
    assert reply.body["provider"] == "local"
    assert reply.body["server_utc_offset"] == "+02:00"
    assert reply.body["scheduled_at"] == next_year(7, 1, 21)
    assert reply.body["scheduled_at_local"] == next_year(7, 1, 23)
    assert isinstance(reply.body["scheduled_sms_id"], int)
    # Reserved, not charged.
    assert await world.balance(OWNER) == Decimal("1.000000")
    assert await world.reserved(OWNER) == Decimal("0.010000")


async def test_schedule_winter_offset(api: SmsClient):
    body = {**SEND, "scheduled_at": next_year(1, 15, 9)}
    reply = await api.post("schedule", OWNER, body)

    assert reply.body["server_utc_offset"] == "+01:00"
    assert reply.body["scheduled_at"] == next_year(1, 15, 8)


async def test_schedule_explicit_offset_kept(api: SmsClient):
    year = datetime.now(UTC).year + 1
    body = {**SEND, "scheduled_at": f"{year}-07-01T09:00:00+03:00"}
    reply = await api.post("schedule", OWNER, body)

    assert reply.body["scheduled_at"] == f"{year}-07-01 06:00:00"
    assert reply.body["server_utc_offset"] == "+02:00"


@pytest.mark.parametrize(
    "value", ["2020-01-01 10:00:00", "tomorrow", "2031-13-01 10:00:00", "2031-05-09"]
)
async def test_schedule_invalid_time_rejected(api: SmsClient, world: World, value: str):
    reply = await api.post("schedule", OWNER, {**SEND, "scheduled_at": value})

    assert reply.status == 400
    assert "scheduled_at" in reply.body["error"]
    assert await world.reserved(OWNER) == Decimal(0)


async def test_scheduled_lists_own_only(api: SmsClient):
    await api.post("schedule", OWNER, {**SEND, "scheduled_at": future(3)})
    await api.post("schedule", OTHER, {**SEND, "scheduled_at": future(2)})
    mine = await api.get("scheduled", OWNER, limit="20")

    assert mine.status == 200
    assert len(mine.body["scheduled"]) == 1
    item = mine.body["scheduled"][0]
    assert item["phone"] == SEND["phone"]
    assert item["status"] == "SCHEDULED"
    assert item["price"] == "0.0350"
    assert item["server_utc_offset"] in ("+01:00", "+02:00")


async def test_cancel_scheduled_releases(api: SmsClient, world: World):
    created = await api.post("schedule", OWNER, {**SEND, "scheduled_at": future()})
    sms_id = created.body["scheduled_sms_id"]
    reply = await api.post("cancel-scheduled", OWNER, {"scheduled_sms_id": sms_id})
    again = await api.post("cancel-scheduled", OWNER, {"scheduled_sms_id": sms_id})

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "scheduled_sms_id": sms_id,
        "status": "CANCELLED",
        "released": "0.0350",
    }
    assert again.status == 409
    assert await world.reserved(OWNER) == Decimal(0)
    assert await world.balance(OWNER) == Decimal("1.000000")


async def test_cancel_scheduled_other_client_same_404(api: SmsClient, world: World):
    created = await api.post("schedule", OWNER, {**SEND, "scheduled_at": future()})
    sms_id = created.body["scheduled_sms_id"]
    theirs = await api.post("cancel-scheduled", OTHER, {"scheduled_sms_id": sms_id})
    missing = await api.post(
        "cancel-scheduled", OTHER, {"scheduled_sms_id": sms_id + 1000}
    )

    assert theirs.status == 404
    assert missing.status == 404
    assert theirs.body["error"] == f"scheduled SMS {sms_id} not found"
    assert missing.body["error"] == f"scheduled SMS {sms_id + 1000} not found"
    assert await world.reserved(OWNER) == Decimal("0.035000")


async def test_schedule_reseller_for_client(api: SmsClient, world: World):
    body = {**SEND, "client_login": RESOLD, "scheduled_at": future()}
    created = await api.post("schedule", RESELLER, body)
    listed = await api.get("scheduled", RESELLER, client_login=RESOLD)
    missing_login = await api.get("scheduled", RESELLER)

    assert created.status == 200
    assert await world.reserved(RESOLD) == Decimal("0.024000")
    assert await world.reserved(RESELLER) == Decimal("0.020000")
    assert len(listed.body["scheduled"]) == 1
    assert missing_login.status == 400


# --- bulk, campaigns, cancel-campaign -------------------------------------------

BULK = {
    "provider": "local",
    "sender_id": "MyBrand",
    "message": "API bulk test",
    "phones": ["+1234567890", "+1234567891"],
}


async def test_bulk_documented_shape(api: SmsClient, world: World):
    reply = await api.post("bulk", OWNER, {**BULK, "scheduled_at": future()})

    assert reply.status == 200, reply.body
    assert reply.body["success"] is True
    assert reply.body["recipients_queued"] == 2
    assert reply.body["status"] == "QUEUED"
    assert isinstance(reply.body["campaign_id"], int)
    assert reply.body["duplicates_removed"] == 0
    assert reply.body["server_utc_offset"] in ("+01:00", "+02:00")
    assert reply.body["sender_id"] == SENDER_BLOCK
    assert await world.reserved(OWNER) == Decimal("0.020000")


async def test_bulk_duplicates_removed_and_reported(api: SmsClient, world: World):
    phones = ["+1234567890", "+1234567891", "+1234567890", " +1234567891"]
    reply = await api.post("bulk", OWNER, {**BULK, "phones": phones})

    assert reply.body["recipients_queued"] == 2
    assert reply.body["duplicates_removed"] == 2
    assert reply.body["duplicates"] == ["+1234567890", "+1234567891"]
    assert await world.reserved(OWNER) == Decimal("0.020000")


async def test_bulk_every_phone_validated(
    api: SmsClient, world: World, database: Database
):
    phones = ["+1234567890", "12345", "+1234567891"]
    reply = await api.post("bulk", OWNER, {**BULK, "phones": phones})
    not_list = await api.post("bulk", OWNER, {**BULK, "phones": "+1234567890"})
    empty = await api.post("bulk", OWNER, {**BULK, "phones": []})

    assert reply.status == 400
    assert "phones[1]" in reply.body["error"]
    assert not_list.status == 400
    assert empty.status == 400
    assert await fetchval(database, "SELECT count(*) FROM sms_campaigns") == 0
    assert await world.reserved(OWNER) == Decimal(0)


async def test_bulk_insufficient_for_all_rejected(
    api: SmsClient, world: World, database: Database
):
    await fetchval(
        database, "UPDATE accounts SET balance = 0.015 WHERE login = $1", OWNER
    )
    reply = await api.post("bulk", OWNER, BULK)

    assert reply.status == 402
    assert await fetchval(database, "SELECT count(*) FROM sms_messages") == 0


async def test_campaigns_list_and_status(api: SmsClient):
    created = await api.post("bulk", OWNER, {**BULK, "scheduled_at": future()})
    campaign_id = created.body["campaign_id"]
    listed = await api.get("campaigns", OWNER, limit="20")
    status = await api.get("status", OWNER, campaign_id=str(campaign_id))
    others = await api.get("campaigns", OTHER)

    assert listed.status == 200
    (campaign,) = listed.body["campaigns"]
    assert campaign["campaign_id"] == campaign_id
    assert campaign["status"] == "QUEUED"
    assert campaign["recipients"] == 2
    assert campaign["counts"] == {"QUEUED": 2}
    assert campaign["price"] == "0.0200"
    assert [r["phone"] for r in status.body["recipients"]] == BULK["phones"]
    assert {r["status"] for r in status.body["recipients"]} == {"QUEUED"}
    assert others.body["campaigns"] == []


async def test_cancel_campaign_releases(api: SmsClient, world: World):
    created = await api.post("bulk", OWNER, {**BULK, "scheduled_at": future()})
    campaign_id = created.body["campaign_id"]
    theirs = await api.post("cancel-campaign", OTHER, {"campaign_id": campaign_id})
    reply = await api.post("cancel-campaign", OWNER, {"campaign_id": campaign_id})
    listed = await api.get("campaigns", OWNER)

    assert theirs.status == 404
    assert reply.body == {
        "success": True,
        "campaign_id": campaign_id,
        "status": "CANCELLED",
        "recipients_cancelled": 2,
    }
    assert listed.body["campaigns"][0]["status"] == "CANCELLED"
    assert listed.body["campaigns"][0]["counts"] == {"CANCELLED": 2}
    assert await world.reserved(OWNER) == Decimal(0)
    assert await world.balance(OWNER) == Decimal("1.000000")


async def test_cancel_campaign_twice_409(api: SmsClient, world: World):
    created = await api.post("bulk", OWNER, {**BULK, "scheduled_at": future()})
    campaign_id = created.body["campaign_id"]
    await api.post("cancel-campaign", OWNER, {"campaign_id": campaign_id})

    again = await api.post("cancel-campaign", OWNER, {"campaign_id": campaign_id})

    assert again.status == 409
    assert again.body["success"] is False
    assert await world.balance(OWNER) == Decimal("1.000000")


async def test_send_for_inactive_client_403(api: SmsClient, world: World):
    before = await world.balance(RESOLD)
    async with world.db.pool.acquire() as connection:
        await connection.execute(
            "UPDATE accounts SET status = 'inactive' WHERE login = $1", RESOLD
        )

    reply = await api.post("send", RESELLER, {**SEND, "client_login": RESOLD})

    assert reply.status == 403
    assert reply.body["success"] is False
    assert await world.balance(RESOLD) == before


async def test_bulk_reseller_for_client(api: SmsClient, world: World):
    body = {**BULK, "client_login": RESOLD}
    reply = await api.post("bulk", RESELLER, body)
    listed = await api.get("campaigns", RESELLER, client_login=RESOLD)

    assert reply.status == 200
    assert await world.reserved(RESOLD) == Decimal("0.012000")
    assert await world.reserved(RESELLER) == Decimal("0.010000")
    assert len(listed.body["campaigns"]) == 1


# --- status, history ------------------------------------------------------------


async def test_status_own_message(api: SmsClient):
    sent = await api.post("send", OWNER, SEND)
    reply = await api.get("status", OWNER, id=str(sent.body["sms_id"]))

    assert reply.status == 200
    assert reply.body["sms_id"] == sent.body["sms_id"]
    assert reply.body["status"] == "SENT_TO_PROVIDER"
    assert reply.body["phone"] == SEND["phone"]
    assert reply.body["price"] == "0.0350"
    assert MONEY.match(reply.body["price"])


async def test_status_other_client_same_404(api: SmsClient):
    sent = await api.post("send", OWNER, SEND)
    sms_id = sent.body["sms_id"]
    theirs = await api.get("status", OTHER, id=str(sms_id))
    missing = await api.get("status", OTHER, id=str(sms_id + 1000))
    reseller = await api.get("status", RESELLER, id=str(sms_id), client_login=RESOLD)

    assert theirs.status == missing.status == reseller.status == 404
    assert theirs.body["error"] == f"SMS {sms_id} not found"
    assert missing.body["error"] == f"SMS {sms_id + 1000} not found"


async def test_history_own_newest_first(api: SmsClient):
    first = await api.post("send", OWNER, SEND)
    second = await api.post("send", OWNER, {**SEND, "phone": "+1234567890"})
    await api.post("send", OTHER, SEND)
    reply = await api.get("history", OWNER, limit="20")
    reseller = await api.get("history", RESELLER, client_login=OWNER)

    ids = [item["sms_id"] for item in reply.body["history"]]
    assert ids == [second.body["sms_id"], first.body["sms_id"]]
    assert reseller.status == 404


# --- providers, rates, quota ----------------------------------------------------


async def test_providers_lists_configured(api: SmsClient):
    reply = await api.get("providers", OWNER)

    assert reply.body == {
        "success": True,
        "providers": [
            {
                "code": "local",
                "name": "Local development provider",
                "default": 1,
                "sender_id_guaranteed": False,
            }
        ],
    }


async def test_rates_per_caller(api: SmsClient):
    client = await api.get("rates", OWNER)
    reseller = await api.get("rates", RESELLER)
    resold = await api.get("rates", RESELLER, client_login=RESOLD)

    def prices(reply: Reply) -> dict[str, str]:
        return {r["prefix"]: r["price"] for r in reply.body["rates"]}

    assert prices(client) == {"1": "0.0100", "44": "0.0350", "49": "0.0500"}
    assert prices(reseller) == {"1": "0.0050", "44": "0.0200"}
    assert prices(resold) == {"1": "0.0060", "44": "0.0240"}
    assert client.body["currency"] == "EUR"


async def test_rates_follow_reseller_markup(api: SmsClient, database: Database):
    await fetchval(
        database, "UPDATE accounts SET markup = 0.5 WHERE login = $1", RESELLER
    )
    reply = await api.get("rates", RESOLD)

    assert {r["prefix"]: r["price"] for r in reply.body["rates"]} == {
        "1": "0.0075",
        "44": "0.0300",
    }


async def test_quota_estimate(api: SmsClient):
    reply = await api.get("quota", OWNER, provider="local", phone="+447575396991")
    reseller = await api.get("quota", RESELLER, provider="local")

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "provider": "local",
        "currency": "EUR",
        "balance": "1.0000",
        "available": "1.0000",
        "price_min": "0.0100",
        "price_max": "0.0500",
        "messages_min": 20,
        "messages_max": 100,
        "phone": "+447575396991",
        "price": "0.0350",
        "messages": 28,
    }
    assert reseller.status == 400


async def test_quota_capped_by_reseller_funds(api: SmsClient, world: World):
    async with world.db.pool.acquire() as connection:
        await connection.execute(
            "UPDATE accounts SET balance = 0 WHERE login = $1", RESELLER
        )

    reply = await api.get(
        "quota", RESELLER, provider="local", client_login=RESOLD, phone="+447575396991"
    )

    assert reply.status == 200
    assert reply.body["messages_min"] == 0
    assert reply.body["messages_max"] == 0
    assert reply.body["messages"] == 0


# --- delivery reports, OpenAPI, metrics ------------------------------------------


async def test_delivery_report_signed_updates(api: SmsClient):
    sent = await api.post("send", OWNER, SEND)
    sms_id = sent.body["sms_id"]
    body = json.dumps(
        {"reference": f"callgate-sms-{sms_id}", "status": "delivered"}
    ).encode()
    good = await api.http.post(
        "/sms-api/dlr/local",
        data=body,
        headers={"X-Callgate-Signature": sms_api.signature("dlr-test-secret", body)},
    )
    bad = await api.http.post(
        "/sms-api/dlr/local", data=body, headers={"X-Callgate-Signature": "sha256=0"}
    )
    status = await api.get("status", OWNER, id=str(sms_id))

    assert good.status == 200
    assert await good.json() == {
        "success": True,
        "sms_id": sms_id,
        "status": "DELIVERED",
    }
    assert bad.status == 401
    assert status.body["status"] == "DELIVERED"


async def test_missing_key_401(api: SmsClient):
    reply = await api.call("GET", "history", None)

    assert reply.status == 401
    assert reply.body["success"] is False


async def test_openapi_lists_sms_endpoints(api: SmsClient):
    response = await api.http.get("/openapi.json")
    document = await response.json()

    for name in ("send", "schedule", "bulk", "cancel-campaign", "history"):
        assert f"/sms-api/{name}" in document["paths"]
    assert "post" in document["paths"]["/sms-api/send"]


async def test_metrics_count_messages(api: SmsClient):
    await api.post("send", OWNER, SEND)
    response = await api.http.get("/metrics")
    text = await response.text()

    assert (
        'callgate_sms_messages_total{provider="local",status="SENT_TO_PROVIDER"}'
        in text
    )


async def test_send_concurrent_reseller_limits(
    api: SmsClient, world: World, database: Database
):
    # reseller1 pays 0.020 per message: 0.10 covers exactly 5.
    await set_balance(database, RESELLER, "0.10")
    replies = await asyncio.gather(*(api.post("send", RESOLD, SEND) for _ in range(12)))

    assert [reply.status for reply in replies].count(200) == 5
    assert await world.balance(RESELLER) == Decimal(0)
    assert await world.balance(RESOLD) == Decimal("3.00") - 5 * Decimal("0.024")
    for login in (RESOLD, RESELLER):
        assert await world.reserved(login) == Decimal(0)
        assert await world.ledger_sum(login) == await world.balance(login)


async def test_reseller_other_resellers_client_404(
    api: SmsClient, world: World, database: Database
):
    await world.reseller("reseller2", "wholesale", "50")
    await world.client("8880000001", balance="5.00", reseller="reseller2")
    api.keys["reseller2"] = await issue_key(database, "reseller2")
    sent = await api.post("send", RESELLER, {**SEND, "client_login": RESOLD})
    theirs = await api.post("send", "reseller2", {**SEND, "client_login": RESOLD})
    status = await api.get(
        "status", "reseller2", id=str(sent.body["sms_id"]), client_login="8880000001"
    )

    assert theirs.status == 404
    assert theirs.body["error"] == f"client {RESOLD!r} not found"
    assert status.status == 404
    assert await world.balance("8880000001") == Decimal("5.000000")
