"""A property fuzzer for the Client API: random bodies and queries, never a 5xx.

Every response must be JSON in the client envelope, and every success must match
the response schema the OpenAPI document publishes for its endpoint. The
seeded generator makes a failure reproducible from the printed case.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from api import client
from api.openapi import build_document
from engine.db import Database
from engine.settings import Settings
from tests.api_support import ApiClient, scene_client
from tests.conftest import World

pytestmark = pytest.mark.timeout(60)

OWNER = "1234567801"
CASES_PER_ENDPOINT = 40
SAMPLES = [
    OWNER, "1234567802", f"{OWNER}_ipa1", "5550000001", "203.0.113.10", "10.0.0.1",
    "+1234567890", "+442079460000", "StrongSipPass123", "", " ", "\u00e9\u4e2d",
    "\U0001f600", "0", "-1", "1e309", "null", "true", "%00", "' OR 1=1 --",
]  # fmt: skip


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 6, 5060, 65535, 65536, 2**31, 2**63, -(2**64)])
    if kind == 3:
        return rng.choice([0.5, -1.25, 1e300, 123.0])
    if kind == 4:
        return rng.choice(SAMPLES)
    if kind == 5:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(40)))
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randrange(3))}


def check(schema: dict[str, Any], value: Any, where: str = "$") -> None:
    """Validate value against the JSON Schema subset the OpenAPI document uses."""
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        python = {
            "object": dict, "array": list, "string": str, "null": type(None),
            "boolean": bool, "integer": int, "number": (int, float),
        }  # fmt: skip
        ok = any(
            isinstance(value, python[name])
            and not (name in ("integer", "number") and isinstance(value, bool))
            for name in allowed
        )
        assert ok, f"{where}: {value!r} is not {allowed}"
    if "const" in schema:
        assert value == schema["const"], f"{where}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "pattern" in schema and isinstance(value, str):
        assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ pattern"
    if isinstance(value, int) and not isinstance(value, bool):
        assert value >= schema.get("minimum", value), f"{where}: {value} < minimum"
        assert value <= schema.get("maximum", value), f"{where}: {value} > maximum"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{where}: missing {name}"
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                check(sub, value[name], f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check(schema["items"], item, f"{where}[{index}]")


@pytest.fixture
async def api(
    database: Database, settings: Settings, world: World
) -> AsyncIterator[ApiClient]:
    async for api_client in scene_client(database, settings, world):
        yield api_client


async def test_fuzz_client_api_no_server_error(api: ApiClient):
    document = build_document([client.API])
    rng = random.Random(20310509)
    key = api.keys[OWNER]
    for name, endpoint in client.API.endpoints.items():
        method = sorted(endpoint.methods)[0]
        operation = document["paths"][f"/client-api/{name}"][method.lower()]
        success = operation["responses"]["200"]["content"]["application/json"]["schema"]
        failure = {"type": "object", "required": ["success", "error"],
                   "properties": {"success": {"const": False},
                                  "error": {"type": "string"}}}  # fmt: skip
        fields = list((endpoint.body or {}).get("properties", {}))
        fields += [parameter.name for parameter in endpoint.query]
        for case in range(CASES_PER_ENDPOINT):
            values = {
                field: random_value(rng) for field in fields if rng.random() < 0.7
            }
            if rng.random() < 0.2:
                values[f"extra{case}"] = random_value(rng)
            if method == "GET":
                query = {k: str(v) for k, v in values.items() if v is not None}
                reply = await api.request(
                    "GET", name, key, query=query, alias=rng.random() < 0.5
                )
            else:
                reply = await api.request(
                    "POST", name, key, body=values, alias=rng.random() < 0.5
                )
            label = f"{name} case {case}: {values!r}"

            assert reply.status < 500, label
            assert isinstance(reply.body, dict), label
            if reply.status == 200:
                check(success, reply.body)
            else:
                check(failure, reply.body)
                assert str(reply.status) in operation["responses"], label
