"""The OpenAPI 3 document served at ``/openapi.json``: the issuance API and the proxy.

It is written by hand to say exactly what the handlers do; a schemathesis run in the tests
checks every operation against the live server.
"""

from __future__ import annotations

import copy
from typing import Any

from keybrake._version import __version__
from keybrake.vendors import installed_vendors

__all__ = ["openapi_document"]

_DECIMAL = {"type": "string", "pattern": r"^\d+\.\d{2,6}$", "example": "500.00"}
_TIME = {"type": "string", "format": "date-time"}
_KEY_ID = {"type": "string", "example": "vk_0123456789abcdef01234567"}
_BUDGET_ID = {"type": "string", "example": "bud_0123456789abcdef01234567"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed request (`bad_request`, with `param`), or a refused path or body",
        401: "Missing or unknown credential (`unauthorized`, `invalid_key`, `key_expired`,"
        " `key_revoked`); on `/metrics`, a missing or wrong metrics token (`unauthorized`)",
        403: "Refused by policy (`endpoint_not_allowed`, `vendor_mismatch`, `unpriced_endpoint`)",
        404: "No such key (`key_not_found`), budget (`budget_not_found`), route (`not_found`)"
        " or vendor (`unknown_vendor`)",
        405: "Method not allowed (`method_not_allowed`)",
        409: "The key is revoked or expired (`key_revoked`, `key_expired`)",
        413: "Request body too large (`body_too_large`)",
        422: "Idempotency-Key reused with another body (`idempotency_key_reused`)",
        429: "The request would pass the key's daily cap (`cap_exhausted`) or its budget's"
        " (`budget_exhausted`), the key's rate limit (`rate_limited`, with `Retry-After`) or its"
        " use count (`uses_exhausted`)",
        502: "The vendor can't be reached (`upstream_unavailable`)",
        503: "The store is down (`store_unavailable`), the vendor is not configured, or with"
        " durable audit the request's audit entry can't be written (`audit_unavailable`)",
        504: "The vendor did not answer in time (`upstream_timeout`)",
    }
    return {str(s): _json(_ref("Error"), text[s]) for s in statuses}


def _list_of(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref(item)},
            "has_more": {"type": "boolean"},
        },
    }


_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
}
_KEY_PATH = {"name": "key_id", "in": "path", "required": True, "schema": _KEY_ID}


def _key_schema(*, with_token: bool = False, with_spend: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": _KEY_ID,
        "object": {"type": "string", "enum": ["vault_key"]},
        "vendor": {"type": "string"},
        "label": {"type": "string"},
        "allowed_endpoints": {"type": "array", "items": {"type": "string"}},
        "daily_usd_cap": _DECIMAL,
        "created_at": _TIME,
        "expires_at": _TIME,
        "max_expires_at": _TIME,
        "revoked_at": {**_TIME, "nullable": True},
        "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "stripe_account": {"type": "string", "nullable": True, "pattern": "^acct_"},
        "rate_limit": {"type": "string", "nullable": True, "example": "10/m"},
        "max_requests": {"type": "integer", "nullable": True, "minimum": 1},
        "budget": {**_BUDGET_ID, "nullable": True},
    }
    required = list(properties)
    if with_token:
        properties["token"] = {"type": "string", "pattern": "^vault_key_"}
        required.append("token")
    if with_spend:
        properties["spent_today_usd"] = _DECIMAL
        properties["reserved_today_usd"] = _DECIMAL
        properties["unconfirmed_today_usd"] = _DECIMAL
        properties["requests_used"] = {"type": "integer", "minimum": 0}
        required += [
            "spent_today_usd",
            "reserved_today_usd",
            "unconfirmed_today_usd",
            "requests_used",
        ]
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def _budget_schema(*, with_spend: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": _BUDGET_ID,
        "object": {"type": "string", "enum": ["budget"]},
        "label": {"type": "string"},
        "daily_usd_cap": _DECIMAL,
        "created_at": _TIME,
        "expires_at": _TIME,
        "revoked_at": {**_TIME, "nullable": True},
        "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
        "spent_today_usd": _DECIMAL,
    }
    if with_spend:
        properties["reserved_today_usd"] = _DECIMAL
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


_DURATION = {
    "oneOf": [
        {"type": "string", "pattern": r"^\s*0*[1-9]\d{0,6}\s*[smhd]?\s*$", "example": "5m"},
        {"type": "integer", "minimum": 1, "maximum": 2592000},
    ],
    "description": "`30s`, `5m`, `2h`, `1d` or whole seconds; at most 30 days",
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "param": {"type": "string"},
            "attempted": {"type": "string"},
            "allowed_endpoints": {"type": "array", "items": {"type": "string"}},
            "daily_usd_cap": _DECIMAL,
            "spent_today_usd": _DECIMAL,
            "attempted_usd": _DECIMAL,
            "rate_limit": {"type": "string"},
            "retry_after": {"type": "integer", "description": "`rate_limited`: seconds to wait"},
            "max_requests": {"type": "integer"},
            "budget": _BUDGET_ID,
            "budget_daily_usd_cap": _DECIMAL,
            "budget_spent_today_usd": _DECIMAL,
            "error": {
                "type": "object",
                "description": "Stripe's error shape, on `/stripe/...` answers (each vendor's"
                " refusals also carry that vendor's own error fields)",
                "properties": {
                    "type": {"type": "string"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
    "IssueRequest": {
        "type": "object",
        "required": ["vendor", "allowed_endpoints", "daily_usd_cap", "expires_in"],
        "properties": {
            "label": {"type": "string", "maxLength": 200},
            "vendor": {"type": "string"},
            "allowed_endpoints": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {"type": "string", "example": "POST /v1/payment_intents"},
            },
            "daily_usd_cap": {
                "oneOf": [
                    {"type": "string", "pattern": r"^\d+(\.\d{1,6})?$", "example": "500.00"},
                    {"type": "number", "minimum": 0},
                ],
                "description": "USD per UTC day, a decimal string or JSON number",
            },
            "expires_in": _DURATION,
            "max_lifetime": _DURATION,
            "metadata": {
                "type": "object",
                "maxProperties": 50,
                "additionalProperties": {"type": "string"},
            },
            "stripe_account": {
                "type": "string",
                "pattern": "^acct_[A-Za-z0-9]{1,64}$",
                "nullable": True,
                "description": "Stripe keys only: the connected account every request acts on",
            },
            "rate_limit": {
                "type": "string",
                "pattern": r"^[1-9][0-9]{0,5}/[smh]$",
                "nullable": True,
                "description": "At most N forwarded requests in any window of a second, minute"
                " or hour (`N/s`, `N/m`, `N/h`), free ones included; N at most 100000",
            },
            "max_requests": {
                "type": "integer",
                "minimum": 1,
                "maximum": 10**12,
                "nullable": True,
                "description": "At most so many forwarded requests over the key's life",
            },
            "budget": {
                **_BUDGET_ID,
                "nullable": True,
                "description": "A run budget of the same tenant (active): every request must"
                " fit its daily cap too; the key lives no longer than the budget",
            },
        },
    },
    "BudgetRequest": {
        "type": "object",
        "required": ["daily_usd_cap", "expires_in"],
        "properties": {
            "label": {"type": "string", "maxLength": 200},
            "daily_usd_cap": {
                "oneOf": [
                    {"type": "string", "pattern": r"^\d+(\.\d{1,6})?$", "example": "100.00"},
                    {"type": "number", "minimum": 0},
                ],
                "description": "USD per UTC day shared by every key of the budget",
            },
            "expires_in": _DURATION,
        },
    },
    "Budget": _budget_schema(),
    "BudgetWithSpend": _budget_schema(with_spend=True),
    "BudgetRevocation": {
        "type": "object",
        "required": ["id", "object", "status", "revoked_at"],
        "properties": {
            "id": _BUDGET_ID,
            "object": {"type": "string", "enum": ["budget"]},
            "status": {"type": "string", "enum": ["revoked"]},
            "revoked_at": _TIME,
        },
    },
    "RevokeKeysRequest": {
        "type": "object",
        "description": (
            "Filters, all of which a key must match (at least one; `all: true` alone matches"
            " every active key of the tenant)"
        ),
        "properties": {
            "label_prefix": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "Keys whose label starts with this (case counts; `%` and `_`"
                " are plain characters)",
            },
            "metadata": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 50,
                "additionalProperties": {"type": "string"},
                "description": "Keys whose metadata holds every one of these pairs, exactly",
            },
            "vendor": {"type": "string", "enum": ["stripe", "twilio"]},
            "all": {"type": "boolean", "description": "Every active key, unless narrowed"},
        },
        "additionalProperties": False,
        "anyOf": [
            {"required": ["label_prefix"]},
            {"required": ["metadata"]},
            {"required": ["vendor"]},
            {"required": ["all"], "properties": {"all": {"type": "boolean", "enum": [True]}}},
        ],
    },
    "BulkRevocation": {
        "type": "object",
        "required": ["revoked", "ids"],
        "properties": {
            "revoked": {"type": "integer", "minimum": 0},
            "ids": {"type": "array", "items": _KEY_ID, "description": "Sorted"},
        },
        "additionalProperties": False,
    },
    "RefreshRequest": {
        "type": "object",
        "required": ["expires_in"],
        "properties": {"expires_in": _DURATION},
    },
    "Key": _key_schema(),
    "KeyWithSpend": _key_schema(with_spend=True),
    "IssuedKey": _key_schema(with_token=True),
    "Lease": {
        "type": "object",
        "required": ["id", "object", "expires_at", "max_expires_at", "status"],
        "properties": {
            "id": _KEY_ID,
            "object": {"type": "string", "enum": ["vault_key"]},
            "expires_at": _TIME,
            "max_expires_at": _TIME,
            "status": {"type": "string", "enum": ["active"]},
        },
    },
    "Revocation": {
        "type": "object",
        "required": ["id", "object", "status", "revoked_at"],
        "properties": {
            "id": _KEY_ID,
            "object": {"type": "string", "enum": ["vault_key"]},
            "status": {"type": "string", "enum": ["revoked"]},
            "revoked_at": _TIME,
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "object", "at", "method", "path", "decision", "status"],
        "properties": {
            "id": {"type": "integer"},
            "object": {"type": "string", "enum": ["audit_entry"]},
            "at": _TIME,
            "key_id": {"type": "string", "nullable": True},
            "label": {"type": "string", "nullable": True},
            "vendor": {"type": "string", "nullable": True},
            "method": {"type": "string"},
            "path": {"type": "string"},
            "decision": {"type": "string", "description": "`allowed` or the refusal code"},
            "status": {"type": "integer"},
            "reserved_usd": _DECIMAL,
            "settled_usd": _DECIMAL,
            "upstream_ms": {"type": "number", "nullable": True},
            "vendor_request_id": {"type": "string", "nullable": True},
            "budget": {
                "type": "string",
                "nullable": True,
                "description": "The run budget (`bud_...`) the entry's key draws from",
            },
        },
    },
    "Usage": {
        "type": "object",
        "required": ["id", "key_id", "day", "spent_usd", "reserved_usd", "daily_usd_cap"],
        "properties": {
            "id": {"type": "string", "description": "`<day>:<key id>`, a cursor"},
            "object": {"type": "string", "enum": ["usage"]},
            "key_id": _KEY_ID,
            "label": {"type": "string"},
            "day": {"type": "string", "format": "date"},
            "spent_usd": _DECIMAL,
            "reserved_usd": _DECIMAL,
            "unconfirmed_usd": _DECIMAL,
            "daily_usd_cap": _DECIMAL,
            "budget": {**_BUDGET_ID, "nullable": True},
        },
    },
    "KeyList": _list_of("Key"),
    "AuditList": _list_of("AuditEntry"),
    "UsageList": _list_of("Usage"),
}


def _proxy(vendor: str) -> dict[str, Any]:
    operation = {
        "summary": f"Call {vendor.title()} through the proxy with a vault key",
        "description": (
            f"Forwards `{{{vendor}_path}}` to {vendor.title()} with the real credential, or"
            " answers itself with a refusal. The vendor's own answer is returned unchanged."
        ),
        "security": [{"vaultKey": []}],
        "parameters": [
            {
                "name": f"{vendor}_path",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "The vendor's path, e.g. `v1/payment_intents`",
            }
        ],
        "responses": {
            # The vendor's answers come back unchanged, with any status and content type;
            # keybrake's own refusals are JSON `Error`s and carry a `Keybrake-Error` header.
            "default": {
                "description": (
                    "The vendor's own answer, unchanged; or keybrake's refusal: a JSON"
                    " `Error` (400, 401, 403, 404, 413, 429, 502, 503, 504) with the header"
                    " `Keybrake-Error: <code>`"
                ),
                "headers": {
                    "Keybrake-Error": {
                        "description": "On keybrake's own refusals: the error code",
                        "schema": {"type": "string"},
                    }
                },
            },
        },
    }
    return {
        method: {**operation, "operationId": f"{vendor}_{method}"}
        for method in ("get", "post", "delete")
    }


def _schemas(vendors: list[str]) -> dict[str, Any]:
    """The schemas, with the installed vendors as the values of ``vendor``."""
    schemas = copy.deepcopy(_SCHEMAS)
    for name in ("Key", "KeyWithSpend", "IssuedKey", "IssueRequest"):
        schemas[name]["properties"]["vendor"]["enum"] = vendors
    return schemas


def openapi_document() -> dict[str, Any]:
    vendors = list(installed_vendors())
    admin: list[dict[str, list[str]]] = [{"masterToken": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "keybrake",
            "version": __version__,
            "description": "Issuance API and enforcing proxy for short-lived, capped vault keys.",
        },
        "components": {
            "securitySchemes": {
                "masterToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "KEYBRAKE_TOKEN",
                },
                "vaultKey": {"type": "http", "scheme": "bearer", "description": "vault_key_..."},
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "KEYBRAKE_METRICS_TOKEN (`/metrics` is open without one)",
                },
            },
            "schemas": _schemas(vendors),
        },
        "paths": {
            "/v1/keys": {
                "post": {
                    "operationId": "issue_key",
                    "summary": "Issue a vault key (the token is shown only here)",
                    "security": admin,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("IssueRequest")}},
                    },
                    "responses": {
                        "201": _json(_ref("IssuedKey"), "The new key, with its token"),
                        **_errors(400, 401, 404, 413, 422, 503),
                    },
                },
                "get": {
                    "operationId": "list_keys",
                    "summary": "List keys, newest first",
                    "security": admin,
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["active", "expired", "revoked"]},
                        },
                        _LIMIT,
                        {
                            "name": "starting_after",
                            "in": "query",
                            "required": False,
                            "schema": _KEY_ID,
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("KeyList"), "A page of keys"),
                        **_errors(400, 401, 404, 503),
                    },
                },
            },
            "/v1/keys/revoke": {
                "post": {
                    "operationId": "revoke_keys",
                    "summary": "Revoke every active key matching all the filters given",
                    "description": (
                        "One statement: a key issued while it runs is either revoked by it"
                        " or left active (never half revoked). Only the caller's tenant is"
                        " touched."
                    ),
                    "security": admin,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("RevokeKeysRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("BulkRevocation"), "How many keys, and which"),
                        **_errors(400, 401, 413, 503),
                    },
                }
            },
            "/v1/keys/{key_id}": {
                "parameters": [_KEY_PATH],
                "get": {
                    "operationId": "get_key",
                    "summary": "Describe a key, with today's spend",
                    "security": admin,
                    "responses": {
                        "200": _json(_ref("KeyWithSpend"), "The key"),
                        **_errors(401, 404, 503),
                    },
                },
                "delete": {
                    "operationId": "revoke_key",
                    "summary": "Revoke a key (idempotent)",
                    "security": admin,
                    "responses": {
                        "200": _json(_ref("Revocation"), "Revoked"),
                        **_errors(401, 404, 503),
                    },
                },
            },
            "/v1/keys/{key_id}/refresh": {
                "parameters": [_KEY_PATH],
                "post": {
                    "operationId": "refresh_key",
                    "summary": "Extend a key to now + expires_in, never past max_expires_at",
                    "security": admin,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("RefreshRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("Lease"), "What was granted"),
                        **_errors(400, 401, 404, 409, 413, 503),
                    },
                },
            },
            "/v1/budgets": {
                "post": {
                    "operationId": "create_budget",
                    "summary": "Create a run budget: a daily cap shared by many keys",
                    "security": admin,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("BudgetRequest")}},
                    },
                    "responses": {
                        "201": _json(_ref("Budget"), "The new budget"),
                        **_errors(400, 401, 413, 503),
                    },
                },
            },
            "/v1/budgets/{budget_id}": {
                "parameters": [
                    {"name": "budget_id", "in": "path", "required": True, "schema": _BUDGET_ID}
                ],
                "get": {
                    "operationId": "get_budget",
                    "summary": "Describe a budget, with today's spend",
                    "security": admin,
                    "responses": {
                        "200": _json(_ref("BudgetWithSpend"), "The budget"),
                        **_errors(401, 404, 503),
                    },
                },
                "delete": {
                    "operationId": "revoke_budget",
                    "summary": "Revoke a budget and every key drawing from it (idempotent)",
                    "security": admin,
                    "responses": {
                        "200": _json(_ref("BudgetRevocation"), "Revoked, with its keys"),
                        **_errors(401, 404, 503),
                    },
                },
            },
            "/v1/audit": {
                "get": {
                    "operationId": "list_audit",
                    "summary": "The proxy's decisions, newest first",
                    "security": admin,
                    "parameters": [
                        {"name": "key_id", "in": "query", "required": False, "schema": _KEY_ID},
                        {
                            "name": "decision",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                        _LIMIT,
                        {
                            "name": "starting_after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("AuditList"), "A page of audit entries"),
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/v1/usage": {
                "get": {
                    "operationId": "list_usage",
                    "summary": "Spend per key and UTC day, newest first",
                    "security": admin,
                    "parameters": [
                        {"name": "key_id", "in": "query", "required": False, "schema": _KEY_ID},
                        {
                            "name": "day",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "format": "date"},
                        },
                        _LIMIT,
                        {
                            "name": "starting_after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}:.+$"},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("UsageList"), "A page of usage rows"),
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"type": "string", "enum": ["ok"]}},
                            },
                            "The server and its store answer, and the store takes writes",
                        ),
                        "503": {
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["status", "code", "message", "reason"],
                                    "properties": {
                                        "status": {"type": "string", "enum": ["unhealthy"]},
                                        "code": {"type": "string", "enum": ["store_unavailable"]},
                                        "message": {"type": "string"},
                                        "reason": {"type": "string"},
                                    },
                                },
                                "The store doesn't answer, or refuses writes: settlements"
                                " or audit entries wait to be written (`store_unavailable`)",
                            ),
                            "headers": {
                                "Keybrake-Error": {
                                    "description": "The error code",
                                    "schema": {"type": "string", "enum": ["store_unavailable"]},
                                }
                            },
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics; behind a token when the server has one",
                    "security": [{}, {"metricsToken": []}],
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 503),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "This document")},
                }
            },
            **{f"/{name}/{{{name}_path}}": _proxy(name) for name in vendors},
        },
    }
