"""What a reseller's white-label portal shows a client, and its Web Phone.

Every read here is of the client's own rows at its retail prices: no query
touches the reseller's balance, its markup, its wholesale plan, the
per-reseller charges of a call (`cdr_charges`) or the operator's buy cost.
Call failures caused by the reseller (no wholesale funds, inactive) are
shown as one neutral reason, so a client cannot learn about its reseller's
credit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass

import asyncpg

from engine import accounts
from engine.errors import Conflict, Forbidden
from engine.secrets import new_sip_password

log = logging.getLogger("callgate.accounts")

# Failed-call reasons that describe the reseller rather than the client.
RESELLER_REASONS = {"reseller_no_credit", "reseller_inactive"}
NEUTRAL_REASON = "service_unavailable"
WEBPHONE_SUFFIX = "_web1"

PORTAL_SIP = """
SELECT s.id, s.name, s.kind, s.status, s.callerid, host(s.ip) AS ip, s.port,
       p.name AS parent_name, s.created_at
FROM sip_accounts s
LEFT JOIN sip_accounts p ON p.id = s.parent_sip_id
WHERE s.account_id = $1 AND (s.kind IN ('main', 'normal') OR $2)
ORDER BY s.kind <> 'main', s.kind, s.id
"""

COUNT_SIP = """
SELECT count(*) FROM sip_accounts
WHERE account_id = $1 AND kind IN ('main', 'normal')
"""

FAILED_PAGE = """
SELECT id, uniqueid, created_at, sip_name, number, destination, dialstatus,
       reason, hangup_cause
FROM failed_cdrs
WHERE account_id = $1
ORDER BY id DESC
LIMIT $2 OFFSET $3
"""

FAILED_COUNT = """
SELECT count(*) FROM failed_cdrs WHERE account_id = $1
"""

# Only the current row of each prefix, and only when the client's plan is
# one of its reseller's retail plans: a client the operator put on another
# plan shows no rates rather than someone's wholesale prices.
RETAIL_RATES = """
SELECT DISTINCT ON (r.prefix)
       r.prefix, r.destination, r.rate, r.connect_fee, r.initblock, r.billingblock
FROM accounts a
JOIN plans p ON p.id = a.plan_id AND p.owner_id = a.parent_id
JOIN rates r ON r.plan_id = p.id AND r.valid_from <= now()
WHERE a.id = $1
ORDER BY r.prefix, r.valid_from DESC
LIMIT $2 OFFSET $3
"""

RETAIL_RATE_COUNT = """
SELECT count(DISTINCT r.prefix)
FROM accounts a
JOIN plans p ON p.id = a.plan_id AND p.owner_id = a.parent_id
JOIN rates r ON r.plan_id = p.id AND r.valid_from <= now()
WHERE a.id = $1
"""

FIND_WEBPHONE = """
SELECT id, name, password, status, callerid
FROM sip_accounts
WHERE account_id = $1 AND name = $2 AND kind = 'webrtc'
"""

INSERT_WEBPHONE = """
INSERT INTO sip_accounts (account_id, name, kind, password, callerid)
VALUES ($1, $2, 'webrtc', $3, $4)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, password, status, callerid
"""

ENABLE_WEBPHONE = """
UPDATE sip_accounts
SET status = 'active', updated_at = now()
WHERE id = $1
RETURNING id, name, password, status, callerid
"""


@dataclass(frozen=True)
class WebphoneAccount:
    """The `<login>_web1` WebRTC service account a Web Phone registers with."""

    name: str
    password: str
    callerid: str | None
    created: bool


def client_reason(reason: str) -> str:
    """Return the failed-call reason a client may see."""
    return NEUTRAL_REASON if reason in RESELLER_REASONS else reason


async def count_sip_accounts(connection: asyncpg.Connection, client_id: int) -> int:
    return int(await connection.fetchval(COUNT_SIP, client_id))


async def list_sip_accounts(
    connection: asyncpg.Connection, client_id: int, include_service: bool
) -> list[asyncpg.Record]:
    """Return the client's SIP accounts; service accounts only when asked."""
    return list(await connection.fetch(PORTAL_SIP, client_id, include_service))


async def failed_calls_page(
    connection: asyncpg.Connection, client_id: int, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    rows = await connection.fetch(FAILED_PAGE, client_id, limit, offset)
    total = await connection.fetchval(FAILED_COUNT, client_id)
    return list(rows), int(total)


async def retail_rates_page(
    connection: asyncpg.Connection, client_id: int, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """Return the current retail rates of the client's plan, by prefix."""
    rows = await connection.fetch(RETAIL_RATES, client_id, limit, offset)
    total = await connection.fetchval(RETAIL_RATE_COUNT, client_id)
    return list(rows), int(total)


async def ensure_webphone_account(
    connection: asyncpg.Connection, client: asyncpg.Record
) -> WebphoneAccount:
    """Return the client's `<login>_web1` account, creating or re-enabling it.

    Asterisk reads it through ps_endpoints as a WebRTC endpoint (transport
    transport-wss); calls from it are billed to the client like any other.
    Two requests at once create it once: the loser of the insert reads the
    winner's row.
    """
    if client["status"] != "active":
        raise Forbidden(
            f"client {client['login']!r} is {client['status']}; activate it first"
        )
    name = client["login"] + WEBPHONE_SUFFIX
    row = await connection.fetchrow(FIND_WEBPHONE, client["id"], name)
    created = False
    if row is None:
        if not await accounts.claim_name(connection, name, client["id"]):
            owner = await connection.fetchval(
                "SELECT account_id FROM names WHERE name = $1", name
            )
            if owner != client["id"]:
                raise Conflict(f"SIP name {name!r} is taken")
        row = await connection.fetchrow(
            INSERT_WEBPHONE, client["id"], name, new_sip_password(), client["login"]
        )
        if row is None:
            row = await connection.fetchrow(FIND_WEBPHONE, client["id"], name)
        else:
            created = True
            log.info("Web Phone account created account=%s sip=%s", client["id"], name)
    if row is None:
        raise Conflict(f"SIP name {name!r} is taken")
    if row["status"] != "active":
        row = await connection.fetchrow(ENABLE_WEBPHONE, row["id"])
        log.info("Web Phone account enabled account=%s sip=%s", client["id"], name)
    return WebphoneAccount(row["name"], row["password"], row["callerid"], created)


def janus_token(secret: str, plugins: str, expiry: int) -> str:
    """Return a Janus token_auth_secret token valid until expiry (Unix seconds).

    The format is Janus's signed token: `<expiry>,janus,<plugins>:<signature>`,
    where signature is the base64 of HMAC-SHA1(secret, the part before the
    colon) and plugins is a comma-separated list such as janus.plugin.sip.
    """
    data = f"{expiry},janus,{plugins}"
    digest = hmac.new(secret.encode(), data.encode(), hashlib.sha1).digest()
    return f"{data}:{base64.b64encode(digest).decode()}"
