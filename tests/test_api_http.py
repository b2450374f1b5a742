"""The shared HTTP framework: auth, routing, errors, bodies, limits, logs, metrics."""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from api import client
from api.app import ssl_context
from api.http import Api, Context, Reply, client_address, parse_json
from engine.db import Database
from engine.settings import Settings
from tests.api_support import ApiClient, issue_key, scene_client, start_client
from tests.conftest import World

pytestmark = pytest.mark.timeout(30)

OWNER = "1234567801"


@pytest.fixture
async def api(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[ApiClient]:
    async for api_client in scene_client(database, settings, world):
        yield api_client


async def test_auth_missing_unknown_disabled_key(
    api: ApiClient, database: Database, world: World
):
    disabled = await issue_key(database, OWNER, status="disabled")
    await world.client("9990000001", "standard")
    inactive = await issue_key(database, "9990000001")
    async with database.pool.acquire() as connection:
        await connection.execute(
            "UPDATE accounts SET status = 'blocked' WHERE login = '9990000001'"
        )

    missing = await api.request("GET", "me", None)
    empty = await api.request("GET", "me", "")
    unknown = await api.request("GET", "me", "cg_not-a-key")
    off = await api.request("GET", "me", disabled)
    blocked = await api.request("GET", "me", inactive)
    huge = await api.request("GET", "me", "k" * 5000)

    assert missing.status == 401
    assert missing.body == {
        "success": False,
        "error": "missing X-API-Key header: send your API key in it",
    }
    assert empty.status == 401
    assert unknown.status == 401
    assert unknown.body["error"].startswith("invalid API key")
    assert off.body == unknown.body
    assert off.status == 401
    assert blocked.body == unknown.body
    assert huge.status == 401


async def test_auth_failures_rate_limited_per_address(
    database: Database, settings: Settings, world: World
):
    limited = settings.replace(auth_failure_limit=3, auth_failure_window=60.0)
    async for api in scene_client(database, limited, world):
        statuses = [
            (await api.request("GET", "me", f"cg_guess{i}")).status for i in range(4)
        ]
        valid = await api.request("GET", "me", api.keys[OWNER])

        assert statuses == [401, 401, 401, 429]
        assert valid.status == 429
        assert 1 <= int(valid.headers["Retry-After"]) <= 60
        assert valid.body["success"] is False


async def test_auth_failures_counted_per_forwarded_address(
    database: Database, settings: Settings, world: World
):
    proxied = settings.replace(
        auth_failure_limit=2,
        trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    async for api in scene_client(database, proxied, world):
        for _ in range(3):
            await api.request(
                "GET", "me", "cg_guess", headers={"X-Forwarded-For": "198.51.100.1"}
            )
        blocked = await api.request(
            "GET", "me", api.keys[OWNER], headers={"X-Forwarded-For": "198.51.100.1"}
        )
        other = await api.request(
            "GET", "me", api.keys[OWNER], headers={"X-Forwarded-For": "198.51.100.2"}
        )

        assert blocked.status == 429
        assert other.status == 200


def request_from(peer: str, forwarded: str | None = None) -> web.Request:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    transport_request = make_mocked_request("GET", "/", headers=headers)
    return transport_request.clone(remote=peer)


def test_client_address_trusts_only_proxies():
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)

    assert client_address(request_from("203.0.113.5", "198.51.100.1"), trusted) == (
        "203.0.113.5"
    )
    assert client_address(request_from("10.0.0.2", "198.51.100.1"), trusted) == (
        "198.51.100.1"
    )
    # A client cannot hide behind an address it prepends itself.
    assert (
        client_address(
            request_from("10.0.0.2", "192.0.2.9, 198.51.100.1, 10.0.0.3"), trusted
        )
        == "198.51.100.1"
    )
    assert client_address(request_from("10.0.0.2", "garbage"), trusted) == "10.0.0.2"
    assert client_address(request_from("10.0.0.2"), trusted) == "10.0.0.2"
    assert client_address(request_from("10.0.0.2", "198.51.100.1"), ()) == "10.0.0.2"


async def test_unknown_endpoint_lists_known(api: ApiClient):
    reply = await api.request("GET", "no-such-thing", api.keys[OWNER])
    alias = await api.request("GET", "no-such-thing", api.keys[OWNER], alias=True)
    bare = await api.http.get("/client-api/index.php", headers={"X-API-Key": "x"})
    body = await bare.json()

    assert reply.status == 404
    assert reply.body["success"] is False
    assert "unknown endpoint 'no-such-thing'" in reply.body["error"]
    for name in client.API.endpoints:
        assert name in reply.body["error"]
    assert alias.status == 404
    assert bare.status == 404
    assert "missing endpoint" in body["error"]


async def test_unknown_endpoint_without_key(api: ApiClient):
    reply = await api.request("GET", "no-such-thing", None)

    assert reply.status == 404


async def test_wrong_method_405(api: ApiClient):
    post_get = await api.request("POST", "me", api.keys[OWNER], body={})
    get_post = await api.request("GET", "create-sip", api.keys[OWNER])
    put = await api.request("PUT", "sip", api.keys[OWNER])
    delete = await api.request("DELETE", "delete-sip", api.keys[OWNER], alias=True)

    assert post_get.status == 405
    assert post_get.headers["Allow"] == "GET"
    assert post_get.body == {
        "success": False,
        "error": "method POST not allowed on endpoint me: use GET",
    }
    assert get_post.status == 405
    assert get_post.headers["Allow"] == "POST"
    assert put.status == 405
    assert delete.status == 405


async def test_bad_json_bodies_400(api: ApiClient):
    key = api.keys[OWNER]
    cases = [
        b"{not json",
        b'{"name": }',
        b"[1, 2]",
        b'"text"',
        b"123",
        b"null",
        b'{"id": NaN}',
        b'{"id": Infinity}',
        b"\xff\xfe\xfa",
        b"[" * 5000 + b"]" * 5000,
        b'{"name": "a\\u0000b"}',
        b'{"name": "\\ud800"}',
        b'{"a":' * 40 + b"1" + b"}" * 40,
        b'{"id": ' + b"9" * 5000 + b"}",
    ]
    for raw in cases:
        reply = await api.request(
            "POST",
            "delete-sip",
            key,
            raw=raw,
            headers={"Content-Type": "application/json"},
        )

        assert reply.status == 400, raw[:40]
        assert reply.body["success"] is False, raw[:40]
        assert reply.body["error"], raw[:40]


async def test_odd_encodings_accepted(api: ApiClient):
    key = api.keys[OWNER]
    text = json.dumps({"name": "1234567802"})
    cases = [
        (text.encode("utf-16"), "application/json"),
        (text.encode("utf-32"), "application/json"),
        (b"\xef\xbb\xbf" + text.encode(), "application/json"),
        (text.encode("latin-1"), "application/json; charset=latin-1"),
        (text.encode(), "text/plain"),
        (text.encode(), ""),
    ]
    for raw, content_type in cases:
        reply = await api.request(
            "POST", "delete-sip", key, raw=raw, headers={"Content-Type": content_type}
        )

        # The body parsed: the SIP account does not exist, so 404 not 400.
        assert reply.status == 404, content_type
        assert "1234567802" in reply.body["error"], content_type


async def test_unsupported_content_types(api: ApiClient):
    key = api.keys[OWNER]
    form = await api.request(
        "POST",
        "delete-sip",
        key,
        raw=b"name=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    charset = await api.request(
        "POST",
        "delete-sip",
        key,
        raw=b"{}",
        headers={"Content-Type": "application/json; charset=klingon"},
    )

    assert form.status == 415
    assert "expected application/json" in form.body["error"]
    assert charset.status == 415


async def test_huge_body_413(api: ApiClient, settings: Settings):
    raw = b'{"name": "' + b"x" * (settings.api_max_body_bytes + 10) + b'"}'
    reply = await api.request(
        "POST",
        "delete-sip",
        api.keys[OWNER],
        raw=raw,
        headers={"Content-Type": "application/json"},
    )

    assert reply.status == 413
    assert reply.body["success"] is False
    assert str(settings.api_max_body_bytes) in reply.body["error"]


async def test_huge_chunked_body_413(api: ApiClient, settings: Settings):
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(settings.api_max_body_bytes // 1000 + 2):
            yield b"x" * 1000
        yield b'"}'

    response = await api.http.post(
        "/client-api/delete-sip",
        data=chunks(),
        headers={"X-API-Key": api.keys[OWNER], "Content-Type": "application/json"},
    )

    assert response.status == 413


def test_parse_json_empty_and_decimal():
    assert parse_json(b"", None) == {}
    assert parse_json(b"  \n", None) == {}
    assert parse_json(b'{"amount": 1.10}', None) == {"amount": Decimal("1.10")}


async def test_wrong_types_never_500(api: ApiClient):
    key = api.keys[OWNER]
    values = [None, True, 0, -1, 2**70, 1.5, "", "x" * 300, [], {}, [1, "a"], {"a": 1}]
    for name, endpoint in client.API.endpoints.items():
        if "POST" not in endpoint.methods or endpoint.body is None:
            continue
        for field in endpoint.body.get("properties", {}):
            for value in values:
                reply = await api.request("POST", name, key, body={field: value})

                assert reply.status < 500, (name, field, value)
                assert isinstance(reply.body, dict), (name, field, value)
                assert "success" in reply.body, (name, field, value)


async def test_unexpected_error_generic_envelope(
    database: Database,
    settings: Settings,
    world: World,
    caplog: pytest.LogCaptureFixture,
):
    broken = Api("client", "/broken-api", envelope="data", title="broken")

    @broken.endpoint("boom", "GET", summary="Raise.", response={"type": "null"})
    async def boom(context: Context) -> Reply:
        raise RuntimeError("secret internal detail")

    await world.plan("standard", [("1", "0.01", 1, 1, "0")])
    await world.client(OWNER, "standard")
    key = await issue_key(database, OWNER)
    async for http in start_client(database, settings, [broken]):
        with caplog.at_level(logging.ERROR, logger="callgate.api"):
            response = await http.get("/broken-api/boom", headers={"X-API-Key": key})
            body = await response.json()

    request_id = response.headers["X-Request-Id"]
    assert response.status == 503
    assert body["success"] is False
    assert request_id in body["error"]
    assert "secret internal detail" not in body["error"]
    assert "Traceback" not in body["error"]
    failures = [r for r in caplog.records if "request failed" in r.getMessage()]
    assert len(failures) == 1
    assert request_id in failures[0].getMessage()
    assert failures[0].exc_info is not None


async def test_non_api_path_json_404(api: ApiClient):
    response = await api.http.get("/nothing-here")
    body = await response.json()

    assert response.status == 404
    assert body["success"] is False


async def test_access_log_line_without_secrets(
    api: ApiClient, caplog: pytest.LogCaptureFixture, database: Database
):
    from engine.secrets import hash_password

    async with database.pool.acquire() as connection:
        await connection.execute(
            "UPDATE accounts SET password_hash = $1 WHERE login = $2",
            hash_password("OldPassword1"),
            OWNER,
        )
    key = api.keys[OWNER]
    with caplog.at_level(logging.INFO):
        await api.get("me", OWNER)
        await api.post(
            "change-password",
            OWNER,
            {"current_password": "OldPassword1", "new_password": "NewPassword987"},
        )
        await api.post("create-sip", OWNER, {"password": "StrongSipPass123"})

    lines = [r.getMessage() for r in caplog.records if r.name == "callgate.api"]
    me_lines = [line for line in lines if "endpoint=me " in line]
    assert len(me_lines) == 1
    assert "status=200" in me_lines[0]
    assert "api=client" in me_lines[0]
    assert "key=" in me_lines[0]
    assert "ms=" in me_lines[0]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (key, "OldPassword1", "NewPassword987", "StrongSipPass123"):
        assert secret not in everything
    changes = [
        r.getMessage()
        for r in caplog.records
        if "SIP account created" in r.getMessage()
    ]
    assert changes and "account=" in changes[0]


async def test_metrics_count_requests(api: ApiClient):
    await api.get("me", OWNER)
    await api.request("GET", "definitely-unknown", api.keys[OWNER])
    response = await api.http.get("/metrics")
    text = await response.text()

    assert response.status == 200
    assert (
        'callgate_api_requests_total{api="client",endpoint="me",status="200"}' in text
    )
    assert (
        'callgate_api_requests_total{api="client",endpoint="unknown",status="404"}'
        in (text)
    )
    assert "definitely-unknown" not in text
    assert "callgate_api_request_duration_seconds_bucket" in text


async def test_openapi_document_alias_paths(api: ApiClient):
    response = await api.http.get("/openapi.json")
    document = await response.json()

    assert response.status == 200
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        f"/client-api/{name}" for name in client.API.endpoints
    }
    me = document["paths"]["/client-api/me"]["get"]
    assert me["security"] == [{"ApiKey": []}]
    data = me["responses"]["200"]["content"]["application/json"]["schema"]
    assert data["properties"]["data"]["required"] == [
        "id",
        "username",
        "balance",
        "active",
        "id_plan",
        "plan_name",
    ]
    create = document["paths"]["/client-api/ip-auth-create"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["sip_login", "ip"]
    assert "405" in create["responses"]
    assert "get" not in document["paths"]["/client-api/ip-auth-create"]


def make_certificate(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_ssl_context_from_settings(settings: Settings, tmp_path: Path):
    assert ssl_context(settings) is None
    try:
        cert, key = make_certificate(tmp_path)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    context = ssl_context(settings.replace(tls_cert=cert, tls_key=key))

    assert context is not None
    assert context.minimum_version.name == "TLSv1_2"
