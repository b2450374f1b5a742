"""Portal, markup, Web Phone and account management endpoints of the Reseller API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from engine.calls import AuthorizeRequest, CallService, SettleRequest
from engine.db import Database
from engine.settings import Settings
from tests import test_api_reseller as support
from tests.conftest import World
from tests.test_api_reseller import (
    JANUS_SECRET,
    ResellerClient,
    assert_field_error,
    snapshot,
)

api = support.api
api_settings = support.api_settings

CLIENT = "7770000001"
PORTAL_GETS = [
    "client-dashboard",
    "client-sip",
    "client-calls",
    "client-failed-calls",
    "client-refills",
    "client-callerids",
    "client-rates",
]
FORBIDDEN_KEY_PARTS = ("markup", "wholesale", "reseller", "agent", "credit_limit")
FORBIDDEN_KEYS = {"buy_cost", "group", "reserved", "cost_plan_id"}


def walk(value: Any) -> Iterator[tuple[str | None, Any]]:
    """Yield every (key, value) pair of a parsed JSON document, keys None in lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield None, item
            yield from walk(item)


async def set_password(api: ResellerClient, login: str, password: str) -> None:
    reply = await api.post(
        "set-client-password", "resa", {"login": login, "password": password}
    )
    assert reply.status == 200, reply.body


async def test_portal_never_shows_reseller_data(
    api: ResellerClient, world: World, calls: CallService
):
    async with world.db.pool.acquire() as connection:
        await connection.execute(
            "UPDATE accounts SET balance = 987.6543 WHERE login = 'resa'"
        )
        await connection.execute(
            "INSERT INTO failed_cdrs (uniqueid, account_id, number, reason, source)"
            " VALUES ('f.1', $1, '15555550101', 'reseller_no_credit', 'agi')",
            world.accounts[CLIENT],
        )
    assert (
        await api.post("set-agent-markup", "resa", {"markup_percent": 37})
    ).status == 200
    await api.post("transfer", "resa", {"login": CLIENT, "amount": 5})
    call = AuthorizeRequest("1796392000.1", f"PJSIP/{CLIENT}-00000001", "4420799")
    assert (await calls.authorize(call)).status == "OK"
    await calls.settle(SettleRequest(call.uniqueid, "ANSWER", 75, 16))
    await set_password(api, CLIENT, "PortalPass123")

    replies = [await api.get("portal-bootstrap", "resa")]
    replies += [await api.get(name, "resa", login=CLIENT) for name in PORTAL_GETS]
    replies.append(
        await api.get("client-sip", "resa", login=CLIENT, include_service="1")
    )
    replies.append(
        await api.post(
            "client-auth", "resa", {"login": CLIENT, "password": "PortalPass123"}
        )
    )

    wholesale = {0.01, 0.02}
    for reply in replies:
        assert reply.status == 200, reply.body
        text = json.dumps(reply.body)
        assert "987.654" not in text
        assert "reseller" not in text.lower()
        for key, value in walk(reply.body):
            if key is not None:
                lowered = key.lower()
                assert not any(part in lowered for part in FORBIDDEN_KEY_PARTS), key
                assert key not in FORBIDDEN_KEYS, key
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                assert value not in (987.6543, 37, 0.37, 1.37), (key, value)
                assert value not in wholesale, (key, value)
            if isinstance(value, str):
                assert value not in ("37", "0.37", "37%", "Agent"), (key, value)
    rates = replies[PORTAL_GETS.index("client-rates") + 1].body["rates"]
    assert [(r["prefix"], r["rate"], r["connect_fee"]) for r in rates] == [
        ("1", 0.0137, 0),
        ("44", 0.0274, 0.0137),
    ]
    failed = replies[PORTAL_GETS.index("client-failed-calls") + 1].body
    assert failed["failed_calls"][0]["reason"] == "service_unavailable"
    calls_page = replies[PORTAL_GETS.index("client-calls") + 1].body
    # 75 s on 60/60 blocks = 120 s at 0.0274/min plus the 0.0137 fee.
    assert calls_page["calls"][0]["cost"] == 0.0685


async def test_portal_bootstrap_shape(api: ResellerClient):
    reply = await api.get("portal-bootstrap", "resa")

    assert reply.status == 200
    portal = reply.body["portal"]
    assert set(portal) == {
        "api_version",
        "currency",
        "server_time",
        "webphone",
        "endpoints",
    }
    assert portal["currency"] == "EUR"
    assert portal["webphone"] == {"enabled": True, "ws_url": "ws://127.0.0.1:8188/"}
    assert "client-softphone-token" in portal["endpoints"]


async def test_client_dashboard_and_lists(api: ResellerClient, world: World):
    await api.post("transfer", "resa", {"login": CLIENT, "amount": "2.5"})
    async with world.db.pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO callerids (account_id, cid, name, active)"
            " VALUES ($1, '+442079460000', 'office', true)",
            world.accounts[CLIENT],
        )

    dashboard = await api.get("client-dashboard", "resa", login=CLIENT)
    refills = await api.get("client-refills", "resa", login=CLIENT, limit="5")
    callerids = await api.get("client-callerids", "resa", login=CLIENT)
    calls = await api.get("client-calls", "resa", login=CLIENT)

    client = dashboard.body["client"]
    assert client["login"] == CLIENT
    assert client["balance"] == 2.5
    assert client["active"] is True
    assert client["plan"] == {"id": world.plans["resa-retail"], "name": "resa-retail"}
    assert client["sip_accounts"] == 1
    assert dashboard.body["totals"] == {"calls": 0, "cost": 0, "billed_seconds": 0}
    assert [r["kind"] for r in refills.body["refills"]] == ["transfer"]
    assert refills.body["refills"][0]["amount"] == 2.5
    assert refills.body["limit"] == 5
    assert callerids.body["callerids"] == [
        {
            "id": callerids.body["callerids"][0]["id"],
            "cid": "+442079460000",
            "name": "office",
            "active": True,
        }
    ]
    assert calls.body["calls"] == []
    assert calls.body["limit"] == 50


async def test_client_sip_hides_service_accounts(api: ResellerClient, world: World):
    token = await api.post("client-softphone-token", "resa", {"login": CLIENT})
    assert token.status == 200
    async with world.db.pool.acquire() as connection:
        main_id = await connection.fetchval(
            "SELECT id FROM sip_accounts WHERE name = $1", CLIENT
        )
        await connection.execute(
            "INSERT INTO sip_accounts (account_id, name, kind, parent_sip_id, ip, port)"
            " VALUES ($1, $2, 'ipauth', $3, '203.0.113.10', 5060)",
            world.accounts[CLIENT],
            f"{CLIENT}_ipa1",
            main_id,
        )

    normal = await api.get("client-sip", "resa", login=CLIENT)
    everything = await api.get("client-sip", "resa", login=CLIENT, include_service="1")

    assert [s["name"] for s in normal.body["sip_accounts"]] == [CLIENT]
    assert normal.body["sip_accounts"][0]["service"] is False
    names = {s["name"]: s for s in everything.body["sip_accounts"]}
    assert set(names) == {CLIENT, f"{CLIENT}_web1", f"{CLIENT}_ipa1"}
    assert names[f"{CLIENT}_ipa1"]["ip"] == "203.0.113.10"
    assert names[f"{CLIENT}_ipa1"]["sip_parent"] == CLIENT
    assert names[f"{CLIENT}_web1"]["kind"] == "webrtc"
    assert names[f"{CLIENT}_web1"]["service"] is True
    text = json.dumps(everything.body)
    assert "password" not in text
    assert world.sip_passwords[CLIENT] not in text
    assert token.body["softphone"]["sip"]["password"] not in text


async def test_client_rates_retail_only(api: ResellerClient, world: World):
    async with world.db.pool.acquire() as connection:
        await connection.execute(
            "UPDATE accounts SET plan_id = $1 WHERE login = $2",
            world.plans["wholesale"],
            CLIENT,
        )

    reply = await api.get("client-rates", "resa", login=CLIENT)

    assert reply.status == 200
    assert reply.body["rates"] == []
    assert reply.body["total"] == 0


async def test_client_auth_and_lockout_across_processes(
    api: ResellerClient,
    world: World,
    database: Database,
    api_settings: Settings,
):
    await set_password(api, CLIENT, "PortalPass123")
    good = {"login": CLIENT, "password": "PortalPass123"}
    ok = await api.post("client-auth", "resa", good)
    wrong = [
        await api.post("client-auth", "resa", {**good, "password": "WrongPass123"})
        for _ in range(api_settings.portal_auth_failure_limit)
    ]

    # A second server on its own pool, as another callgate process would be.
    other_db = await Database.connect(api_settings.database_url or "", max_size=2)
    http: TestClient[Any, Any] = TestClient(
        TestServer(create_app(other_db, api_settings), host="127.0.0.1")
    )
    await http.start_server()
    try:
        other = ResellerClient(http, api.keys)
        locked_elsewhere = await other.post("client-auth", "resa", good)
    finally:
        await http.close()
        await other_db.close()
    locked_here = await api.post("client-auth", "resa", good)
    other_reseller = await api.post(
        "client-auth", "resb", {"login": "8880000001", "password": "WrongPass123"}
    )

    assert ok.status == 200
    assert ok.body["client"]["login"] == CLIENT
    assert {reply.status for reply in wrong} == {401}
    assert locked_elsewhere.status == 429
    assert int(locked_elsewhere.headers["Retry-After"]) > 0
    assert locked_here.status == 429
    assert other_reseller.status == 401


async def test_client_auth_inactive_client_403(api: ResellerClient):
    await set_password(api, CLIENT, "PortalPass123")
    await api.post("set-client-status", "resa", {"login": CLIENT, "active": False})

    reply = await api.post(
        "client-auth", "resa", {"login": CLIENT, "password": "PortalPass123"}
    )

    assert reply.status == 403


async def test_softphone_token_janus_format(api: ResellerClient, world: World):
    before = int(time.time())
    first = await api.post("client-softphone-token", "resa", {"login": CLIENT})
    second = await api.post("client-softphone-token", "resa", {"login": CLIENT})

    assert first.status == 200
    softphone = first.body["softphone"]
    data, _, signature = softphone["token"].partition(":")
    expiry, realm, plugins = data.split(",", 2)
    expected = base64.b64encode(
        hmac.new(JANUS_SECRET.encode(), data.encode(), hashlib.sha1).digest()
    ).decode()
    assert signature == expected
    assert realm == "janus"
    assert plugins == "janus.plugin.sip"
    assert int(expiry) == softphone["expires_at"]
    assert before + 3600 <= int(expiry) <= int(time.time()) + 3600
    assert softphone["ws_url"] == "ws://127.0.0.1:8188/"
    sip = softphone["sip"]
    assert sip["username"] == f"{CLIENT}_web1"
    assert sip["identity"] == f"sip:{CLIENT}_web1@127.0.0.1"
    assert len(sip["password"]) >= 16
    assert second.body["softphone"]["sip"]["password"] == sip["password"]
    async with world.db.pool.acquire() as connection:
        endpoint = await connection.fetchrow(
            "SELECT transport, webrtc, accountcode FROM ps_endpoints WHERE id = $1",
            sip["username"],
        )
        auth = await connection.fetchval(
            "SELECT password FROM ps_auths WHERE id = $1", sip["username"]
        )
        rows = await connection.fetchval(
            "SELECT count(*) FROM sip_accounts WHERE name = $1", sip["username"]
        )
    assert dict(endpoint) == {
        "transport": "transport-wss",
        "webrtc": "yes",
        "accountcode": CLIENT,
    }
    assert auth == sip["password"]
    assert rows == 1


async def test_softphone_token_unconfigured_503(
    world: World, database: Database, settings: Settings
):
    keys = await support.build_scene(world)
    http: TestClient[Any, Any] = TestClient(
        TestServer(create_app(database, settings), host="127.0.0.1")
    )
    await http.start_server()
    try:
        reply = await ResellerClient(http, keys).post(
            "client-softphone-token", "resa", {"login": CLIENT}
        )
    finally:
        await http.close()

    assert reply.status == 503
    assert "CALLGATE_JANUS_SECRET" in reply.body["error"]


async def test_agent_markup_shape(api: ResellerClient, world: World):
    reply = await api.get("agent-markup", "resa")

    assert reply.status == 200
    markup = reply.body["markup"]
    assert markup["markup_percent"] == 20
    assert markup["plans"] == [
        {"id": world.plans["resa-retail"], "name": "resa-retail", "rates": 2}
    ]
    assert markup["prices"][1] == {
        "prefix": "44",
        "destination": "dest 44",
        "initblock": 60,
        "billingblock": 60,
        "wholesale_rate": 0.02,
        "wholesale_connect_fee": 0.01,
        "rate": 0.024,
        "connect_fee": 0.012,
        "new_rate": 0.024,
        "new_connect_fee": 0.012,
    }


async def rate_versions(world: World) -> list[Any]:
    async with world.db.pool.acquire() as connection:
        rows = await connection.fetch(
            "SELECT plan_id, prefix, rate, xmin::text AS version FROM rates"
            " ORDER BY plan_id, prefix"
        )
    return [tuple(row) for row in rows]


async def test_preview_agent_markup_writes_nothing(api: ResellerClient, world: World):
    before = await snapshot(world.db)
    versions = await rate_versions(world)

    reply = await api.post(
        "preview-agent-markup", "resa", {"markup_percent": "33.3333"}
    )

    assert reply.status == 200
    preview = reply.body["preview"]
    assert preview["markup_percent"] == 33.3333
    assert preview["current_markup_percent"] == 20
    # 0.02 x 1.333333 = 0.02666666 -> 0.026667 half-up.
    assert preview["prices"][1]["new_rate"] == 0.026667
    assert preview["prices"][1]["rate"] == 0.024
    assert await snapshot(world.db) == before
    assert await rate_versions(world) == versions


async def test_set_agent_markup_rederives_and_cascades(
    api: ResellerClient, world: World
):
    await world.reseller("subres", "resa-retail", "5", parent="resa", markup="0.10")
    sub_key = await support.issue_key(world.db, "subres")
    api.keys["subres"] = sub_key

    reply = await api.post("set-agent-markup", "resa", {"markup_percent": 50})

    assert reply.status == 200
    assert reply.body["markup"] == {
        "markup_percent": 50,
        "previous_markup_percent": 20,
        "changed": True,
        "plans": [
            {"id": world.plans["resa-retail"], "name": "resa-retail", "rates": 2}
        ],
    }
    async with world.db.pool.acquire() as connection:
        rates = await connection.fetch(
            "SELECT plan_id, prefix, rate, connect_fee FROM rates"
            " WHERE plan_id = ANY($1::bigint[]) ORDER BY plan_id, prefix",
            [world.plans["resa-retail"], world.plans["subres-retail"]],
        )
    assert [(r["prefix"], r["rate"], r["connect_fee"]) for r in rates] == [
        ("1", Decimal("0.015000"), Decimal("0")),
        ("44", Decimal("0.030000"), Decimal("0.015000")),
        ("1", Decimal("0.016500"), Decimal("0")),
        ("44", Decimal("0.033000"), Decimal("0.016500")),
    ]
    sub = await api.get("agent-markup", "subres")
    assert sub.body["markup"]["markup_percent"] == 10


async def test_set_agent_markup_unchanged_rewrites_nothing(
    api: ResellerClient, world: World
):
    versions = await rate_versions(world)

    reply = await api.post("set-agent-markup", "resa", {"markup_percent": "20"})

    assert reply.status == 200
    assert reply.body["markup"]["changed"] is False
    assert await rate_versions(world) == versions


async def test_set_agent_markup_invalid(api: ResellerClient, world: World):
    before = await snapshot(world.db)

    for value in (-1, 1001, "abc", "1.00001", True, None, [50]):
        for endpoint in ("set-agent-markup", "preview-agent-markup"):
            reply = await api.post(endpoint, "resa", {"markup_percent": value})

            assert_field_error(reply, "markup_percent")
    assert await snapshot(world.db) == before


async def test_check_client_login_same_for_every_tenant(api: ResellerClient):
    foreign = await api.get("check-client-login", "resa", login="8880000001")
    operator = await api.post("check-client-login", "resa", {"login": "1234567801"})
    own = await api.get("check-client-login", "resa", login=CLIENT)
    free = await api.get("check-client-login", "resb", login="5550001234")
    invalid = await api.get("check-client-login", "resa", login="a_b")

    assert foreign.body == {"ok": True, "login": "8880000001", "status": "taken"}
    assert operator.body == {"ok": True, "login": "1234567801", "status": "taken"}
    assert own.body["status"] == "taken"
    assert free.body == {"ok": True, "login": "5550001234", "status": "available"}
    assert_field_error(invalid, "login")


async def test_check_client_login_rate_limited(
    world: World, database: Database, api_settings: Settings
):
    keys = await support.build_scene(world)
    limited = api_settings.replace(login_check_limit=3)
    http: TestClient[Any, Any] = TestClient(
        TestServer(create_app(database, limited), host="127.0.0.1")
    )
    await http.start_server()
    try:
        client = ResellerClient(http, keys)
        replies = [
            await client.get("check-client-login", "resa", login=f"555000{n:04}")
            for n in range(4)
        ]
        create = await client.post("create-client", "resa", {"login": "5559990000"})
        other_key = await client.get("check-client-login", "resb", login="5550000000")
    finally:
        await http.close()

    assert [reply.status for reply in replies] == [200, 200, 200, 429]
    assert "Retry-After" in replies[3].headers
    assert create.status == 429
    assert other_key.status == 200


async def test_reset_and_set_client_password(api: ResellerClient):
    reset = await api.post("reset-client-password", "resa", {"login": CLIENT})
    temporary = reset.body["password"]
    login_with_temporary = await api.post(
        "client-auth", "resa", {"login": CLIENT, "password": temporary}
    )
    weak = await api.post(
        "set-client-password", "resa", {"login": CLIENT, "password": "short"}
    )
    chosen = await api.post(
        "set-client-password", "resa", {"login": CLIENT, "password": "Chosen12345"}
    )
    old_fails = await api.post(
        "client-auth", "resa", {"login": CLIENT, "password": temporary}
    )

    assert reset.status == 200
    assert reset.body["client"]["login"] == CLIENT
    assert len(temporary) >= 10
    assert login_with_temporary.status == 200
    assert_field_error(weak, "password")
    assert chosen.status == 200
    assert chosen.body == {
        "ok": True,
        "client": {"id": reset.body["client"]["id"], "login": CLIENT},
    }
    assert old_fails.status == 401


async def test_client_change_password_verifies_current(api: ResellerClient):
    await set_password(api, CLIENT, "Current12345")
    body = {
        "login": CLIENT,
        "current_password": "Wrong123456",
        "new_password": "Next123456",
    }

    wrong = await api.post("client-change-password", "resa", body)
    weak = await api.post(
        "client-change-password",
        "resa",
        {**body, "current_password": "Current12345", "new_password": "weak"},
    )
    right = await api.post(
        "client-change-password", "resa", {**body, "current_password": "Current12345"}
    )
    auth = await api.post(
        "client-auth", "resa", {"login": CLIENT, "password": "Next123456"}
    )

    assert_field_error(wrong, "current_password")
    assert_field_error(weak, "new_password")
    assert right.status == 200
    assert auth.status == 200


async def test_reset_client_sip_password(api: ResellerClient, world: World):
    async with world.db.transaction() as connection:
        from engine import provisioning

        extra = await provisioning.create_sip_account(
            connection, world.accounts[CLIENT], CLIENT, None
        )
    await api.post("client-softphone-token", "resa", {"login": CLIENT})

    main = await api.post("reset-client-sip-password", "resa", {"login": CLIENT})
    normal = await api.post(
        "reset-client-sip-password", "resa", {"login": CLIENT, "name": extra["name"]}
    )
    service = await api.post(
        "reset-client-sip-password", "resa", {"login": CLIENT, "name": f"{CLIENT}_web1"}
    )
    foreign = await api.post(
        "reset-client-sip-password", "resa", {"login": CLIENT, "name": "8880000001"}
    )

    assert main.status == 200
    assert main.body["sip_account"]["name"] == CLIENT
    assert main.body["sip_account"]["password"] != world.sip_passwords[CLIENT]
    assert normal.body["sip_account"]["name"] == extra["name"]
    assert service.status == 403
    assert foreign.status == 404
    async with world.db.pool.acquire() as connection:
        stored = await connection.fetchval(
            "SELECT password FROM ps_auths WHERE id = $1", CLIENT
        )
    assert stored == main.body["sip_account"]["password"]


async def test_client_profile_update(api: ResellerClient):
    reply = await api.post(
        "client-profile-update",
        "resa",
        {
            "login": CLIENT,
            "email": "client@example.com",
            "phone": "+123456789",
            "language": "en",
            "name": "Ada Lovelace",
        },
    )
    cleared = await api.post(
        "client-profile-update", "resa", {"login": CLIENT, "name": ""}
    )

    assert reply.status == 200
    client = reply.body["client"]
    assert client["email"] == "client@example.com"
    assert client["phone"] == "+123456789"
    assert client["language"] == "en"
    assert client["name"] == "Ada Lovelace"
    assert "warning" in reply.body
    assert cleared.body["client"]["name"] is None
    assert cleared.body["client"]["email"] == "client@example.com"
    for change, field in [
        ({"email": "not-an-email"}, "email"),
        ({"phone": "12345"}, "phone"),
        ({"language": "english!"}, "language"),
        ({"name": "x" * 81}, "name"),
        ({"name": 5}, "name"),
        ({}, "name"),
    ]:
        invalid = await api.post(
            "client-profile-update", "resa", {"login": CLIENT, **change}
        )

        assert_field_error(invalid, field)
