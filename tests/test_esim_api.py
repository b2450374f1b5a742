"""eSIM API against the database: prices per caller, purchases, orders, access."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api import esim as esim_api
from api.app import create_app
from engine.db import Database
from engine.settings import Settings
from tests.conftest import World
from tests.test_sms_api import (
    OTHER,
    OWNER,
    RESELLER,
    RESOLD,
    Reply,
    SmsClient,
    issue_key,
    set_balance,
)

pytestmark = pytest.mark.timeout(60)

PACKAGE = "P2CYMUS93"  # 4.50 in the local catalogue


async def build_esim_scene(world: World) -> None:
    rates = [("1", "0.010000", 1, 1, "0")]
    await world.plan("standard", rates)
    await world.plan("wholesale", rates)
    await world.client(OWNER, "standard", "10.00")
    await world.client(OTHER, "standard", "10.00")
    await world.reseller(RESELLER, "wholesale", "100")
    await world.client(RESOLD, balance="20.00", reseller=RESELLER)


async def open_esim(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[SmsClient]:
    await build_esim_scene(world)
    app = create_app(database, settings, [esim_api.API])
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await http.start_server()
    client = SmsClient(http, path="/esim-api/index.php")
    for login in (OWNER, OTHER, RESELLER, RESOLD):
        client.keys[login] = await issue_key(database, login)
    try:
        yield client
    finally:
        await http.close()


@pytest.fixture
async def api(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[SmsClient]:
    configured = settings.replace(local_providers=True)
    async for client in open_esim(database, configured, world):
        yield client


async def test_packages_search_and_limit(api: SmsClient):
    europe = await api.get("packages", OWNER, q="Europe", limit="5")
    one = await api.get("packages", OWNER, q="europe", limit="1")
    germany = await api.get("packages", OWNER, q="Germany")

    assert europe.status == 200
    codes = [p["package_code"] for p in europe.body["packages"]]
    assert PACKAGE in codes
    assert "US5GB30" not in codes
    assert europe.body["count"] == len(codes)
    assert len(one.body["packages"]) == 1
    assert "DE" in germany.body["packages"][0]["countries"]
    first = europe.body["packages"][0]
    assert set(first) == {
        "package_code",
        "name",
        "region",
        "data_mb",
        "validity_days",
        "countries",
        "price",
        "currency",
    }


async def test_packages_price_per_caller(api: SmsClient):
    def price(reply: Reply) -> str:
        found = [p for p in reply.body["packages"] if p["package_code"] == PACKAGE]
        return str(found[0]["price"])

    operator_client = await api.get("packages", OWNER, q=PACKAGE)
    reseller = await api.get("packages", RESELLER, q=PACKAGE)
    resold = await api.get("packages", RESOLD, q=PACKAGE)

    assert price(operator_client) == "4.5000"
    assert price(reseller) == "4.5000"
    assert price(resold) == "5.4000"


async def test_packages_invalid_limit(api: SmsClient):
    reply = await api.get("packages", OWNER, limit="0")

    assert reply.status == 400
    assert "limit" in reply.body["error"]


async def test_coverage_lists_networks(api: SmsClient):
    reply = await api.get("coverage", OWNER, package_code=PACKAGE)
    missing = await api.get("coverage", OWNER, package_code="NOPE1")

    assert reply.status == 200
    assert reply.body["package_code"] == PACKAGE
    germany = next(c for c in reply.body["coverage"] if c["country"] == "DE")
    assert germany == {
        "country": "DE",
        "name": "Germany",
        "networks": ["Telekom", "Vodafone", "O2"],
    }
    assert missing.status == 404


async def test_balance_of_key_account(api: SmsClient):
    client = await api.get("balance", OWNER)
    reseller = await api.get("balance", RESELLER)

    assert client.body == {"success": True, "balance": "10.0000", "currency": "EUR"}
    assert reseller.body["balance"] == "100.0000"


async def test_buy_client_charges_chain(api: SmsClient, world: World):
    reply = await api.post("buy", RESOLD, {"package_code": PACKAGE})

    assert reply.status == 200, reply.body
    order = reply.body["order"]
    assert order["status"] == "ACTIVE"
    assert order["price"] == "5.4000"
    assert order["package_name"] == "Europe 3 GB 30 days"
    assert order["iccid"].startswith("8999")
    assert order["activation"]["lpa"].startswith("LPA:1$smdp.example$")
    assert order["activation"]["smdp_address"] == "smdp.example"
    assert order["activation"]["qr_code_data"] == order["activation"]["lpa"]
    assert order["data_total_mb"] == 3072
    assert order["data_remaining_mb"] == 3072
    assert reply.body["balance_after"] == "14.6000"
    assert reply.body["replayed"] == 0
    assert await world.balance(RESOLD) == Decimal("14.600000")
    assert await world.balance(RESELLER) == Decimal("95.500000")
    for login in (RESOLD, RESELLER):
        assert await world.ledger_sum(login) == await world.balance(login)
        assert await world.reserved(login) == Decimal(0)


async def test_buy_reseller_pays_alone(api: SmsClient, world: World):
    reply = await api.post("buy", RESELLER, {"package_code": PACKAGE})
    with_login = await api.post(
        "buy", RESELLER, {"package_code": PACKAGE, "client_login": RESOLD}
    )

    assert reply.status == 200
    assert reply.body["order"]["price"] == "4.5000"
    assert await world.balance(RESELLER) == Decimal("95.500000")
    assert await world.balance(RESOLD) == Decimal("20.000000")
    assert with_login.status == 400


async def test_buy_external_id_replays(api: SmsClient, world: World):
    body = {"package_code": PACKAGE, "external_id": "shop-1"}
    first = await api.post("buy", OWNER, body)
    again = await api.post("buy", OWNER, body)
    other_package = await api.post(
        "buy", OWNER, {"package_code": "EU10GB30", "external_id": "shop-1"}
    )
    other_client = await api.post("buy", OTHER, body)

    assert first.body["order"]["order_id"] == again.body["order"]["order_id"]
    assert again.body["replayed"] == 1
    assert other_package.status == 409
    assert other_client.status == 200
    assert other_client.body["order"]["order_id"] != first.body["order"]["order_id"]
    assert await world.balance(OWNER) == Decimal("5.500000")


async def test_buy_concurrent_same_external_id_once(api: SmsClient, world: World):
    body = {"package_code": PACKAGE, "external_id": "race-1"}
    replies = await asyncio.gather(*(api.post("buy", OWNER, body) for _ in range(5)))

    assert {reply.status for reply in replies} == {200}
    assert len({reply.body["order"]["order_id"] for reply in replies}) == 1
    assert await world.balance(OWNER) == Decimal("5.500000")


async def test_buy_concurrent_exactly_affordable(
    api: SmsClient, world: World, database: Database
):
    await set_balance(database, OWNER, "9.00")
    replies = await asyncio.gather(
        *(api.post("buy", OWNER, {"package_code": PACKAGE}) for _ in range(6))
    )

    assert sorted(reply.status for reply in replies) == [200, 200, 402, 402, 402, 402]
    assert await world.balance(OWNER) == Decimal(0)
    assert await world.ledger_sum(OWNER) == Decimal(0)
    assert await world.reserved(OWNER) == Decimal(0)


async def test_buy_insufficient_and_blocked(
    api: SmsClient, world: World, database: Database
):
    await set_balance(database, OWNER, "1.00")
    await set_balance(database, RESELLER, "0")
    poor = await api.post("buy", OWNER, {"package_code": PACKAGE})
    blocked = await api.post("buy", RESOLD, {"package_code": PACKAGE})

    assert poor.status == 402
    assert blocked.status == 402
    assert "reseller" in blocked.body["error"]
    assert await world.balance(RESOLD) == Decimal("20.000000")
    assert await world.reserved(RESOLD) == Decimal(0)


async def test_buy_invalid_input(api: SmsClient):
    missing = await api.post("buy", OWNER, {})
    unknown = await api.post("buy", OWNER, {"package_code": "NOPE1"})
    bad = await api.post("buy", OWNER, {"package_code": "../x"})

    assert missing.status == 400
    assert unknown.status == 404
    assert bad.status == 400


async def test_orders_own_only(api: SmsClient):
    bought = await api.post("buy", OWNER, {"package_code": PACKAGE})
    mine = await api.get("orders", OWNER)
    theirs = await api.get("orders", OTHER)

    assert [o["order_id"] for o in mine.body["orders"]] == [
        bought.body["order"]["order_id"]
    ]
    assert mine.body["orders"][0]["status"] == "ACTIVE"
    assert theirs.body["orders"] == []


async def test_sync_order_own_and_404(api: SmsClient):
    bought = await api.post("buy", OWNER, {"package_code": PACKAGE})
    order_id = str(bought.body["order"]["order_id"])
    mine = await api.get("sync-order", OWNER, order_id=order_id)
    theirs = await api.get("sync-order", OTHER, order_id=order_id)
    missing = await api.get("sync-order", OTHER, order_id="999999")

    assert mine.status == 200
    assert mine.body["order"]["iccid"] == bought.body["order"]["iccid"]
    assert theirs.status == missing.status == 404
    assert theirs.body["error"] == f"order {order_id} not found"


async def test_not_configured_503(database: Database, settings: Settings, world: World):
    async for api in open_esim(database, settings, world):
        reply = await api.get("packages", OWNER)
        assert reply.status == 503
        assert reply.body["success"] is False


async def test_openapi_and_metrics(api: SmsClient):
    await api.post("buy", OWNER, {"package_code": PACKAGE})
    document = await (await api.http.get("/openapi.json")).json()
    metrics = await (await api.http.get("/metrics")).text()

    for name in ("packages", "coverage", "balance", "buy", "orders", "sync-order"):
        assert f"/esim-api/{name}" in document["paths"]
    assert 'callgate_esim_orders_total{status="ACTIVE"}' in metrics


# --- a fake upstream on 127.0.0.1 ------------------------------------------------


class FakeUpstream:
    """An eSIM upstream: orders keyed by Idempotency-Key, modes ready/processing/..."""

    def __init__(self) -> None:
        self.mode = "ready"
        self.delay = 0.0
        self.orders: dict[str, dict[str, Any]] = {}
        self.keys: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/packages", self.packages)
        app.router.add_post("/orders", self.place)
        app.router.add_get("/orders/{id}", self.order)
        return app

    async def packages(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "packages": [
                    {
                        "code": "UP1",
                        "name": "Upstream Europe 1 GB",
                        "region": "Europe",
                        "data_mb": 1024,
                        "validity_days": 7,
                        "price": "2.00",
                        "currency": "EUR",
                        "coverage": [{"country": "FR", "networks": ["Orange"]}],
                    },
                    {"code": "BAD"},
                ]
            }
        )

    async def place(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        self.keys.append(key)
        if self.mode in ("400", "500"):
            return web.json_response({"error": "fake"}, status=int(self.mode))
        order = self.orders.get(key)
        if order is None:
            order = {
                "id": f"u{len(self.orders) + 1}",
                "status": "processing" if self.mode == "processing" else "ready",
                "data_total_mb": 1024,
                "data_used_mb": 0,
            }
            self.orders[key] = order
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response(order, status=201)

    async def order(self, request: web.Request) -> web.Response:
        for order in self.orders.values():
            if order["id"] == request.match_info["id"]:
                return web.json_response(order)
        return web.json_response({"error": "not found"}, status=404)

    def ready(self, order_id: str) -> None:
        for order in self.orders.values():
            if order["id"] == order_id:
                order.update(
                    status="ready",
                    iccid="8901000000000000001",
                    lpa="LPA:1$smdp.example$UPCODE",
                    data_used_mb=100,
                    expires_at="2031-01-01T00:00:00Z",
                )


@pytest.fixture
async def upstream(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[tuple[SmsClient, FakeUpstream]]:
    fake = FakeUpstream()
    server = TestServer(fake.app(), host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    configured = settings.replace(
        esim_url=url, esim_api_key="k", esim_timeout=0.3, esim_markup=Decimal("0.25")
    )
    try:
        async for client in open_esim(database, configured, world):
            yield client, fake
    finally:
        await server.close()


async def test_upstream_catalogue_with_markup(
    upstream: tuple[SmsClient, FakeUpstream],
):
    api, _ = upstream
    reply = await api.get("packages", RESOLD)

    (package,) = reply.body["packages"]
    assert package["package_code"] == "UP1"
    # 2.00 x 1.25 (operator) x 1.20 (reseller1's markup).
    assert package["price"] == "3.0000"


async def test_upstream_processing_then_sync_charges(
    upstream: tuple[SmsClient, FakeUpstream], world: World
):
    api, fake = upstream
    fake.mode = "processing"
    bought = await api.post("buy", OWNER, {"package_code": "UP1"})
    order = bought.body["order"]

    assert order["status"] == "PENDING"
    assert await world.reserved(OWNER) == Decimal("2.500000")
    assert await world.balance(OWNER) == Decimal("10.000000")
    fake.ready("u1")
    synced = await api.get("sync-order", OWNER, order_id=str(order["order_id"]))

    assert synced.body["order"]["status"] == "ACTIVE"
    assert synced.body["order"]["iccid"] == "8901000000000000001"
    assert synced.body["order"]["data_remaining_mb"] == 924
    assert synced.body["order"]["expires_at"] == "2031-01-01 00:00:00"
    assert await world.balance(OWNER) == Decimal("7.500000")
    assert await world.reserved(OWNER) == Decimal(0)
    again = await api.get("sync-order", OWNER, order_id=str(order["order_id"]))
    assert again.body["order"]["status"] == "ACTIVE"
    assert await world.balance(OWNER) == Decimal("7.500000")


async def test_upstream_4xx_released(
    upstream: tuple[SmsClient, FakeUpstream], world: World
):
    api, fake = upstream
    fake.mode = "400"
    reply = await api.post("buy", OWNER, {"package_code": "UP1"})
    orders = await api.get("orders", OWNER)

    assert reply.status == 502
    assert "nothing was charged" in reply.body["error"]
    assert orders.body["orders"][0]["status"] == "FAILED"
    assert await world.reserved(OWNER) == Decimal(0)
    assert await world.balance(OWNER) == Decimal("10.000000")


async def test_upstream_5xx_and_timeout_pending_then_sync(
    upstream: tuple[SmsClient, FakeUpstream], world: World
):
    api, fake = upstream
    fake.mode = "500"
    failed = await api.post("buy", OWNER, {"package_code": "UP1"})
    fake.mode = "ready"
    fake.delay = 1.0
    slow = await api.post("buy", OTHER, {"package_code": "UP1"})

    assert failed.body["order"]["status"] == "PENDING"
    assert slow.body["order"]["status"] == "PENDING"
    assert await world.reserved(OWNER) == Decimal("2.500000")
    fake.delay = 0.0
    order_id = str(failed.body["order"]["order_id"])
    synced = await api.get("sync-order", OWNER, order_id=order_id)

    # The sync repeats the order with the same idempotency key.
    assert fake.keys[0] == fake.keys[-1]
    assert synced.body["order"]["status"] == "ACTIVE"
    assert await world.balance(OWNER) == Decimal("7.500000")
    assert await world.reserved(OWNER) == Decimal(0)
