"""SIP accounts and IP authorizations of a client: what Asterisk reads.

Asterisk reads the ps_* realtime views over `sip_accounts`, so every change
here is the provisioning itself, committed in the caller's transaction.
Service accounts (`<name>_ipaN`, `<name>_webN`) are never listed, changed
or deleted as SIP accounts: to these functions they do not exist.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

import asyncpg

from engine.accounts import claim_name, next_sip_name
from engine.errors import Conflict, Forbidden, InvalidInput, NotFound
from engine.secrets import PASSWORD_RULES, new_sip_password, password_is_strong

log = logging.getLogger("callgate.provisioning")

# Printable ASCII without space, quotes, backslash or ';', so the password
# survives Asterisk configuration files and SIP digest input unchanged.
SIP_PASSWORD_PATTERN = re.compile(r"^[A-Za-z0-9!#$%&()*+,\-./:<=>?@\[\]^_{|}~]{10,80}$")
SIP_PASSWORD_RULES = (
    f"{PASSWORD_RULES}, at most 80 characters, using letters, digits and "
    "!#$%&()*+,-./:<=>?@[]^_{|}~"
)
MAX_SIP_ACCOUNTS = 1000
MAX_IP_AUTHORIZATIONS = 100

_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)

LIST_SIP = """
SELECT id, name, kind, password, status, callerid, created_at
FROM sip_accounts
WHERE account_id = $1 AND kind IN ('main', 'normal')
ORDER BY kind = 'normal', id
"""

FIND_OWN_SIP = """
SELECT id, name, kind, password, status, callerid, created_at
FROM sip_accounts
WHERE account_id = $1 AND name = $2 AND kind IN ('main', 'normal')
FOR UPDATE
"""

COUNT_SIP = """
SELECT count(*) FROM sip_accounts WHERE account_id = $1 AND kind = 'normal'
"""

INSERT_SIP = """
INSERT INTO sip_accounts (account_id, name, kind, password, callerid)
VALUES ($1, $2, 'normal', $3, $2)
RETURNING id, name, kind, password, status, callerid, created_at
"""

UPDATE_SIP_PASSWORD = """
UPDATE sip_accounts
SET password = $2, updated_at = now()
WHERE id = $1
RETURNING id, name, kind, password, status, callerid, created_at
"""

LIST_CHILDREN = """
SELECT name FROM sip_accounts WHERE parent_sip_id = $1
"""

DELETE_SIP = """
DELETE FROM sip_accounts
WHERE id = $1
"""

RELEASE_NAME = """
DELETE FROM names
WHERE name = $1 AND account_id = $2
"""

# Registrations Asterisk stored for endpoints that no longer exist.
DELETE_CONTACTS = """
DELETE FROM ps_contacts
WHERE endpoint = ANY($1::text[])
"""

LIST_IP_AUTH = """
SELECT i.id, p.name AS sip_login, i.name AS peer_name, host(i.ip) AS ip, i.port,
       i.status
FROM sip_accounts i
JOIN sip_accounts p ON p.id = i.parent_sip_id
WHERE i.account_id = $1 AND i.kind = 'ipauth'
ORDER BY i.id
"""

FIND_OWN_IP_AUTH = """
SELECT i.id, p.name AS sip_login, i.name AS peer_name, host(i.ip) AS ip, i.port,
       i.status
FROM sip_accounts i
JOIN sip_accounts p ON p.id = i.parent_sip_id
WHERE i.account_id = $1 AND i.id = $2 AND i.kind = 'ipauth'
FOR UPDATE OF i
"""

COUNT_IP_AUTH = """
SELECT count(*) FROM sip_accounts WHERE account_id = $1 AND kind = 'ipauth'
"""

ACTIVE_IP_TAKEN = """
SELECT true FROM sip_accounts
WHERE kind = 'ipauth' AND status = 'active' AND ip = $1::inet AND port = $2
    AND id <> $3
"""

# The smallest N for which <sip_login>_ipa<N> is free.
NEXT_IP_AUTH_NUMBER = """
SELECT n FROM generate_series(1, $2::integer) AS n
WHERE NOT EXISTS (SELECT 1 FROM sip_accounts WHERE name = $1 || '_ipa' || n)
ORDER BY n
LIMIT 1
"""

INSERT_IP_AUTH = """
INSERT INTO sip_accounts (account_id, name, kind, parent_sip_id, ip, port, context)
SELECT $1, $2, 'ipauth', p.id, $3::inet, $4, p.context
FROM sip_accounts p
WHERE p.id = $5
RETURNING id
"""

SET_IP_AUTH_STATUS = """
UPDATE sip_accounts
SET status = $2, updated_at = now()
WHERE id = $1
"""


def check_sip_password(value: str) -> str:
    """Return value if it is an acceptable SIP password, else raise InvalidInput."""
    if not SIP_PASSWORD_PATTERN.match(value) or not password_is_strong(value):
        raise InvalidInput("password", f"<{len(value)} characters>", SIP_PASSWORD_RULES)
    return value


def check_ip(value: str, *, allow_private: bool) -> str:
    """Return the canonical form of a public IP address for IP authorization.

    Loopback, RFC 1918, shared (100.64.0.0/10), link-local and, for IPv6,
    unique-local addresses are accepted only with allow_private; multicast
    and unspecified addresses never. Documentation ranges such as
    203.0.113.0/24 are accepted. An IPv4-mapped IPv6 address is judged and
    stored as its IPv4 address.
    """
    expected = "a public static IPv4 or IPv6 address such as 203.0.113.10"
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError as exc:
        raise InvalidInput("ip", value, expected) from exc
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise InvalidInput("ip", value, f"{expected}, without a zone index")
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    if address.is_multicast or address.is_unspecified:
        raise InvalidInput("ip", value, expected)
    if isinstance(address, ipaddress.IPv4Address):
        private = (
            address.is_loopback
            or address.is_link_local
            or any(address in network for network in _PRIVATE_V4)
        )
    else:
        private = (
            address.is_loopback
            or address.is_link_local
            or address in ipaddress.IPv6Network("fc00::/7")
        )
    if private and not allow_private:
        raise InvalidInput(
            "ip", value, f"{expected}; private and loopback ranges are rejected"
        )
    return str(address)


def check_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput("port", value, "a port number from 1 to 65535")
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidInput("port", value, "a port number from 1 to 65535")
    return int(text)


async def list_sip_accounts(
    connection: asyncpg.Connection, account_id: int
) -> list[asyncpg.Record]:
    """Return the main and normal SIP accounts of an account, main first."""
    return list(await connection.fetch(LIST_SIP, account_id))


async def find_own_sip(
    connection: asyncpg.Connection, account_id: int, name: str
) -> asyncpg.Record:
    """Lock and return the caller's main or normal SIP account called name."""
    row = await connection.fetchrow(FIND_OWN_SIP, account_id, name)
    if row is None:
        raise NotFound(f"SIP account {name!r} not found among your SIP accounts")
    return row


async def create_sip_account(
    connection: asyncpg.Connection, account_id: int, login: str, password: str | None
) -> asyncpg.Record:
    """Create the next additional SIP account of an account, named after its login."""
    if password is not None:
        check_sip_password(password)
    if await connection.fetchval(COUNT_SIP, account_id) >= MAX_SIP_ACCOUNTS:
        raise Conflict(f"an account has at most {MAX_SIP_ACCOUNTS} SIP accounts")
    # Another transaction may claim the same free name first; take the next.
    for _ in range(20):
        name = await next_sip_name(connection, login)
        if await claim_name(connection, name, account_id):
            break
    else:
        raise Conflict("could not claim a free SIP account name; try again")
    row = await connection.fetchrow(
        INSERT_SIP, account_id, name, password or new_sip_password()
    )
    log.info("SIP account created account=%s sip=%s id=%s", account_id, name, row["id"])
    return row


async def update_sip_password(
    connection: asyncpg.Connection, account_id: int, name: str, password: str
) -> asyncpg.Record:
    check_sip_password(password)
    sip = await find_own_sip(connection, account_id, name)
    row = await connection.fetchrow(UPDATE_SIP_PASSWORD, sip["id"], password)
    log.info("SIP password changed account=%s sip=%s", account_id, name)
    return row


async def delete_sip_account(
    connection: asyncpg.Connection, account_id: int, name: str
) -> None:
    """Delete an additional SIP account with its IP authorizations.

    The main SIP account, named after the login, raises Forbidden.
    """
    sip = await find_own_sip(connection, account_id, name)
    if sip["kind"] == "main":
        raise Forbidden(
            f"SIP account {name!r} is your main SIP account and cannot be deleted"
        )
    children = await connection.fetch(LIST_CHILDREN, sip["id"])
    await connection.execute(DELETE_SIP, sip["id"])
    await connection.execute(RELEASE_NAME, name, account_id)
    endpoints = [name, *(child["name"] for child in children)]
    await connection.execute(DELETE_CONTACTS, endpoints)
    log.info(
        "SIP account deleted account=%s sip=%s ip_authorizations=%s",
        account_id,
        name,
        len(children),
    )


async def list_ip_authorizations(
    connection: asyncpg.Connection, account_id: int
) -> list[asyncpg.Record]:
    return list(await connection.fetch(LIST_IP_AUTH, account_id))


async def _check_ip_free(
    connection: asyncpg.Connection, ip: str, port: int, own_id: int = 0
) -> None:
    # The unique index sip_accounts_active_ip enforces this too; checking
    # first gives the usual 409 without relying on the violation.
    if await connection.fetchval(ACTIVE_IP_TAKEN, ip, port, own_id):
        raise Conflict(
            f"IP {ip} port {port} is already in use by an active IP authorization"
        )


async def create_ip_authorization(
    connection: asyncpg.Connection,
    account_id: int,
    sip_login: str,
    ip: str,
    port: int,
) -> asyncpg.Record:
    """Create `<sip_login>_ipa<N>`: an endpoint identified by IP and port."""
    sip = await find_own_sip(connection, account_id, sip_login)
    if await connection.fetchval(COUNT_IP_AUTH, account_id) >= MAX_IP_AUTHORIZATIONS:
        raise Conflict(
            f"an account has at most {MAX_IP_AUTHORIZATIONS} IP authorizations"
        )
    await _check_ip_free(connection, ip, port)
    number = await connection.fetchval(
        NEXT_IP_AUTH_NUMBER, sip_login, MAX_IP_AUTHORIZATIONS + 1
    )
    peer_name = f"{sip_login}_ipa{number}"
    try:
        async with connection.transaction():
            ip_auth_id = await connection.fetchval(
                INSERT_IP_AUTH, account_id, peer_name, ip, port, sip["id"]
            )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(
            f"IP {ip} port {port} is already in use by an active IP authorization"
        ) from exc
    log.info(
        "IP authorization created account=%s sip=%s peer=%s ip=%s port=%s",
        account_id,
        sip_login,
        peer_name,
        ip,
        port,
    )
    return await find_own_ip_authorization(connection, account_id, ip_auth_id)


async def find_own_ip_authorization(
    connection: asyncpg.Connection, account_id: int, ip_auth_id: int
) -> asyncpg.Record:
    row = await connection.fetchrow(FIND_OWN_IP_AUTH, account_id, ip_auth_id)
    if row is None:
        raise NotFound(
            f"IP authorization {ip_auth_id} not found among your IP authorizations"
        )
    return row


async def set_ip_authorization_status(
    connection: asyncpg.Connection, account_id: int, ip_auth_id: int, active: bool
) -> asyncpg.Record:
    """Enable or disable an IP authorization; enabling re-checks the IP and port."""
    row = await find_own_ip_authorization(connection, account_id, ip_auth_id)
    status = "active" if active else "disabled"
    if active and row["status"] != "active":
        await _check_ip_free(connection, row["ip"], row["port"], ip_auth_id)
    try:
        async with connection.transaction():
            await connection.execute(SET_IP_AUTH_STATUS, ip_auth_id, status)
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(
            f"IP {row['ip']} port {row['port']} is already in use by an active "
            "IP authorization"
        ) from exc
    log.info(
        "IP authorization %s account=%s peer=%s",
        "enabled" if active else "disabled",
        account_id,
        row["peer_name"],
    )
    return await find_own_ip_authorization(connection, account_id, ip_auth_id)


async def delete_ip_authorization(
    connection: asyncpg.Connection, account_id: int, ip_auth_id: int
) -> asyncpg.Record:
    row = await find_own_ip_authorization(connection, account_id, ip_auth_id)
    await connection.execute(DELETE_SIP, ip_auth_id)
    await connection.execute(DELETE_CONTACTS, [row["peer_name"]])
    log.info(
        "IP authorization deleted account=%s peer=%s", account_id, row["peer_name"]
    )
    return row
