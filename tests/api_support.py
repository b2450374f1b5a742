"""Helpers for the API tests: a loopback server on the test database, keys, a scene."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from api import client
from api.app import create_app
from api.http import Api
from engine.db import Database
from engine.secrets import hash_api_key, new_api_key
from engine.settings import Settings
from tests.conftest import World

PATH = "/client-api/index.php"


async def issue_key(database: Database, login: str, status: str = "active") -> str:
    key = new_api_key()
    async with database.pool.acquire() as connection:
        await connection.execute(
            """
            INSERT INTO api_keys (account_id, key_hash, label, status)
            SELECT id, $2, 'test', $3 FROM accounts WHERE login = $1
            """,
            login,
            hash_api_key(key),
            status,
        )
    return key


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class ApiClient:
    """Client of /client-api/index.php?endpoint=NAME, as existing scripts call it."""

    http: TestClient[Any, Any]
    keys: dict[str, str] = field(default_factory=dict)

    async def request(
        self,
        method: str,
        endpoint: str,
        key: str | None,
        *,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        alias: bool = False,
    ) -> Reply:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["X-API-Key"] = key
        params = dict(query or {})
        if alias:
            path = f"/client-api/{endpoint}"
        else:
            path = PATH
            params = {"endpoint": endpoint, **params}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        response = await self.http.request(
            method, path, params=params, data=data, headers=all_headers
        )
        text = await response.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return Reply(response.status, parsed, dict(response.headers))

    async def get(self, endpoint: str, as_: str, **query: str) -> Reply:
        return await self.request("GET", endpoint, self.keys[as_], query=query)

    async def post(self, endpoint: str, as_: str, body: Any = None) -> Reply:
        return await self.request(
            "POST", endpoint, self.keys[as_], body={} if body is None else body
        )


async def start_client(
    database: Database, settings: Settings, apis: list[Api] | None = None
) -> AsyncIterator[TestClient[Any, Any]]:
    # Only the Client API, so these tests do not depend on the other API modules.
    app = create_app(database, settings, [client.API] if apis is None else apis)
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await http.start_server()
    try:
        yield http
    finally:
        await http.close()


async def build_scene(world: World) -> None:
    """Plans, a reseller and clients that every API test can rely on.

    - operator plans: standard and premium (offered for sign-up), hidden (not);
    - 1234567801 and 5550000001: operator clients on standard;
    - reseller1 on wholesale, with its retail plan; 7770000001 its client.
    """
    rates = [("1", "0.010000", 1, 1, "0")]
    await world.plan("standard", rates, signup=True)
    await world.plan("premium", rates, signup=True)
    await world.plan("hidden", rates)
    await world.plan("wholesale", rates)
    await world.trunk("carrier", "standard")
    await world.trunk("carrier", "premium")
    await world.trunk("carrier", "wholesale")
    await world.client("1234567801", "standard", "1.00")
    await world.client("5550000001", "standard", "2.00")
    await world.reseller("reseller1", "wholesale", "100")
    await world.client("7770000001", balance="3.00", reseller="reseller1")


async def scene_client(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[ApiClient]:
    """Yield an ApiClient over the scene, with keys named after the logins."""
    await build_scene(world)
    async for http in start_client(database, settings):
        api = ApiClient(http)
        for login in ("1234567801", "5550000001", "7770000001", "reseller1", "admin"):
            api.keys[login] = await issue_key(database, login)
        yield api
