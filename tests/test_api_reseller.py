"""The Reseller API's core endpoints and security rules, over a loopback server.

The helpers and the `scene` fixture here are shared by the other
test_api_reseller_* modules.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from engine.db import Database
from engine.secrets import hash_api_key, new_api_key
from engine.settings import Settings
from tests.conftest import World

PATH = "/reseller-api/index.php"
JANUS_SECRET = "janus-test-secret"
CLIENT_KEYS = {
    "id",
    "login",
    "active",
    "status",
    "balance",
    "currency",
    "plan_id",
    "plan_name",
    "name",
    "email",
    "phone",
    "language",
    "created_at",
}


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class ResellerClient:
    """Calls /reseller-api/index.php?endpoint=NAME as a portal script would."""

    def __init__(self, http: TestClient[Any, Any], keys: dict[str, str]) -> None:
        self.http = http
        self.keys = keys

    async def request(
        self,
        method: str,
        endpoint: str,
        key: str | None,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        alias: bool = False,
    ) -> Reply:
        headers = {} if key is None else {"X-API-Key": key}
        params = dict(query or {})
        if alias:
            path = f"/reseller-api/{endpoint}"
        else:
            path, params = PATH, {"endpoint": endpoint, **params}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        response = await self.http.request(
            method, path, params=params, data=data, headers=headers
        )
        text = await response.text()
        return Reply(response.status, json.loads(text), dict(response.headers))

    async def get(self, endpoint: str, as_: str, **query: str) -> Reply:
        return await self.request("GET", endpoint, self.keys[as_], query=query)

    async def post(self, endpoint: str, as_: str, body: Any = None) -> Reply:
        return await self.request(
            "POST", endpoint, self.keys[as_], body={} if body is None else body
        )


async def issue_key(database: Database, login: str) -> str:
    key = new_api_key()
    async with database.pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO api_keys (account_id, key_hash, label)"
            " SELECT id, $2, 'test' FROM accounts WHERE login = $1",
            login,
            hash_api_key(key),
        )
    return key


async def build_scene(world: World) -> dict[str, str]:
    """Two resellers on one wholesale plan, a client each and an operator client.

    - wholesale: 1 at 0.01/min (1/1), 44 at 0.02/min (60/60) with a 0.01 fee;
    - resa (balance 10) with client 7770000001, resb (balance 10) with 8880000001;
    - 1234567801: the operator's client on plan standard.
    """
    await world.plan(
        "wholesale", [("1", "0.010000", 1, 1, "0"), ("44", "0.020000", 60, 60, "0.01")]
    )
    await world.plan("standard", [("1", "0.050000", 1, 1, "0")], signup=True)
    await world.trunk("carrier", "wholesale")
    await world.trunk("carrier", "standard")
    await world.reseller("resa", "wholesale", "10")
    await world.reseller("resb", "wholesale", "10")
    await world.client("7770000001", reseller="resa")
    await world.client("8880000001", reseller="resb")
    await world.client("1234567801", "standard", "3")
    return {
        login: await issue_key(world.db, login)
        for login in ("resa", "resb", "1234567801")
    }


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.replace(janus_secret=JANUS_SECRET)


@pytest.fixture
async def api(
    database: Database, api_settings: Settings, world: World
) -> AsyncIterator[ResellerClient]:
    keys = await build_scene(world)
    app = create_app(database, api_settings)
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await http.start_server()
    try:
        yield ResellerClient(http, keys)
    finally:
        await http.close()


async def snapshot(database: Database) -> dict[str, Any]:
    """Every row that an endpoint could change, for "nothing changed" checks."""
    tables = {
        "accounts": "SELECT * FROM accounts ORDER BY id",
        "sip_accounts": "SELECT * FROM sip_accounts ORDER BY id",
        "names": "SELECT * FROM names ORDER BY name",
        "payments": "SELECT * FROM payments ORDER BY id",
        "ledger": "SELECT * FROM ledger ORDER BY id",
        "rates": "SELECT * FROM rates ORDER BY plan_id, prefix",
        "plans": "SELECT * FROM plans ORDER BY id",
    }
    async with database.pool.acquire() as connection:
        return {
            name: [dict(row) for row in await connection.fetch(query)]
            for name, query in tables.items()
        }


def assert_field_error(reply: Reply, field: str) -> None:
    """Assert a 400 whose message names field first, as missing or invalid."""
    assert reply.status == 400, reply.body
    assert reply.body["ok"] is False
    error = reply.body["error"]
    assert error.startswith((f"invalid {field} ", f"missing {field}:")), error


def not_found(login: str) -> dict[str, Any]:
    return {"ok": False, "error": f"client {login!r} not found among your clients"}


async def test_me_documented_shape(api: ResellerClient, world: World):
    reply = await api.get("me", "resa")

    assert reply.status == 200
    assert reply.body == {
        "ok": True,
        "reseller": {
            "id": world.accounts["resa"],
            "username": "resa",
            "group": "Agent",
            "balance": 10,
            "active": True,
        },
    }


async def test_me_fractional_balance_is_number(api: ResellerClient, world: World):
    async with world.db.pool.acquire() as connection:
        await connection.execute(
            "UPDATE accounts SET balance = 987.6543 WHERE login = 'resa'"
        )

    reply = await api.get("me", "resa")

    assert reply.body["reseller"]["balance"] == 987.6543
    assert '"balance":987.6543' in json.dumps(reply.body, separators=(",", ":"))


async def test_plans_lists_own_only(api: ResellerClient, world: World):
    reply = await api.get("plans", "resa")

    assert reply.status == 200
    assert reply.body == {
        "ok": True,
        "plans": [
            {
                "id": world.plans["resa-retail"],
                "name": "resa-retail",
                "signup": True,
                "initial_credit": 0,
                "tariff_limit": 3,
                "agent_rates": 2,
            }
        ],
    }


async def test_create_client_generates_login(api: ResellerClient, world: World):
    reply = await api.post("create-client", "resa", {})

    assert reply.status == 200
    client = reply.body["client"]
    assert set(client) == CLIENT_KEYS
    assert client["login"].isdigit()
    assert len(client["login"]) == 10
    assert client["plan_id"] == world.plans["resa-retail"]
    assert client["active"] is True
    assert client["balance"] == 0
    assert client["currency"] == "EUR"
    sip = reply.body["sip_account"]
    assert sip["name"] == client["login"]
    assert len(reply.body["password"]) >= 10
    async with world.db.pool.acquire() as connection:
        stored = await connection.fetchval(
            "SELECT password FROM ps_auths WHERE id = $1", sip["name"]
        )
        parent = await connection.fetchval(
            "SELECT parent_id FROM accounts WHERE login = $1", client["login"]
        )
    assert stored == sip["password"]
    assert parent == world.accounts["resa"]


async def test_create_client_with_login_password_plan(
    api: ResellerClient, world: World
):
    reply = await api.post(
        "create-client",
        "resa",
        {
            "login": "1234567891",
            "password": "StrongPass123",
            "plan_id": world.plans["resa-retail"],
        },
    )

    assert reply.status == 200
    assert reply.body["client"]["login"] == "1234567891"
    assert "password" not in reply.body
    auth = await api.post(
        "client-auth", "resa", {"login": "1234567891", "password": "StrongPass123"}
    )
    assert auth.status == 200


async def test_create_client_foreign_plan_404(api: ResellerClient, world: World):
    before = await snapshot(world.db)

    for plan in ("resb-retail", "standard", "wholesale", None):
        plan_id = world.plans[plan] if plan else 999999
        reply = await api.post("create-client", "resa", {"plan_id": plan_id})

        assert reply.status == 404, plan
        assert reply.body == {
            "ok": False,
            "error": f"plan {plan_id} not found among your plans",
        }
    assert await snapshot(world.db) == before


async def test_create_client_taken_login_409(api: ResellerClient, world: World):
    before = await snapshot(world.db)

    # Another tenant's client, the operator's client, a reseller and the
    # admin: the same response for each.
    for login in ("8880000001", "1234567801", "resa", "admin"):
        reply = await api.post("create-client", "resa", {"login": login})

        assert reply.status == 409, login
        assert reply.body == {"ok": False, "error": f"login {login!r} is taken"}
    assert await snapshot(world.db) == before


async def test_create_client_invalid_input(api: ResellerClient, world: World):
    cases: list[tuple[dict[str, Any], str]] = [
        ({"login": "bad_login"}, "login"),
        ({"login": "ab"}, "login"),
        ({"password": "weak"}, "password"),
        ({"password": 12345}, "password"),
        ({"plan_id": "x"}, "plan_id"),
        ({"plan_id": 0}, "plan_id"),
    ]
    before = await snapshot(world.db)

    for body, field in cases:
        reply = await api.post("create-client", "resa", body)

        assert_field_error(reply, field)
    assert await snapshot(world.db) == before


async def test_client_shape_hides_secrets(api: ResellerClient, world: World):
    reply = await api.get("client", "resa", login="7770000001")

    assert reply.status == 200
    client = reply.body["client"]
    assert set(client) == CLIENT_KEYS | {"sip_accounts"}
    assert client["id"] == world.accounts["7770000001"]
    assert client["sip_accounts"] == [
        {"name": "7770000001", "kind": "main", "active": True}
    ]
    assert world.sip_passwords["7770000001"] not in json.dumps(reply.body)
    assert "password" not in json.dumps(reply.body)


async def test_client_missing_login_400(api: ResellerClient):
    reply = await api.get("client", "resa")

    assert_field_error(reply, "login")


async def test_clients_pages(api: ResellerClient, world: World):
    for login in ("7770000002", "7770000003"):
        await world.client(login, reseller="resa")

    first = await api.get("clients", "resa", limit="2", offset="0")
    second = await api.get("clients", "resa", limit="2", offset="2")

    assert first.status == 200
    assert first.body["total"] == 3
    assert first.body["limit"] == 2
    assert first.body["offset"] == 0
    assert [c["login"] for c in first.body["clients"]] == ["7770000001", "7770000002"]
    assert [c["login"] for c in second.body["clients"]] == ["7770000003"]
    assert all(set(c) == CLIENT_KEYS for c in first.body["clients"])
    assert "password" not in json.dumps(first.body)


async def test_clients_invalid_page(api: ResellerClient):
    for query, field in [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"offset": "-1"}, "offset"),
    ]:
        reply = await api.get("clients", "resa", **query)

        assert_field_error(reply, field)


async def test_transfer_credits_client_not_reseller(api: ResellerClient, world: World):
    reply = await api.post(
        "transfer",
        "resa",
        {"login": "7770000001", "amount": 1, "external_id": "ORDER-DEMO-10001"},
    )

    assert reply.status == 200
    transfer = reply.body["transfer"]
    assert reply.body["replayed"] is False
    assert transfer["type"] == "transfer"
    assert transfer["login"] == "7770000001"
    assert transfer["amount"] == 1
    assert transfer["currency"] == "EUR"
    assert transfer["status"] == "success"
    assert transfer["external_id"] == "ORDER-DEMO-10001"
    assert transfer["balance_after"] == 1
    assert await world.balance("7770000001") == Decimal(1)
    assert await world.balance("resa") == Decimal(10)
    assert await world.ledger_sum("7770000001") == Decimal(1)


async def test_transfer_replay_returns_original(api: ResellerClient, world: World):
    body = {"login": "7770000001", "amount": "2.50", "external_id": "T-1"}
    first = await api.post("transfer", "resa", body)

    second = await api.post("transfer", "resa", body)

    assert second.status == 200
    assert second.body["replayed"] is True
    assert second.body["transfer"] == first.body["transfer"]
    assert await world.balance("7770000001") == Decimal("2.5")


async def test_transfer_same_id_different_request_409(
    api: ResellerClient, world: World
):
    await world.client("7770000002", reseller="resa")
    body = {"login": "7770000001", "amount": "2.50", "external_id": "T-1"}
    await api.post("transfer", "resa", body)
    before = await snapshot(world.db)

    for change in ({"amount": "2.51"}, {"login": "7770000002"}):
        reply = await api.post("transfer", "resa", {**body, **change})

        assert reply.status == 409, change
        assert "T-1" in reply.body["error"]
    assert await snapshot(world.db) == before


async def test_transfer_id_is_per_reseller(api: ResellerClient, world: World):
    body = {"amount": 1, "external_id": "SAME"}
    first = await api.post("transfer", "resa", {**body, "login": "7770000001"})
    second = await api.post("transfer", "resb", {**body, "login": "8880000001"})

    assert first.body["replayed"] is False
    assert second.body["replayed"] is False
    assert await world.balance("8880000001") == Decimal(1)


async def test_transfer_invalid_input(api: ResellerClient, world: World):
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amount": 0}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": "1.0000001"}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "ten"}, "amount"),
        ({}, "amount"),
        ({"amount": 1, "currency": "USD"}, "currency"),
    ]
    for body, field in cases:
        reply = await api.post("transfer", "resa", {"login": "7770000001", **body})

        assert_field_error(reply, field)
    assert await world.balance("7770000001") == 0


async def test_transactions_filter_by_status(api: ResellerClient):
    base = {"login": "7770000001", "amount": 1, "provider": "plisio"}
    await api.post("transfer", "resa", {"login": "7770000001", "amount": 1})
    await api.post(
        "register-agent-payment",
        "resa",
        {**base, "external_id": "p", "status": "pending"},
    )
    await api.post(
        "register-agent-payment",
        "resa",
        {**base, "external_id": "f", "status": "failed"},
    )

    everything = await api.get("transactions", "resa", limit="10", offset="0")
    success = await api.get("transactions", "resa", status="success")
    pending = await api.get("transactions", "resa", status="pending")
    failed = await api.get("transactions", "resa", status="failed")
    other = await api.get("transactions", "resb")
    invalid = await api.get("transactions", "resa", status="paid")

    assert everything.body["total"] == 3
    assert [t["status"] for t in everything.body["transactions"]] == [
        "failed",
        "pending",
        "success",
    ]
    assert [t["type"] for t in success.body["transactions"]] == ["transfer"]
    assert [t["external_id"] for t in pending.body["transactions"]] == ["p"]
    assert [t["external_id"] for t in failed.body["transactions"]] == ["f"]
    assert pending.body["transactions"][0]["balance_after"] is None
    assert other.body["transactions"] == []
    assert invalid.status == 400
    assert invalid.body["error"].startswith("invalid status ")


async def test_set_client_status(api: ResellerClient, world: World):
    off = await api.post(
        "set-client-status", "resa", {"login": "7770000001", "active": False}
    )
    on = await api.post(
        "set-client-status", "resa", {"login": "7770000001", "active": True}
    )

    assert off.status == 200
    assert off.body["client"]["active"] is False
    assert off.body["client"]["status"] == "inactive"
    assert on.body["client"]["active"] is True


async def test_set_client_status_blocked_403(api: ResellerClient, world: World):
    async with world.db.pool.acquire() as connection:
        await connection.execute(
            "UPDATE accounts SET status = 'blocked' WHERE login = '7770000001'"
        )

    reply = await api.post(
        "set-client-status", "resa", {"login": "7770000001", "active": True}
    )

    assert reply.status == 403
    assert "blocked" in reply.body["error"]


async def test_set_client_status_invalid(api: ResellerClient):
    for body in ({"login": "7770000001"}, {"login": "7770000001", "active": "maybe"}):
        reply = await api.post("set-client-status", "resa", body)

        assert_field_error(reply, "active")


async def test_change_plan_own_plan(api: ResellerClient, world: World):
    async with world.db.transaction() as connection:
        from engine import accounts

        second = await accounts.create_retail_plan(
            connection,
            world.accounts["resa"],
            "resa",
            world.plans["wholesale"],
            Decimal("0.2"),
            world.accounts["resa"],
            name="resa-second",
        )

    reply = await api.post(
        "change-plan", "resa", {"login": "7770000001", "plan_id": second}
    )

    assert reply.status == 200
    assert reply.body["client"]["plan_id"] == second
    assert reply.body["client"]["plan_name"] == "resa-second"


async def test_change_plan_foreign_plan_404(api: ResellerClient, world: World):
    before = await snapshot(world.db)

    for plan in ("resb-retail", "standard", "wholesale", None):
        plan_id = world.plans[plan] if plan else 999999
        reply = await api.post(
            "change-plan", "resa", {"login": "7770000001", "plan_id": plan_id}
        )

        assert reply.status == 404, plan
        assert reply.body == {
            "ok": False,
            "error": f"plan {plan_id} not found among your plans",
        }
    assert await snapshot(world.db) == before


async def test_no_key_401(api: ResellerClient):
    reply = await api.request("GET", "me", None)

    assert reply.status == 401
    assert reply.body["ok"] is False
    assert "X-API-Key" in reply.body["error"]


async def test_unknown_key_401(api: ResellerClient):
    reply = await api.request("GET", "me", "cg_not-a-key")

    assert reply.status == 401
    assert reply.body["ok"] is False


async def test_client_key_refused_403(api: ResellerClient):
    reply = await api.get("me", "1234567801")

    assert reply.status == 403
    assert reply.body == {
        "ok": False,
        "error": "the Reseller API needs a reseller's API key; this key belongs to "
        "a client account (use the Client API)",
    }


async def test_wrong_method_405(api: ResellerClient):
    for method, endpoint in [
        ("POST", "me"),
        ("GET", "create-client"),
        ("GET", "transfer"),
        ("DELETE", "clients"),
    ]:
        reply = await api.request(method, endpoint, api.keys["resa"], body={})

        assert reply.status == 405, endpoint
        assert reply.body["ok"] is False
        assert "Allow" in reply.headers


async def test_alias_path_serves_same_handler(api: ResellerClient):
    reply = await api.request("GET", "me", api.keys["resa"], alias=True)

    assert reply.status == 200
    assert reply.body["reseller"]["username"] == "resa"


async def test_openapi_describes_reseller_endpoints(api: ResellerClient):
    response = await api.http.get("/openapi.json")
    document = await response.json()

    paths = document["paths"]
    assert set(paths["/reseller-api/me"]) == {"get"}
    assert set(paths["/reseller-api/check-client-login"]) == {"get", "post"}
    me = paths["/reseller-api/me"]["get"]["responses"]["200"]["content"]
    properties = me["application/json"]["schema"]["properties"]
    assert properties["ok"] == {"const": True}
    assert set(properties["reseller"]["properties"]) == {
        "id",
        "username",
        "group",
        "balance",
        "active",
    }
    transfer = paths["/reseller-api/transfer"]["post"]["requestBody"]
    assert transfer["content"]["application/json"]["schema"]["required"] == [
        "login",
        "amount",
    ]
    assert "reseller-error" in document["components"]["schemas"]


# Every endpoint that takes a client login: (method, endpoint, extra fields).
LOGIN_ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "client", {}),
    ("POST", "transfer", {"amount": 1, "external_id": "X-1"}),
    (
        "POST",
        "register-agent-payment",
        {"amount": 1, "provider": "plisio", "external_id": "X-2"},
    ),
    ("POST", "set-client-status", {"active": False}),
    ("POST", "change-plan", {"plan_id": "OWN_PLAN"}),
    ("GET", "client-dashboard", {}),
    ("GET", "client-sip", {"include_service": "1"}),
    ("GET", "client-calls", {}),
    ("GET", "client-failed-calls", {}),
    ("GET", "client-refills", {}),
    ("GET", "client-callerids", {}),
    ("GET", "client-rates", {}),
    ("POST", "client-softphone-token", {}),
    ("POST", "reset-client-password", {}),
    ("POST", "set-client-password", {"password": "NewStrongPass1"}),
    (
        "POST",
        "client-change-password",
        {"current_password": "whatever", "new_password": "NewStrongPass1"},
    ),
    ("POST", "reset-client-sip-password", {}),
    ("POST", "client-profile-update", {"name": "Mallory"}),
]


async def test_cross_tenant_matrix(api: ResellerClient, world: World):
    """Reseller B's key against A's client, the operator's and a missing login."""
    before = await snapshot(world.db)

    for method, endpoint, extra in LOGIN_ENDPOINTS:
        fields = {
            name: world.plans["resb-retail"] if value == "OWN_PLAN" else value
            for name, value in extra.items()
        }
        for login in ("7770000001", "1234567801", "9990000404"):
            request = {"login": login, **fields}
            if method == "GET":
                query = {name: str(value) for name, value in request.items()}
                reply = await api.get(endpoint, "resb", **query)
            else:
                reply = await api.post(endpoint, "resb", request)

            assert reply.status == 404, (endpoint, login, reply.body)
            assert reply.body == not_found(login), endpoint
    assert await snapshot(world.db) == before


async def test_cross_tenant_client_auth_same_as_missing(
    api: ResellerClient, world: World
):
    replies = [
        await api.post("client-auth", "resb", {"login": login, "password": "x" * 12})
        for login in ("7770000001", "1234567801", "9990000404")
    ]

    assert {reply.status for reply in replies} == {401}
    assert len({json.dumps(reply.body) for reply in replies}) == 1


async def test_transfer_over_balance_limit_400(api: ResellerClient, world: World):
    await api.post("transfer", "resa", {"login": "7770000001", "amount": 5})

    reply = await api.post(
        "transfer", "resa", {"login": "7770000001", "amount": 99999999999999}
    )

    assert reply.status == 400
    assert reply.body["ok"] is False
    assert "amount" in reply.body["error"]
    assert await world.balance("7770000001") == Decimal(5)


@pytest.mark.parametrize("amount", ["1_000", "٣", "1e3", " 1", "0x10", "1,5"])
async def test_transfer_amount_plain_decimal_only(
    api: ResellerClient, world: World, amount: str
):
    reply = await api.post(
        "transfer", "resa", {"login": "7770000001", "amount": amount}
    )

    assert reply.status == 400
    assert "amount" in reply.body["error"]
    assert await world.balance("7770000001") == 0


async def test_transfer_money_exact_in_json(api: ResellerClient, world: World):
    response = await api.http.post(
        PATH,
        params={"endpoint": "transfer"},
        json={"login": "7770000001", "amount": "12345678901234.123456"},
        headers={"X-API-Key": api.keys["resa"]},
    )
    body = json.loads(await response.text(), parse_float=Decimal)

    assert response.status == 200
    assert body["transfer"]["amount"] == Decimal("12345678901234.123456")
