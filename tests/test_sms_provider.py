"""The cryptosms adapter against a fake provider on 127.0.0.1, and through the API."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.db import Database
from engine.providers.base import Outcome, OutgoingSms
from engine.providers.cryptosms import CryptoSms
from engine.settings import Settings
from tests.conftest import World
from tests.test_sms_api import OWNER, SEND, SmsClient, open_client, sms_settings

pytestmark = pytest.mark.timeout(60)

TOKEN = "provider-token"


@dataclass
class FakeProvider:
    """A CryptoSMS provider: modes accept, reject, 400, 500, 503, slow and 401."""

    mode: str = "accept"
    delay: float = 1.0
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/send", self.send)
        app.router.add_get("/status", self.status_by_reference)
        app.router.add_get("/status/{id}", self.status)
        return app

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        for stored in self.messages.values():
            if stored["reference"] == body["reference"]:
                return stored
        message = {
            "id": f"p{len(self.messages) + 1}",
            "reference": body["reference"],
            "status": "accepted",
        }
        self.messages[message["id"]] = message
        return message

    async def send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        self.headers.append(request.headers.get("Authorization", ""))
        if self.mode in ("400", "500", "503"):
            return web.json_response({"error": "fake failure"}, status=int(self.mode))
        if self.mode == "reject":
            return web.json_response({"id": "r1", "status": "rejected", "error": "bad"})
        # A slow provider has stored the message before its late response.
        message = self._store(body)
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        return web.json_response({"id": message["id"], "status": message["status"]})

    async def status(self, request: web.Request) -> web.Response:
        if self.mode == "401":
            return web.json_response({"error": "bad token"}, status=401)
        message = self.messages.get(request.match_info["id"])
        if message is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(message)

    async def status_by_reference(self, request: web.Request) -> web.Response:
        reference = request.query.get("reference")
        for message in self.messages.values():
            if message["reference"] == reference:
                return web.json_response(message)
        return web.json_response({"error": "not found"}, status=404)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeProvider, str]]:
    provider = FakeProvider()
    server = TestServer(provider.app(), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield provider, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def outgoing(reference: str = "callgate-sms-1") -> OutgoingSms:
    return OutgoingSms(reference, "+447575396991", "MyBrand", "hello", "GSM-7", 1)


async def test_adapter_accept_sends_protocol(fake: tuple[FakeProvider, str]):
    provider, url = fake
    adapter = CryptoSms(url, TOKEN, 2.0)
    result = await adapter.send(outgoing())

    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == "p1"
    assert result.provider_status == "accepted"
    assert provider.received == [
        {
            "reference": "callgate-sms-1",
            "to": "+447575396991",
            "from": "MyBrand",
            "text": "hello",
            "encoding": "GSM-7",
            "segments": 1,
        }
    ]
    assert provider.headers == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("400", Outcome.REFUSED),
        ("reject", Outcome.REFUSED),
        ("500", Outcome.UNKNOWN),
        ("503", Outcome.UNAVAILABLE),
    ],
)
async def test_adapter_http_errors_classified(
    fake: tuple[FakeProvider, str], mode: str, outcome: Outcome
):
    provider, url = fake
    provider.mode = mode
    result = await CryptoSms(url, TOKEN, 2.0).send(outgoing())

    assert result.outcome is outcome
    assert result.error


async def test_adapter_timeout_unknown(fake: tuple[FakeProvider, str]):
    provider, url = fake
    provider.mode = "slow"
    result = await CryptoSms(url, TOKEN, 0.2).send(outgoing())

    assert result.outcome is Outcome.UNKNOWN
    assert result.error == "provider timed out"


async def test_adapter_connection_refused_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await CryptoSms(f"http://127.0.0.1:{port}", TOKEN, 1.0).send(outgoing())

    assert result.outcome is Outcome.UNAVAILABLE


async def test_adapter_status_by_id_and_reference(fake: tuple[FakeProvider, str]):
    provider, url = fake
    adapter = CryptoSms(url, TOKEN, 2.0)
    await adapter.send(outgoing())
    provider.messages["p1"]["status"] = "delivered"
    by_id = await adapter.status("callgate-sms-1", "p1")
    by_reference = await adapter.status("callgate-sms-1", None)
    unknown = await adapter.status("callgate-sms-9", None)

    assert (by_id.outcome, by_id.provider_status) == (Outcome.ACCEPTED, "delivered")
    assert by_reference.provider_message_id == "p1"
    assert unknown.outcome is Outcome.REFUSED


async def test_adapter_persistent_session(fake: tuple[FakeProvider, str]):
    _, url = fake
    adapter = CryptoSms(url, TOKEN, 2.0)
    await adapter.open()
    try:
        first = await adapter.send(outgoing("callgate-sms-1"))
        second = await adapter.send(outgoing("callgate-sms-2"))
    finally:
        await adapter.close()

    assert first.provider_message_id == "p1"
    assert second.provider_message_id == "p2"


# --- through the API -------------------------------------------------------


@pytest.fixture
async def api_with_fake(
    database: Database,
    settings: Settings,
    world: World,
    fake: tuple[FakeProvider, str],
) -> AsyncIterator[tuple[SmsClient, FakeProvider]]:
    provider, url = fake
    configured = sms_settings(
        settings,
        local_providers=False,
        sms_url=url,
        sms_api_key=TOKEN,
        sms_timeout=0.3,
    )
    async for client in open_client(database, configured, world):
        yield client, provider


CRYPTO = {**SEND, "provider": "cryptosms"}


async def test_api_cryptosms_accepted_charged(
    api_with_fake: tuple[SmsClient, FakeProvider], world: World
):
    api, _ = api_with_fake
    reply = await api.post("send", OWNER, CRYPTO)

    assert reply.status == 200
    assert reply.body["provider_name"] == "CryptoSMS"
    assert reply.body["status"] == "SENT_TO_PROVIDER"
    assert await world.balance(OWNER) == Decimal("0.965000")


async def test_api_provider_4xx_failed_not_charged(
    api_with_fake: tuple[SmsClient, FakeProvider], world: World
):
    api, provider = api_with_fake
    provider.mode = "400"
    reply = await api.post("send", OWNER, CRYPTO)
    history = await api.get("history", OWNER)

    assert reply.status == 502
    assert "not charged" in reply.body["error"]
    assert history.body["history"][0]["status"] == "FAILED"
    assert await world.balance(OWNER) == Decimal("1.000000")
    assert await world.reserved(OWNER) == Decimal(0)


async def test_api_provider_5xx_pending_held(
    api_with_fake: tuple[SmsClient, FakeProvider], world: World
):
    api, provider = api_with_fake
    provider.mode = "500"
    reply = await api.post("send", OWNER, CRYPTO)

    assert reply.status == 200
    assert reply.body["status"] == "PENDING"
    assert reply.body["balance_after"] == "1.0000"
    assert await world.reserved(OWNER) == Decimal("0.035000")


async def test_api_timeout_pending_then_status_settles(
    api_with_fake: tuple[SmsClient, FakeProvider], world: World
):
    api, provider = api_with_fake
    provider.mode = "slow"
    provider.delay = 0.6
    reply = await api.post("send", OWNER, CRYPTO)
    sms_id = reply.body["sms_id"]

    assert reply.body["status"] == "PENDING"
    assert await world.reserved(OWNER) == Decimal("0.035000")
    checked = await api.get("status", OWNER, id=str(sms_id))

    assert checked.body["status"] == "SENT_TO_PROVIDER"
    assert await world.reserved(OWNER) == Decimal(0)
    assert await world.balance(OWNER) == Decimal("0.965000")
    assert await world.ledger_sum(OWNER) == await world.balance(OWNER)


async def test_api_timeout_unknown_to_provider_released(
    api_with_fake: tuple[SmsClient, FakeProvider], world: World
):
    api, provider = api_with_fake
    provider.mode = "500"
    reply = await api.post("send", OWNER, CRYPTO)
    checked = await api.get("status", OWNER, id=str(reply.body["sms_id"]))

    assert checked.body["status"] == "FAILED"
    assert await world.reserved(OWNER) == Decimal(0)
    assert await world.balance(OWNER) == Decimal("1.000000")


async def test_api_delivery_report_settles_pending(
    api_with_fake: tuple[SmsClient, FakeProvider], world: World
):
    from api.sms import signature

    api, provider = api_with_fake
    provider.mode = "500"
    reply = await api.post("send", OWNER, CRYPTO)
    sms_id = reply.body["sms_id"]
    body = json.dumps(
        {"id": "p7", "reference": f"callgate-sms-{sms_id}", "status": "delivered"}
    ).encode()
    report = await api.http.post(
        "/sms-api/dlr/cryptosms",
        data=body,
        headers={"X-Callgate-Signature": signature("dlr-test-secret", body)},
    )
    wrong_provider = await api.http.post(
        "/sms-api/dlr/local",
        data=body,
        headers={"X-Callgate-Signature": signature("dlr-test-secret", body)},
    )

    assert report.status == 200
    assert wrong_provider.status == 404
    assert await world.balance(OWNER) == Decimal("0.965000")
    assert await world.reserved(OWNER) == Decimal(0)
    status = await api.get("status", OWNER, id=str(sms_id))
    assert status.body["status"] == "DELIVERED"


async def test_adapter_status_error_stays_unknown(fake: tuple[FakeProvider, str]):
    provider, url = fake
    adapter = CryptoSms(url, TOKEN, 2.0)
    await adapter.send(outgoing())
    provider.mode = "401"
    result = await adapter.status("callgate-sms-1", "p1")

    assert result.outcome is Outcome.UNKNOWN
    assert result.error == "status check failed (HTTP 401)"
