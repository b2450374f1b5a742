"""What Asterisk reads after Client API changes, and the caller ID calls present."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import count
from typing import Any

import pytest

from engine.calls import Authorization, AuthorizeRequest, CallService
from engine.db import Database
from engine.settings import Settings
from tests.api_support import ApiClient, scene_client
from tests.conftest import World

pytestmark = pytest.mark.timeout(30)

OWNER = "1234567801"
_calls = count(1)


@pytest.fixture
async def api(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[ApiClient]:
    async for api_client in scene_client(database, settings, world):
        yield api_client


async def realtime(database: Database, view: str, name: str) -> list[dict[str, Any]]:
    async with database.pool.acquire() as connection:
        rows = await connection.fetch(f"SELECT * FROM {view} WHERE id = $1", name)
    return [dict(row) for row in rows]


async def test_create_sip_provisions_endpoint(api: ApiClient, database: Database):
    created = await api.post("create-sip", OWNER, {"password": "StrongSipPass123"})
    name = created.body["data"]["name"]
    [endpoint] = await realtime(database, "ps_endpoints", name)
    [auth] = await realtime(database, "ps_auths", name)
    [aor] = await realtime(database, "ps_aors", name)

    assert endpoint["auth"] == name
    assert endpoint["aors"] == name
    assert endpoint["identify_by"] == "username"
    assert endpoint["context"] == "callgate-outbound"
    assert endpoint["accountcode"] == OWNER
    assert endpoint["callerid"] == name
    assert auth["auth_type"] == "userpass"
    assert auth["username"] == name
    assert auth["password"] == "StrongSipPass123"
    assert aor["max_contacts"] == 5
    assert await realtime(database, "ps_endpoint_id_ips", name) == []


async def test_update_sip_password_changes_ps_auths(api: ApiClient, database: Database):
    await api.post(
        "update-sip-password", OWNER, {"name": OWNER, "password": "NewSipPass456"}
    )
    [auth] = await realtime(database, "ps_auths", OWNER)

    assert auth["password"] == "NewSipPass456"


async def test_delete_sip_removes_everything(api: ApiClient, database: Database):
    await api.post("create-sip", OWNER)
    name = "1234567802"
    await api.post("ip-auth-create", OWNER, {"sip_login": name, "ip": "203.0.113.10"})
    async with database.pool.acquire() as connection:
        await connection.execute(
            "INSERT INTO ps_contacts (id, uri, endpoint)"
            " VALUES ($1, 'sip:x@192.0.2.1', $2)",
            f"{name};@1",
            name,
        )
    await api.post("delete-sip", OWNER, {"name": name})

    for view in ("ps_endpoints", "ps_auths", "ps_aors"):
        assert await realtime(database, view, name) == [], view
        assert await realtime(database, view, f"{name}_ipa1") == [], view
    assert await realtime(database, "ps_endpoint_id_ips", f"{name}_ipa1") == []
    async with database.pool.acquire() as connection:
        contacts = await connection.fetchval(
            "SELECT count(*) FROM ps_contacts WHERE endpoint = $1", name
        )
    assert contacts == 0


async def test_ip_auth_lifecycle_in_realtime_views(api: ApiClient, database: Database):
    created = await api.post(
        "ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"}
    )
    ip_auth_id = created.body["data"]["id"]
    peer = f"{OWNER}_ipa1"

    [endpoint] = await realtime(database, "ps_endpoints", peer)
    [identify] = await realtime(database, "ps_endpoint_id_ips", peer)
    [aor] = await realtime(database, "ps_aors", peer)
    assert endpoint["identify_by"] == "ip"
    assert endpoint["auth"] is None
    assert endpoint["aors"] == peer
    assert endpoint["accountcode"] == OWNER
    assert identify["endpoint"] == peer
    assert identify["match"] == "203.0.113.10:5060"
    assert aor["max_contacts"] == 0
    assert await realtime(database, "ps_auths", peer) == []

    await api.post("ip-auth-disable", OWNER, {"id": ip_auth_id})
    for view in ("ps_endpoints", "ps_aors", "ps_endpoint_id_ips", "ps_auths"):
        assert await realtime(database, view, peer) == [], view

    await api.post("ip-auth-enable", OWNER, {"id": ip_auth_id})
    [identify] = await realtime(database, "ps_endpoint_id_ips", peer)
    assert identify["match"] == "203.0.113.10:5060"
    assert len(await realtime(database, "ps_endpoints", peer)) == 1

    await api.post("ip-auth-delete", OWNER, {"id": ip_auth_id})
    for view in ("ps_endpoints", "ps_aors", "ps_endpoint_id_ips"):
        assert await realtime(database, view, peer) == [], view
    [main] = await realtime(database, "ps_endpoints", OWNER)
    assert main["identify_by"] == "username"


async def test_ip_auth_ipv6_match_bracketed(api: ApiClient, database: Database):
    await api.post(
        "ip-auth-create",
        OWNER,
        {"sip_login": OWNER, "ip": "2001:db8::10", "port": 5080},
    )
    [identify] = await realtime(database, "ps_endpoint_id_ips", f"{OWNER}_ipa1")

    assert identify["match"] == "[2001:db8::10]:5080"


async def place_call(calls: CallService, sip: str) -> Authorization:
    """Authorize an outbound call from sip, then release it so credit is free again."""
    sequence = next(_calls)
    request = AuthorizeRequest(
        f"1796389402.{sequence}", f"PJSIP/{sip}-{sequence:08x}", "15555550101"
    )
    result = await calls.authorize(request)
    await calls.release(request.uniqueid, "test")
    return result


async def test_active_callerid_on_every_sip_account(
    api: ApiClient, database: Database, settings: Settings
):
    calls = CallService(database, settings)
    await api.post("create-sip", OWNER)
    await api.post("ip-auth-create", OWNER, {"sip_login": OWNER, "ip": "203.0.113.10"})
    await api.post("add-callerid", OWNER, {"cid": "+442079460000", "set_active": True})
    sips = [OWNER, "1234567802", f"{OWNER}_ipa1"]

    for sip in sips:
        result = await place_call(calls, sip)

        assert result.status == "OK", sip
        assert result.callerid == "+442079460000", sip

    await api.post("add-callerid", OWNER, {"cid": "+442079460001"})
    await api.post("set-callerid", OWNER, {"cid": "+442079460001"})
    switched = await place_call(calls, "1234567802")
    assert switched.callerid == "+442079460001"


async def test_cleared_callerid_restores_sip_own(
    api: ApiClient, database: Database, settings: Settings
):
    calls = CallService(database, settings)
    await api.post("create-sip", OWNER)
    await api.post("add-callerid", OWNER, {"cid": "+442079460000", "set_active": True})
    await api.post("clear-callerid", OWNER, {})

    for sip in [OWNER, "1234567802"]:
        result = await place_call(calls, sip)

        assert result.status == "OK", sip
        assert result.callerid is None, sip
    async with database.pool.acquire() as connection:
        presented = await connection.fetch(
            "SELECT sip_name, callerid FROM sessions ORDER BY created_at"
        )
    # With no active caller ID, the session records the SIP account's own.
    assert [(row["sip_name"], row["callerid"]) for row in presented] == [
        (OWNER, OWNER),
        ("1234567802", "1234567802"),
    ]
    [endpoint] = await realtime(database, "ps_endpoints", "1234567802")
    assert endpoint["callerid"] == "1234567802"


async def test_other_clients_callerid_not_used(
    api: ApiClient, database: Database, settings: Settings
):
    calls = CallService(database, settings)
    await api.post(
        "add-callerid", "5550000001", {"cid": "+442079460000", "set_active": True}
    )
    result = await place_call(calls, OWNER)

    assert result.callerid is None
