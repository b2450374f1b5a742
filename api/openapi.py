"""The OpenAPI 3.1 document, built from the endpoints each Api registers.

Endpoints are described at their alias paths `/<api>/<endpoint>`, because
OpenAPI cannot tell operations apart by a query parameter; the same handlers
respond at `/<api>/index.php?endpoint=<endpoint>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from api.http import Api, Endpoint

ERRORS = {
    "400": "Invalid input; the message names the field, value and expected form.",
    "401": "Missing, unknown or disabled API key.",
    "403": "The object is yours but the action is not allowed on it.",
    "404": "The object does not exist or is not yours (the same answer).",
    "405": "Wrong HTTP method for this endpoint.",
    "409": "Conflict with what is stored.",
    "413": "Request body too large.",
    "415": "Unsupported content type or charset.",
    "429": "Rate limited; see Retry-After.",
    "503": "Internal error or database unavailable; retry later.",
}


def _success_schema(api: Api, endpoint: Endpoint) -> dict[str, Any]:
    properties: dict[str, Any] = {api.flag: {"const": True}}
    required = [api.flag]
    properties["message"] = {"type": "string"}
    properties.update(endpoint.top_level)
    if api.envelope == "data":
        properties["data"] = dict(endpoint.response)
        required.append("data")
    else:
        properties.update(endpoint.response.get("properties", {}))
        required.extend(endpoint.response.get("required", []))
    return {"type": "object", "properties": properties, "required": required}


def _error_schema(api: Api) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {api.flag: {"const": False}, "error": {"type": "string"}},
        "required": [api.flag, "error"],
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(api: Api, endpoint: Endpoint, method: str) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "Success.",
            "content": _json(_success_schema(api, endpoint)),
        }
    }
    for status, description in ERRORS.items():
        responses[status] = {
            "description": description,
            "content": _json({"$ref": f"#/components/schemas/{api.name}-error"}),
        }
    operation: dict[str, Any] = {
        "operationId": f"{api.name}-{endpoint.name}-{method}",
        "summary": endpoint.summary,
        "tags": [api.name],
        "security": [{"ApiKey": []}],
        "responses": responses,
    }
    if endpoint.query:
        operation["parameters"] = [
            {
                "name": parameter.name,
                "in": "query",
                "required": False,
                "description": parameter.description,
                "schema": dict(parameter.schema),
            }
            for parameter in endpoint.query
        ]
    if method == "post" and endpoint.body is not None:
        operation["requestBody"] = {
            "required": bool(endpoint.body.get("required")),
            "content": _json(dict(endpoint.body)),
        }
    return operation


def build_document(apis: Sequence[Api]) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of every endpoint of apis."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for api in apis:
        schemas[f"{api.name}-error"] = _error_schema(api)
        for endpoint in api.endpoints.values():
            path = f"{api.prefix}/{endpoint.name}"
            paths[path] = {
                method.lower(): _operation(api, endpoint, method.lower())
                for method in sorted(endpoint.methods)
            }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "callgate API",
            "version": "1",
            "description": "\n\n".join(
                f"{api.title}: {api.description}" for api in apis if api.description
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            },
        },
    }
