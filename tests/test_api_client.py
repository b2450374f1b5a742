"""Client API endpoints on the database: documented shapes and every invalid input."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from engine.db import Database
from engine.secrets import hash_password, password_is_strong, verify_password
from engine.settings import Settings
from tests.api_support import ApiClient, scene_client
from tests.conftest import World

pytestmark = pytest.mark.timeout(30)

OWNER = "1234567801"
OTHER = "5550000001"
MONEY = re.compile(r"^-?[0-9]+\.[0-9]{4}$")
FUTURE = datetime(2031, 5, 9, 23, 0, tzinfo=UTC)


@pytest.fixture
async def api(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[ApiClient]:
    async for client in scene_client(database, settings, world):
        yield client


async def fetchval(database: Database, query: str, *args: object) -> object:
    async with database.pool.acquire() as connection:
        return await connection.fetchval(query, *args)


# --- me, balance --------------------------------------------------------------


async def test_me_documented_shape(api: ApiClient, world: World):
    reply = await api.get("me", OWNER)

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "data": {
            "id": world.accounts[OWNER],
            "username": OWNER,
            "balance": "1.0000",
            "active": 1,
            "id_plan": world.plans["standard"],
            "plan_name": "standard",
        },
    }
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_me_alias_path_same_body(api: ApiClient):
    documented = await api.get("me", OWNER)
    alias = await api.request("GET", "me", api.keys[OWNER], alias=True)

    assert alias.status == 200
    assert alias.body == documented.body


async def test_me_balance_rounds_half_up(api: ApiClient, database: Database):
    await fetchval(
        database, "UPDATE accounts SET balance = 1.23455 WHERE login = $1", OWNER
    )
    reply = await api.get("me", OWNER)

    assert reply.body["data"]["balance"] == "1.2346"


async def test_balance_shape(api: ApiClient):
    reply = await api.get("balance", OWNER)

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "data": {"username": OWNER, "balance": "1.0000", "currency": "EUR"},
    }


# --- plans, change-plan -------------------------------------------------------


async def test_plans_operator_client_sees_signup_plans(api: ApiClient, world: World):
    reply = await api.get("plans", OWNER)

    assert reply.status == 200
    assert reply.body["data"] == [
        {"id": world.plans["standard"], "name": "standard", "current": 1},
        {"id": world.plans["premium"], "name": "premium", "current": 0},
    ]


async def test_plans_reseller_client_sees_reseller_plans(api: ApiClient, world: World):
    reply = await api.get("plans", "7770000001")

    assert reply.body["data"] == [
        {
            "id": world.plans["reseller1-retail"],
            "name": "reseller1-retail",
            "current": 1,
        }
    ]


async def test_change_plan_to_offered_plan(api: ApiClient, world: World):
    reply = await api.post("change-plan", OWNER, {"id_plan": world.plans["premium"]})

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "message": "Plan changed",
        "data": {"id_plan": world.plans["premium"], "plan_name": "premium"},
    }
    me = await api.get("me", OWNER)
    assert me.body["data"]["id_plan"] == world.plans["premium"]


CHANGE_PLAN_INVALID = [
    ({}, "missing id_plan: expected a whole number"),
    ({"id_plan": "abc"}, "invalid id_plan 'abc'"),
    ({"id_plan": True}, "invalid id_plan true"),
    ({"id_plan": 0}, "invalid id_plan 0"),
    ({"id_plan": -3}, "invalid id_plan -3"),
    ({"id_plan": 1.5}, "invalid id_plan 1.5"),
    ({"id_plan": [1]}, "invalid id_plan [1]"),
    ({"id_plan": 2**64}, "invalid id_plan"),
]


async def test_change_plan_invalid_input(api: ApiClient):
    for body, fragment in CHANGE_PLAN_INVALID:
        reply = await api.post("change-plan", OWNER, body)

        assert reply.status == 400, body
        assert reply.body["success"] is False, body
        assert fragment in reply.body["error"], body


async def test_change_plan_not_offered_same_404(api: ApiClient, world: World):
    hidden = await api.post("change-plan", OWNER, {"id_plan": world.plans["hidden"]})
    missing = await api.post("change-plan", OWNER, {"id_plan": 999999})

    assert hidden.status == 404
    assert missing.status == 404
    assert hidden.body["error"].replace(str(world.plans["hidden"]), "N") == (
        missing.body["error"].replace("999999", "N")
    )


async def test_change_plan_digit_string_accepted(api: ApiClient, world: World):
    reply = await api.post(
        "change-plan", OWNER, {"id_plan": str(world.plans["premium"])}
    )

    assert reply.status == 200


async def test_change_plan_reseller_key_forbidden(api: ApiClient, world: World):
    reply = await api.post(
        "change-plan", "reseller1", {"id_plan": world.plans["standard"]}
    )

    assert reply.status == 403
    assert "reseller" in reply.body["error"]


# --- sip, create-sip, update-sip-password, delete-sip -------------------------


async def test_sip_lists_login_and_password(api: ApiClient, world: World):
    reply = await api.get("sip", OWNER)

    assert reply.status == 200
    [sip] = reply.body["data"]
    assert sip["name"] == OWNER
    assert sip["sip_login"] == OWNER
    assert sip["password"] == world.sip_passwords[OWNER]
    assert sip["main"] == 1
    assert sip["status"] == 1
    assert sip["callerid"] == OWNER
    assert isinstance(sip["id"], int)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", sip["created_at"])


async def test_sip_hides_service_accounts(api: ApiClient, database: Database):
    await api.post("ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"})
    await fetchval(
        database,
        """
        INSERT INTO sip_accounts (account_id, name, kind, password)
        SELECT id, login || '_web1', 'webrtc', 'Secret12345' FROM accounts
        WHERE login = $1
        """,
        OWNER,
    )
    reply = await api.get("sip", OWNER)

    assert [sip["name"] for sip in reply.body["data"]] == [OWNER]


async def test_create_sip_generates_strong_password(api: ApiClient):
    reply = await api.post("create-sip", OWNER)

    assert reply.status == 200
    assert reply.body["message"] == "SIP account created"
    data = reply.body["data"]
    assert data["name"] == "1234567802"
    assert data["sip_login"] == "1234567802"
    assert data["main"] == 0
    assert data["status"] == 1
    assert password_is_strong(data["password"])
    assert len(data["password"]) >= 20


async def test_create_sip_with_own_password(api: ApiClient):
    reply = await api.post("create-sip", OWNER, {"password": "StrongSipPass123"})

    assert reply.status == 200
    assert reply.body["data"]["password"] == "StrongSipPass123"
    listed = await api.get("sip", OWNER)
    assert [sip["name"] for sip in listed.body["data"]] == [OWNER, "1234567802"]


async def test_create_sip_skips_taken_names(api: ApiClient, world: World):
    await world.client("1234567802", "standard")
    reply = await api.post("create-sip", OWNER)

    assert reply.body["data"]["name"] == "1234567803"


async def test_create_sip_sequence_follows_login(api: ApiClient):
    first = await api.post("create-sip", OWNER)
    second = await api.post("create-sip", OWNER)

    assert first.body["data"]["name"] == "1234567802"
    assert second.body["data"]["name"] == "1234567803"


async def test_create_sip_non_numeric_login(api: ApiClient):
    reply = await api.post("create-sip", "reseller1")

    assert reply.body["data"]["name"] == "reseller1-2"


WEAK_SIP_PASSWORDS = [
    "short1A",
    "alllowercase123",
    "ALLUPPER123456",
    "NoDigitsHere",
    "Has Space123",
    'Quote"Pass123',
    "A1" + "a" * 90,
]


async def test_create_sip_weak_password_rejected(api: ApiClient):
    for password in WEAK_SIP_PASSWORDS:
        reply = await api.post("create-sip", OWNER, {"password": password})

        assert reply.status == 400, password
        assert reply.body["error"].startswith("invalid password"), password
        assert "at least 10 characters" in reply.body["error"], password
        assert password not in reply.body["error"], password


async def test_create_sip_password_wrong_type(api: ApiClient):
    reply = await api.post("create-sip", OWNER, {"password": 12345678901})

    assert reply.status == 400
    assert "invalid password" in reply.body["error"]


async def test_update_sip_password_changes_it(api: ApiClient):
    await api.post("create-sip", OWNER)
    reply = await api.post(
        "update-sip-password",
        OWNER,
        {"name": "1234567802", "password": "NewSipPass456"},
    )

    assert reply.status == 200
    assert reply.body["message"] == "SIP password updated"
    assert reply.body["data"]["name"] == "1234567802"
    assert reply.body["data"]["password"] == "NewSipPass456"


async def test_update_sip_password_main_allowed(api: ApiClient):
    reply = await api.post(
        "update-sip-password", OWNER, {"name": OWNER, "password": "NewSipPass456"}
    )

    assert reply.status == 200


UPDATE_SIP_INVALID = [
    ({"password": "NewSipPass456"}, "missing name"),
    ({"name": OWNER}, "missing password"),
    ({"name": "", "password": "NewSipPass456"}, "invalid name"),
    ({"name": OWNER, "password": "weak"}, "invalid password"),
    ({"name": {"a": 1}, "password": "NewSipPass456"}, "invalid name"),
]


async def test_update_sip_password_invalid(api: ApiClient):
    for body, prefix in UPDATE_SIP_INVALID:
        reply = await api.post("update-sip-password", OWNER, body)

        assert reply.status == 400, body
        assert reply.body["error"].startswith(prefix), body


async def test_delete_sip_additional(api: ApiClient, database: Database):
    await api.post("create-sip", OWNER)
    reply = await api.post("delete-sip", OWNER, {"name": "1234567802"})

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "message": "SIP account deleted",
        "data": {"name": "1234567802"},
    }
    listed = await api.get("sip", OWNER)
    assert [sip["name"] for sip in listed.body["data"]] == [OWNER]
    assert (
        await fetchval(database, "SELECT 1 FROM names WHERE name = '1234567802'")
        is None
    )


async def test_delete_sip_main_forbidden(api: ApiClient):
    reply = await api.post("delete-sip", OWNER, {"name": OWNER})

    assert reply.status == 403
    assert "main SIP account" in reply.body["error"]


async def test_delete_sip_removes_its_ip_auth(api: ApiClient):
    await api.post("create-sip", OWNER)
    await api.post(
        "ip-auth-create", OWNER, {"sip_login": "1234567802", "ip": "203.0.113.10"}
    )
    await api.post("delete-sip", OWNER, {"name": "1234567802"})
    listed = await api.get("ip-auth-list", OWNER)

    assert listed.body["data"]["ip_auth"] == []


async def test_delete_sip_missing_name(api: ApiClient):
    reply = await api.post("delete-sip", OWNER, {})

    assert reply.status == 400
    assert reply.body["error"].startswith("missing name")


# --- IP authorization ---------------------------------------------------------------


async def test_ip_auth_create_documented_shape(api: ApiClient):
    reply = await api.post(
        "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"}
    )

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "message": "IP authentication created",
        "data": {
            "id": reply.body["data"]["id"],
            "sip_login": OWNER,
            "peer_name": f"{OWNER}_ipa1",
            "ip": "203.0.113.10",
            "port": 5060,
            "status": 1,
        },
    }
    assert isinstance(reply.body["data"]["id"], int)


async def test_ip_auth_create_numbers_follow(api: ApiClient):
    await api.post("ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"})
    second = await api.post(
        "ip-auth-create",
        OWNER,
        {"sip_login": OWNER, "ip": "203.0.113.11", "port": 5080},
    )

    assert second.body["data"]["peer_name"] == f"{OWNER}_ipa2"
    assert second.body["data"]["port"] == 5080


REFUSED_IPS = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "100.64.0.1", "100.127.255.254", "169.254.1.1", "224.0.0.1", "239.1.1.1",
    "0.0.0.0", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::",
    "::ffff:10.0.0.1", "::ffff:127.0.0.1", "fe80::1%eth0", "not-an-ip", "1.2.3",
    "203.0.113.300", "203.0.113.10/24",
]  # fmt: skip
ACCEPTED_IPS = [
    ("203.0.113.10", "203.0.113.10"),
    ("198.51.100.7", "198.51.100.7"),
    ("192.0.2.1", "192.0.2.1"),
    ("8.8.8.8", "8.8.8.8"),
    ("2001:db8::10", "2001:db8::10"),
    ("2a00:1450:4001::1", "2a00:1450:4001::1"),
    ("100.128.0.1", "100.128.0.1"),
    ("::ffff:203.0.113.9", "203.0.113.9"),
    (" 203.0.113.12 ", "203.0.113.12"),
]


async def test_ip_auth_create_refuses_address(api: ApiClient):
    for ip in REFUSED_IPS:
        reply = await api.post("ip-auth-create", OWNER, {"sip_login": OWNER, "ip": ip})

        assert reply.status == 400, ip
        assert reply.body["error"].startswith(f"invalid ip {ip!r}"), ip
        assert "expected a public static" in reply.body["error"], ip


async def test_ip_auth_create_accepts_public(api: ApiClient):
    for ip, stored in ACCEPTED_IPS:
        reply = await api.post("ip-auth-create", OWNER, {"sip_login": OWNER, "ip": ip})

        assert reply.status == 200, ip
        assert reply.body["data"]["ip"] == stored, ip


async def test_ip_auth_private_allowed_by_setting(
    database: Database, settings: Settings, world: World
):
    lab = settings.replace(allow_private_ip_auth=True)
    async for api in scene_client(database, lab, world):
        private = await api.post(
            "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "10.0.0.5"}
        )
        loopback = await api.post(
            "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "127.0.0.1"}
        )
        multicast = await api.post(
            "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "224.0.0.1"}
        )

        assert private.status == 200
        assert loopback.status == 200
        assert multicast.status == 400


async def test_ip_auth_create_invalid_port(api: ApiClient):
    for port in [0, 65536, -1, "abc", True, 50.5, "", [5060]]:
        body = {"sip_login": OWNER, "ip": "203.0.113.10", "port": port}
        reply = await api.post("ip-auth-create", OWNER, body)

        assert reply.status == 400, port
        assert reply.body["error"].startswith("invalid port"), port


async def test_ip_auth_create_port_as_string(api: ApiClient):
    reply = await api.post(
        "ip-auth-create",
        OWNER,
        {"sip_login": OWNER, "ip": "203.0.113.10", "port": "5070"},
    )

    assert reply.status == 200
    assert reply.body["data"]["port"] == 5070


async def test_ip_auth_create_missing_fields(api: ApiClient):
    no_ip = await api.post("ip-auth-create", OWNER, {"sip_login": OWNER})
    no_login = await api.post("ip-auth-create", OWNER, {"ip": "203.0.113.10"})

    assert no_ip.status == 400
    assert no_ip.body["error"].startswith("missing ip")
    assert no_login.status == 400
    assert no_login.body["error"].startswith("missing sip_login")


async def test_ip_auth_duplicate_conflict_hides_owner(api: ApiClient):
    await api.post("ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"})
    same_account = await api.post(
        "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"}
    )
    other = await api.post(
        "ip-auth-create", OTHER, {"sip_login": OTHER, "ip": "203.0.113.10"}
    )
    other_port = await api.post(
        "ip-auth-create",
        OTHER,
        {"sip_login": OTHER, "ip": "203.0.113.10", "port": 5061},
    )

    assert same_account.status == 409
    assert other.status == 409
    assert OWNER not in other.body["error"]
    assert "already in use" in other.body["error"]
    assert other_port.status == 200


async def test_ip_auth_list_shape(api: ApiClient):
    created = await api.post(
        "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"}
    )
    await api.post("ip-auth-disable", OWNER, {"id": created.body["data"]["id"]})
    reply = await api.get("ip-auth-list", OWNER)

    assert reply.status == 200
    data = reply.body["data"]
    assert [sip["sip_login"] for sip in data["sip_accounts"]] == [OWNER]
    assert data["ip_auth"] == [{**created.body["data"], "status": 0}]


async def test_ip_auth_disable_enable_delete(api: ApiClient):
    created = await api.post(
        "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"}
    )
    ip_auth_id = created.body["data"]["id"]

    disabled = await api.post("ip-auth-disable", OWNER, {"id": ip_auth_id})
    assert disabled.status == 200
    assert disabled.body["message"] == "IP authentication disabled"
    assert disabled.body["data"]["status"] == 0

    enabled = await api.post("ip-auth-enable", OWNER, {"id": ip_auth_id})
    assert enabled.status == 200
    assert enabled.body["message"] == "IP authentication enabled"
    assert enabled.body["data"]["status"] == 1

    deleted = await api.post("ip-auth-delete", OWNER, {"id": ip_auth_id})
    assert deleted.status == 200
    assert deleted.body["message"] == "IP authentication deleted"
    listed = await api.get("ip-auth-list", OWNER)
    assert listed.body["data"]["ip_auth"] == []

    again = await api.post("ip-auth-delete", OWNER, {"id": ip_auth_id})
    assert again.status == 404


async def test_ip_auth_enable_rechecks_duplicate(api: ApiClient):
    created = await api.post(
        "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"}
    )
    await api.post("ip-auth-disable", OWNER, {"id": created.body["data"]["id"]})
    taken = await api.post(
        "ip-auth-create", OTHER, {"sip_login": OTHER, "ip": "203.0.113.10"}
    )
    enable = await api.post("ip-auth-enable", OWNER, {"id": created.body["data"]["id"]})

    assert taken.status == 200
    assert enable.status == 409
    assert OTHER not in enable.body["error"]


async def test_ip_auth_by_id_invalid(api: ApiClient):
    for endpoint in ["ip-auth-disable", "ip-auth-enable", "ip-auth-delete"]:
        for value in [None, "x", 0, True, {"id": 1}]:
            body = {} if value is None else {"id": value}
            reply = await api.post(endpoint, OWNER, body)

            assert reply.status == 400, (endpoint, value)
            prefix = "missing id" if value is None else "invalid id"
            assert reply.body["error"].startswith(prefix), (endpoint, value)


# --- caller IDs ---------------------------------------------------------------------


async def test_add_callerid_documented_example(api: ApiClient):
    reply = await api.post(
        "add-callerid",
        OWNER,
        {"cid": "+1234567890", "name": "Main Caller ID", "set_active": True},
    )

    assert reply.status == 200
    assert reply.body["message"] == "Caller ID added"
    assert reply.body["data"] == {
        "id": reply.body["data"]["id"],
        "cid": "+1234567890",
        "name": "Main Caller ID",
        "active": 1,
    }
    # +1 234 567 890 is too short for the North American plan: a warning only.
    assert "not a valid number" in reply.body["warning"]


async def test_add_callerid_valid_number_no_warning(api: ApiClient):
    reply = await api.post("add-callerid", OWNER, {"cid": "+442079460000"})

    assert reply.status == 200
    assert "warning" not in reply.body
    assert reply.body["data"]["active"] == 0
    assert reply.body["data"]["name"] is None


INVALID_CIDS = [
    "1234567890", "+123", "+1234567", "+1234567890123456", "+12345abc90", "+",
    "++1234567890", "+0123456789", "+2801234567", " ",
]  # fmt: skip


async def test_add_callerid_invalid(api: ApiClient):
    for cid in INVALID_CIDS:
        reply = await api.post("add-callerid", OWNER, {"cid": cid})

        assert reply.status == 400, cid
        assert reply.body["error"].startswith("invalid cid"), cid
        assert "E.164" in reply.body["error"], cid


async def test_add_callerid_wrong_types(api: ApiClient):
    number = await api.post("add-callerid", OWNER, {"cid": 1234567890})
    name = await api.post("add-callerid", OWNER, {"cid": "+442079460000", "name": 5})
    active = await api.post(
        "add-callerid", OWNER, {"cid": "+442079460000", "set_active": "maybe"}
    )
    long_name = await api.post(
        "add-callerid", OWNER, {"cid": "+442079460000", "name": "n" * 81}
    )

    assert number.status == 400
    assert name.status == 200  # a number is taken as its digits
    assert active.status == 400
    assert active.body["error"].startswith("invalid set_active 'maybe'")
    assert long_name.status == 400
    assert long_name.body["error"].startswith("invalid name")


async def test_add_callerid_duplicate_conflict(api: ApiClient):
    await api.post("add-callerid", OWNER, {"cid": "+442079460000"})
    reply = await api.post("add-callerid", OWNER, {"cid": "+442079460000"})

    assert reply.status == 409


async def test_callerids_list_and_switch(api: ApiClient):
    first = await api.post(
        "add-callerid", OWNER, {"cid": "+442079460000", "set_active": True}
    )
    second = await api.post("add-callerid", OWNER, {"cid": "+442079460001"})
    switched = await api.post("set-callerid", OWNER, {"cid": "+442079460001"})
    listed = await api.get("callerids", OWNER)

    assert switched.status == 200
    assert switched.body["message"] == "Caller ID set as active"
    assert switched.body["data"]["active"] == 1
    assert listed.body["data"] == [
        {**first.body["data"], "active": 0},
        {**second.body["data"], "active": 1},
    ]


async def test_set_callerid_unknown_404(api: ApiClient):
    reply = await api.post("set-callerid", OWNER, {"cid": "+442079469999"})

    assert reply.status == 404


async def test_delete_callerid(api: ApiClient):
    added = await api.post("add-callerid", OWNER, {"cid": "+442079460000"})
    reply = await api.post("delete-callerid", OWNER, {"id": added.body["data"]["id"]})
    listed = await api.get("callerids", OWNER)

    assert reply.status == 200
    assert reply.body["message"] == "Caller ID deleted"
    assert listed.body["data"] == []


async def test_clear_callerid(api: ApiClient):
    await api.post("add-callerid", OWNER, {"cid": "+442079460000", "set_active": True})
    cleared = await api.post("clear-callerid", OWNER, {})
    again = await api.post("clear-callerid", OWNER, {})
    listed = await api.get("callerids", OWNER)

    assert cleared.body == {
        "success": True,
        "message": "Caller ID cleared",
        "data": {"cleared": 1},
    }
    assert again.body["data"] == {"cleared": 0}
    assert listed.body["data"][0]["active"] == 0


async def test_clear_callerid_empty_body(api: ApiClient):
    reply = await api.request("POST", "clear-callerid", api.keys[OWNER], raw=b"")

    assert reply.status == 200


# --- calls, refills -----------------------------------------------------------


async def add_cdrs(database: Database, login: str, count: int) -> None:
    async with database.pool.acquire() as connection:
        for index in range(count):
            await connection.execute(
                """
                INSERT INTO cdrs (uniqueid, account_id, sip_name, number, destination,
                    callerid, started_at, answered_seconds, billed_seconds, cost,
                    source)
                SELECT $2, id, login, '15555550101', 'dest 1', login, $3, $4, $4, $5,
                    'agi'
                FROM accounts WHERE login = $1
                """,
                login,
                f"1796389402.{index}",
                FUTURE + timedelta(minutes=index),
                30 + index,
                Decimal("0.012345"),
            )


async def test_calls_newest_first_with_totals(api: ApiClient, database: Database):
    await add_cdrs(database, OWNER, 3)
    reply = await api.get("calls", OWNER, limit="2", offset="0")

    assert reply.status == 200
    data = reply.body["data"]
    assert data["total"] == 3
    assert data["limit"] == 2
    assert data["offset"] == 0
    assert data["total_cost"] == "0.0370"
    assert data["total_billed_seconds"] == 30 + 31 + 32
    assert [call["uniqueid"] for call in data["calls"]] == [
        "1796389402.2",
        "1796389402.1",
    ]
    call = data["calls"][0]
    assert call["date"] == "2031-05-09 23:02:00"
    assert call["number"] == "15555550101"
    assert call["sip_login"] == OWNER
    assert call["answered_seconds"] == 32
    assert call["billed_seconds"] == 32
    assert call["cost"] == "0.0123"
    assert call["disposition"] == "ANSWERED"
    assert call["destination"] == "dest 1"
    assert call["callerid"] == OWNER


async def test_calls_offset_pages(api: ApiClient, database: Database):
    await add_cdrs(database, OWNER, 3)
    reply = await api.get("calls", OWNER, limit="2", offset="2")

    assert [call["uniqueid"] for call in reply.body["data"]["calls"]] == [
        "1796389402.0"
    ]


async def test_calls_defaults(api: ApiClient):
    reply = await api.get("calls", OWNER)

    assert reply.body["data"]["limit"] == 50
    assert reply.body["data"]["offset"] == 0
    assert reply.body["data"]["calls"] == []


INVALID_PAGES = [
    ({"limit": "501"}, "limit"),
    ({"limit": "0"}, "limit"),
    ({"limit": "x"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"offset": "1e3"}, "offset"),
]


async def test_history_invalid_page(api: ApiClient):
    for endpoint in ["calls", "refills"]:
        for query, field in INVALID_PAGES:
            reply = await api.get(endpoint, OWNER, **query)

            assert reply.status == 400, (endpoint, query)
            expected = f"invalid {field} {query[field]!r}"
            assert reply.body["error"].startswith(expected), (endpoint, query)


async def test_calls_max_limit_accepted(api: ApiClient):
    reply = await api.get("calls", OWNER, limit="500")

    assert reply.status == 200


async def test_refills_only_credits(api: ApiClient, database: Database, world: World):
    from engine.ledger import change_balance

    async with database.transaction() as connection:
        account_id = world.accounts[OWNER]
        await change_balance(
            connection, account_id, Decimal("5"), "refill", note="card"
        )
        await change_balance(connection, account_id, Decimal("-0.5"), "call")
        await change_balance(connection, account_id, Decimal("2.5"), "transfer")
    reply = await api.get("refills", OWNER)

    data = reply.body["data"]
    assert data["total"] == 3
    assert data["total_amount"] == "8.5000"
    assert [row["kind"] for row in data["refills"]] == [
        "transfer",
        "refill",
        "adjustment",
    ]
    refill = data["refills"][1]
    assert refill["amount"] == "5.0000"
    assert refill["balance_after"] == "6.0000"
    assert refill["description"] == "card"
    assert MONEY.match(refill["amount"])


# --- vouchers -----------------------------------------------------------------


async def add_voucher(
    database: Database,
    code: str,
    amount: str,
    reseller: int | None = None,
    currency: str = "EUR",
) -> None:
    await fetchval(
        database,
        "INSERT INTO vouchers (code, amount, currency, reseller_id)"
        " VALUES ($1, $2, $3, $4)",
        code,
        Decimal(amount),
        currency,
        reseller,
    )


async def test_redeem_voucher_credits_ledger(
    api: ApiClient, database: Database, world: World
):
    await add_voucher(database, "123456", "10")
    reply = await api.post("redeem-voucher", OWNER, {"voucher": "123456"})

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "message": "Voucher redeemed",
        "data": {"voucher": "123456", "amount": "10.0000", "balance": "11.0000"},
    }
    assert await world.balance(OWNER) == Decimal("11")
    assert await world.ledger_sum(OWNER) == Decimal("11")
    kind = await fetchval(
        database,
        "SELECT kind FROM ledger WHERE account_id = $1 ORDER BY id DESC LIMIT 1",
        world.accounts[OWNER],
    )
    assert kind == "voucher"


async def test_redeem_voucher_numeric_code(api: ApiClient, database: Database):
    await add_voucher(database, "123456", "10")
    reply = await api.post("redeem-voucher", OWNER, {"voucher": 123456})

    assert reply.status == 200


async def test_redeem_voucher_once_only(api: ApiClient, database: Database):
    await add_voucher(database, "123456", "10")
    await api.post("redeem-voucher", OWNER, {"voucher": "123456"})
    again = await api.post("redeem-voucher", OWNER, {"voucher": "123456"})
    other = await api.post("redeem-voucher", OTHER, {"voucher": "123456"})
    unknown = await api.post("redeem-voucher", OWNER, {"voucher": "654321"})

    assert again.status == 404
    assert other.status == 404
    assert unknown.status == 404
    assert again.body["error"] == unknown.body["error"].replace("654321", "123456")


async def test_redeem_voucher_concurrent_once(
    api: ApiClient, database: Database, world: World
):
    import asyncio

    await add_voucher(database, "RACE1", "10")
    replies = await asyncio.gather(
        *(api.post("redeem-voucher", OWNER, {"voucher": "RACE1"}) for _ in range(5))
    )

    assert sorted(reply.status for reply in replies) == [200, 404, 404, 404, 404]
    assert await world.balance(OWNER) == Decimal("11")


async def test_redeem_voucher_reseller_scope(
    api: ApiClient, database: Database, world: World
):
    await add_voucher(database, "R1", "5", reseller=world.accounts["reseller1"])
    operator_client = await api.post("redeem-voucher", OWNER, {"voucher": "R1"})
    reseller_client = await api.post("redeem-voucher", "7770000001", {"voucher": "R1"})

    assert operator_client.status == 404
    assert reseller_client.status == 200
    assert reseller_client.body["data"]["balance"] == "8.0000"


async def test_redeem_voucher_other_currency_404(api: ApiClient, database: Database):
    await add_voucher(database, "USD1", "5", currency="USD")
    reply = await api.post("redeem-voucher", OWNER, {"voucher": "USD1"})

    assert reply.status == 404


INVALID_VOUCHERS = [
    {},
    {"voucher": ""},
    {"voucher": None},
    {"voucher": [1]},
    {"voucher": "x" * 65},
    {"voucher": True},
]


async def test_redeem_voucher_invalid(api: ApiClient):
    for body in INVALID_VOUCHERS:
        reply = await api.post("redeem-voucher", OWNER, body)

        assert reply.status == 400, body
        assert re.match(r"^(invalid|missing) voucher", reply.body["error"]), body


async def test_redeem_voucher_rate_limited_per_key(
    database: Database, settings: Settings, world: World
):
    limited = settings.replace(voucher_limit=3, voucher_window=60.0)
    async for api in scene_client(database, limited, world):
        statuses = [
            (await api.post("redeem-voucher", OWNER, {"voucher": f"guess{i}"})).status
            for i in range(4)
        ]
        blocked = await api.post("redeem-voucher", OWNER, {"voucher": "guess9"})
        other_key = await api.post("redeem-voucher", OTHER, {"voucher": "guess9"})

        assert statuses == [404, 404, 404, 429]
        assert blocked.status == 429
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        assert "retry after" in blocked.body["error"]
        assert other_key.status == 404


# --- change-password ----------------------------------------------------------


async def set_password(database: Database, login: str, password: str) -> None:
    await fetchval(
        database,
        "UPDATE accounts SET password_hash = $2 WHERE login = $1",
        login,
        hash_password(password),
    )


async def test_change_password_verifies_current(api: ApiClient, database: Database):
    await set_password(database, OWNER, "OldPassword1")
    reply = await api.post(
        "change-password",
        OWNER,
        {"current_password": "OldPassword1", "new_password": "NewPassword987"},
    )

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "message": "Password changed",
        "data": {"username": OWNER},
    }
    stored = await fetchval(
        database, "SELECT password_hash FROM accounts WHERE login = $1", OWNER
    )
    assert isinstance(stored, str)
    assert verify_password(stored, "NewPassword987")


async def test_change_password_wrong_current(api: ApiClient, database: Database):
    await set_password(database, OWNER, "OldPassword1")
    reply = await api.post(
        "change-password",
        OWNER,
        {"current_password": "Wrong1234567", "new_password": "NewPassword987"},
    )

    assert reply.status == 400
    assert reply.body["error"].startswith("invalid current_password")
    assert "Wrong1234567" not in reply.body["error"]


async def test_change_password_weak_new(api: ApiClient, database: Database):
    await set_password(database, OWNER, "OldPassword1")
    for new in ["short1A", "nouppercase123", "NOLOWERCASE123", "NoDigitsAtAll"]:
        body = {"current_password": "OldPassword1", "new_password": new}
        reply = await api.post("change-password", OWNER, body)

        assert reply.status == 400, new
        assert reply.body["error"].startswith("invalid new_password"), new
        rules = "at least 10 characters with a lower-case letter"
        assert rules in reply.body["error"], new
        assert new not in reply.body["error"], new


async def test_change_password_missing_fields(api: ApiClient):
    reply = await api.post("change-password", OWNER, {"new_password": "NewPassword987"})

    assert reply.status == 400
    assert reply.body["error"].startswith("missing current_password")


async def test_change_password_guesses_rate_limited(
    database: Database, settings: Settings, world: World
):
    limited = settings.replace(auth_failure_limit=2)
    async for api in scene_client(database, limited, world):
        await set_password(database, OWNER, "OldPassword1")
        body = {"current_password": "Wrong1234567", "new_password": "NewPassword987"}
        statuses = [
            (await api.post("change-password", OWNER, body)).status for _ in range(3)
        ]
        right = await api.post(
            "change-password",
            OWNER,
            {"current_password": "OldPassword1", "new_password": "NewPassword987"},
        )

        assert statuses == [400, 400, 429]
        assert right.status == 429
