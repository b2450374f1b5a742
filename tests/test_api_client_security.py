"""Client API security rules, one test each: nothing outside the caller's account."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from api import client
from engine.db import Database
from engine.settings import Settings
from tests.api_support import ApiClient, scene_client
from tests.conftest import World

pytestmark = pytest.mark.timeout(30)

OWNER = "1234567801"
OTHER = "5550000001"
RESELLER_CLIENT = "7770000001"


@pytest.fixture
async def api(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[ApiClient]:
    async for api_client in scene_client(database, settings, world):
        yield api_client


def same_error(
    first: dict, second: dict, first_value: object, second_value: object
) -> bool:
    """Whether two 404 bodies are identical once the requested values are swapped."""
    return first["error"].replace(str(first_value), "<value>") == second[
        "error"
    ].replace(str(second_value), "<value>")


async def test_rule_own_account_only(api: ApiClient, world: World):
    # No endpoint takes an account id or login, so every response is about the caller.
    for name, endpoint in client.API.endpoints.items():
        for schema in [
            endpoint.body or {},
            *[{"properties": {p.name: 0}} for p in endpoint.query],
        ]:
            fields = set(schema.get("properties", {}))
            assert not fields & {"account_id", "login", "username", "client_login"}, (
                name
            )
    mine = await api.get("me", OWNER)
    smuggled = await api.request(
        "GET",
        "me",
        api.keys[OWNER],
        query={"id": str(world.accounts[OTHER]), "username": OTHER},
    )

    assert mine.body["data"]["username"] == OWNER
    assert smuggled.body == mine.body


async def test_rule_own_sip_accounts_only(api: ApiClient):
    await api.post("create-sip", OTHER)
    other_sip = "5550000002"
    cases = [
        ("update-sip-password", {"name": other_sip, "password": "NewSipPass456"}),
        ("update-sip-password", {"name": OTHER, "password": "NewSipPass456"}),
        ("delete-sip", {"name": other_sip}),
        ("delete-sip", {"name": OTHER}),
    ]
    for endpoint, body in cases:
        foreign = await api.post(endpoint, OWNER, body)
        missing = await api.post(endpoint, OWNER, {**body, "name": "0000000000"})

        assert foreign.status == 404, (endpoint, body)
        assert missing.status == 404, (endpoint, body)
        assert same_error(foreign.body, missing.body, body["name"], "0000000000")
    listed = await api.get("sip", OWNER)
    assert [sip["name"] for sip in listed.body["data"]] == [OWNER]
    still_there = await api.get("sip", OTHER)
    assert [sip["name"] for sip in still_there.body["data"]] == [OTHER, other_sip]


async def test_rule_service_accounts_not_sip_accounts(api: ApiClient):
    await api.post("ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"})
    service = f"{OWNER}_ipa1"
    for endpoint, body in [
        ("update-sip-password", {"name": service, "password": "NewSipPass456"}),
        ("delete-sip", {"name": service}),
        ("ip-auth-create", {"sip_login": service, "ip": "203.0.113.20"}),
    ]:
        reply = await api.post(endpoint, OWNER, body)
        missing = await api.post(
            endpoint,
            OWNER,
            {**body, ("sip_login" if "sip_login" in body else "name"): "0000000000"},
        )

        assert reply.status == 404, endpoint
        assert same_error(reply.body, missing.body, service, "0000000000"), endpoint


async def test_rule_ip_auth_own_sip_accounts_only(api: ApiClient):
    foreign_create = await api.post(
        "ip-auth-create", OWNER, {"sip_login": OTHER, "ip": "203.0.113.10"}
    )
    created = await api.post(
        "ip-auth-create", OTHER, {"sip_login": OTHER, "ip": "203.0.113.11"}
    )
    other_id = created.body["data"]["id"]
    assert foreign_create.status == 404
    for endpoint in ["ip-auth-disable", "ip-auth-enable", "ip-auth-delete"]:
        foreign = await api.post(endpoint, OWNER, {"id": other_id})
        missing = await api.post(endpoint, OWNER, {"id": 999999})

        assert foreign.status == 404, endpoint
        assert same_error(foreign.body, missing.body, other_id, 999999), endpoint
    listed = await api.get("ip-auth-list", OWNER)
    assert listed.body["data"]["ip_auth"] == []
    theirs = await api.get("ip-auth-list", OTHER)
    assert theirs.body["data"]["ip_auth"][0]["status"] == 1


async def test_rule_own_callerids_only(api: ApiClient):
    added = await api.post(
        "add-callerid", OTHER, {"cid": "+442079460000", "set_active": True}
    )
    other_id = added.body["data"]["id"]
    set_foreign = await api.post("set-callerid", OWNER, {"cid": "+442079460000"})
    set_missing = await api.post("set-callerid", OWNER, {"cid": "+442079460009"})
    delete_foreign = await api.post("delete-callerid", OWNER, {"id": other_id})
    delete_missing = await api.post("delete-callerid", OWNER, {"id": 999999})
    await api.post("clear-callerid", OWNER, {})
    mine = await api.get("callerids", OWNER)
    theirs = await api.get("callerids", OTHER)

    assert set_foreign.status == 404
    assert same_error(
        set_foreign.body, set_missing.body, "+442079460000", "+442079460009"
    )
    assert delete_foreign.status == 404
    assert same_error(delete_foreign.body, delete_missing.body, other_id, 999999)
    assert mine.body["data"] == []
    assert theirs.body["data"][0]["active"] == 1


async def test_rule_plans_only_from_offered_list(api: ApiClient, world: World):
    offered = await api.get("plans", OWNER)
    offered_ids = {plan["id"] for plan in offered.body["data"]}
    for plan in ["hidden", "wholesale", "reseller1-retail"]:
        reply = await api.post("change-plan", OWNER, {"id_plan": world.plans[plan]})

        assert world.plans[plan] not in offered_ids, plan
        assert reply.status == 404, plan
    reseller_client = await api.post(
        "change-plan", RESELLER_CLIENT, {"id_plan": world.plans["standard"]}
    )
    assert reseller_client.status == 404
    me = await api.get("me", OWNER)
    assert me.body["data"]["id_plan"] == world.plans["standard"]


async def test_rule_no_plan_editing(api: ApiClient):
    for name in [
        "create-plan",
        "update-plan",
        "edit-plan",
        "delete-plan",
        "rates",
        "update-rates",
        "plan",
    ]:
        reply = await api.post(name, OWNER, {"id_plan": 1, "name": "x"})

        assert reply.status == 404, name
        assert reply.body["error"].startswith(f"unknown endpoint {name!r}"), name
    assert not [
        name
        for name in client.API.endpoints
        if "plan" in name and name not in ("plans", "change-plan")
    ]


async def test_rule_existing_vouchers_only(api: ApiClient, world: World):
    for code in ["123456", "000000", "' OR 1=1 --", "%", "_"]:
        reply = await api.post("redeem-voucher", OWNER, {"voucher": code})

        assert reply.status == 404, code
    assert await world.balance(OWNER) == 1


async def test_rule_main_sip_account_undeletable(api: ApiClient):
    reply = await api.post("delete-sip", OWNER, {"name": OWNER})
    listed = await api.get("sip", OWNER)

    assert reply.status == 403
    assert reply.body["success"] is False
    assert [sip["name"] for sip in listed.body["data"]] == [OWNER]


async def test_rule_nothing_of_others_reachable(api: ApiClient, world: World):
    """Guess every id and name of others, in every field: only 404s or own data."""
    others = [OTHER, RESELLER_CLIENT, "reseller1", "admin"]
    guesses: list[object] = [*others, *world.accounts.values()]
    guesses += [1, 2, 3, 4, 5, 10, 100]
    before = {login: (await api.get("me", login)).body for login in others}
    for name, endpoint in client.API.endpoints.items():
        if endpoint.body is None:
            continue
        for field in endpoint.body.get("properties", {}):
            for guess in guesses:
                reply = await api.post(name, OWNER, {field: guess})

                assert reply.status < 500, (name, field, guess)
                if reply.status == 200:
                    own_effect = {
                        "create-sip",
                        "clear-callerid",
                        "add-callerid",
                        "change-plan",
                    }
                    assert name in own_effect, (
                        name,
                        field,
                        guess,
                    )
    for login in others:
        assert (await api.get("me", login)).body == before[login], login
        assert [sip["name"] for sip in (await api.get("sip", login)).body["data"]] in (
            [[login]] if login not in ("reseller1", "admin") else [[]]
        ), login


async def test_reseller_key_acts_on_reseller_account(api: ApiClient, world: World):
    me = await api.get("me", "reseller1")
    sip = await api.get("sip", "reseller1")
    foreign = await api.post(
        "update-sip-password",
        "reseller1",
        {"name": RESELLER_CLIENT, "password": "NewSipPass456"},
    )
    admin = await api.get("me", "admin")

    assert me.body["data"]["username"] == "reseller1"
    assert me.body["data"]["id"] == world.accounts["reseller1"]
    assert sip.body["data"] == []
    assert foreign.status == 404
    assert admin.body["data"]["username"] == "admin"
    assert admin.body["data"]["id_plan"] is None
