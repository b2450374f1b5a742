"""Authorize, reserve and settle calls across the client and its resellers.

authorize rates the call on every account of the chain: the client at its
retail plan, each reseller above at its own. Each must pay the connect fee
plus the initial block. The smallest affordable time is the max duration, and
it is reserved in one transaction under row locks, so several processes on
one database never reserve more than an account can pay. settle debits each
account once, in one transaction keyed on Asterisk's unique id, so a repeated
settle is a no-op.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

import asyncpg

from engine import rating
from engine.db import Database
from engine.errors import InvalidInput
from engine.rating import Rate, Tariff
from engine.settings import Settings

log = logging.getLogger("callgate.calls")

UNIQUEID_NODE = re.compile(r"^(?P<node>.+)-(?P<epoch>[0-9]+\.[0-9]+)$")


class Reason(StrEnum):
    """The reason a call was rejected, also the value of CALLGATE_REASON."""

    UNKNOWN_ENDPOINT = "unknown_endpoint"
    ACCOUNT_INACTIVE = "account_inactive"
    RESELLER_INACTIVE = "reseller_inactive"
    INVALID_NUMBER = "invalid_number"
    NO_RATE = "no_rate"
    NO_CREDIT = "no_credit"
    RESELLER_NO_CREDIT = "reseller_no_credit"
    NO_ROUTE = "no_route"
    CONCURRENT_LIMIT = "concurrent_limit"
    DUPLICATE_CALL = "duplicate_call"


# Q.850 cause for each reason: 21 reaches a SIP caller as 403, 1 as 404 and
# 34 as 503 (observed on Asterisk 22.10).
CAUSES: dict[Reason, int] = {
    Reason.UNKNOWN_ENDPOINT: 21,
    Reason.ACCOUNT_INACTIVE: 21,
    Reason.RESELLER_INACTIVE: 21,
    Reason.INVALID_NUMBER: 28,
    Reason.NO_RATE: 1,
    Reason.NO_CREDIT: 21,
    Reason.RESELLER_NO_CREDIT: 21,
    Reason.NO_ROUTE: 34,
    Reason.CONCURRENT_LIMIT: 34,
    Reason.DUPLICATE_CALL: 21,
}
ERROR_CAUSE = 41

# Failed-CDR reasons for the Dial outcomes that are not an answer.
DIAL_REASONS = {
    "BUSY": "busy",
    "NOANSWER": "no_answer",
    "CANCEL": "cancel",
    "CONGESTION": "congestion",
    "CHANUNAVAIL": "unavailable",
    "DONTCALL": "dont_call",
    "TORTURE": "torture",
    "INVALIDARGS": "invalid_dial_arguments",
}


class Rejected(Exception):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else str(reason))


@dataclass(frozen=True)
class AuthorizeRequest:
    uniqueid: str
    channel: str
    extension: str


@dataclass(frozen=True)
class Authorization:
    status: str  # OK, REJECTED or ERROR
    reason: str
    cause: int | None = None
    max_seconds: int = 0
    dial_timeout: int = 0
    routes: tuple[str, ...] = ()
    callerid: str | None = None
    reserve_mode: str | None = None


@dataclass(frozen=True)
class SettleRequest:
    uniqueid: str
    dialstatus: str | None
    answered_seconds: int | None
    hangup_cause: int | None = None
    route_index: int | None = None
    source: str = "agi"
    # Overrides the failed-CDR reason taken from dialstatus.
    reason: str | None = None


@dataclass(frozen=True)
class SettleResult:
    outcome: str  # settled, failed, already_settled, unauthorized
    cost: Decimal = Decimal(0)
    billed_seconds: int = 0


@dataclass
class ChainAccount:
    id: int
    depth: int
    kind: str
    status: str
    available: Decimal
    max_concurrent: int
    plan_id: int
    intl_prefix: str
    tariff: Tariff
    rate: Rate | None = None
    affordable: int | None = None
    reservation: Decimal = Decimal(0)


@dataclass(frozen=True)
class Route:
    trunk_id: int
    name: str
    dialstring: str
    prefix: str
    priority: int
    buy_rate: Decimal | None = None


@dataclass
class _Call:
    request: AuthorizeRequest
    node: str
    sip: asyncpg.Record
    chain: list[ChainAccount] = field(default_factory=list)
    number: str = ""


def node_of(uniqueid: str) -> str:
    """Return the Asterisk node (systemname) a unique id comes from, '' if none."""
    match = UNIQUEID_NODE.match(uniqueid)
    return match.group("node") if match else ""


def endpoint_of(channel: str) -> str | None:
    """Return the PJSIP endpoint of a channel name PJSIP/<endpoint>-<sequence>."""
    tech, sep, rest = channel.partition("/")
    if not sep or tech.upper() != "PJSIP":
        return None
    endpoint, sep, sequence = rest.rpartition("-")
    if not sep or not endpoint or not sequence:
        return None
    return endpoint


FIND_CALLER = """
SELECT s.id AS sip_id, s.name AS sip_name, s.status AS sip_status,
       coalesce(owner.callerid, s.callerid) AS sip_callerid,
       a.id AS account_id, a.ancestors, a.tenant_id,
       (SELECT c.cid FROM callerids c WHERE c.account_id = a.id AND c.active)
           AS active_callerid
FROM sip_accounts s
LEFT JOIN sip_accounts owner ON owner.id = s.parent_sip_id
JOIN accounts a ON a.id = s.account_id
WHERE s.name = $1
"""

# Money locks on accounts are FOR NO KEY UPDATE: they serialize balance
# changes in id order but do not wait for the KEY SHARE locks that inserts
# referencing an account (CDR charges, ledger entries) take.
LOCK_CHAIN = """
SELECT a.id, a.kind, a.status, a.billing, a.balance, a.credit_limit, a.reserved,
       a.max_concurrent, a.plan_id, p.intl_prefix, p.free_seconds, p.decimals,
       p.rounding, p.route_order, p.tariff_limit
FROM accounts a
LEFT JOIN plans p ON p.id = a.plan_id
WHERE a.id = ANY($1::bigint[])
ORDER BY a.id
FOR NO KEY UPDATE OF a
"""

READ_CHAIN = """
SELECT a.id, a.kind, a.status, a.billing, a.balance, a.credit_limit, a.reserved,
       a.max_concurrent, a.plan_id, p.intl_prefix, p.free_seconds, p.decimals,
       p.rounding, p.route_order, p.tariff_limit
FROM accounts a
LEFT JOIN plans p ON p.id = a.plan_id
WHERE a.id = ANY($1::bigint[])
"""

COUNT_LIVE = """
SELECT count(*) FROM sessions WHERE account_id = $1 AND state = 'live'
"""

FIND_RATES = """
SELECT DISTINCT ON (r.plan_id)
       r.plan_id, r.prefix, r.destination, r.rate, r.initblock, r.billingblock,
       r.connect_fee
FROM rates r
JOIN unnest($1::bigint[], $2::text[]) AS wanted (plan_id, prefix)
  ON r.plan_id = wanted.plan_id AND r.prefix = wanted.prefix
WHERE r.valid_from <= now()
ORDER BY r.plan_id, length(r.prefix) DESC, r.valid_from DESC
"""

FIND_ROUTES = """
SELECT t.id, t.name, t.dialstring, t.cost_plan_id, r.prefix, r.priority
FROM routes r
JOIN trunks t ON t.id = r.trunk_id
WHERE r.plan_id = $1 AND t.status = 'active'
  AND (r.prefix = '' OR r.prefix = ANY($2::text[]))
ORDER BY length(r.prefix) DESC, r.priority, t.id
"""

# One statement: the session row (whose primary key rejects a duplicate id),
# the accounts' reserved amounts and the reservation rows. Nothing is written
# unless the session row is new.
STORE_SESSION = """
WITH new_session AS (
    INSERT INTO sessions (
        uniqueid, node, tenant_id, state, account_id, sip_account_id, sip_name,
        channel, number, destination, prefix, callerid, max_seconds,
        reserve_mode, funded_seconds, trunk_ids
    )
    VALUES ($1, $2, $3, 'live', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
            $14, $15)
    ON CONFLICT (uniqueid) DO NOTHING
    RETURNING uniqueid
),
held AS (
    UPDATE accounts a
    SET reserved = a.reserved + x.amount
    FROM unnest($16::bigint[], $27::numeric[]) AS x (id, amount)
    WHERE a.id = x.id AND EXISTS (SELECT 1 FROM new_session)
    RETURNING a.id
)
INSERT INTO reservations (
    uniqueid, account_id, depth, plan_id, prefix, rate, initblock, billingblock,
    connect_fee, free_seconds, decimals, rounding, amount
)
SELECT (SELECT uniqueid FROM new_session), x.*
FROM unnest(
    $16::bigint[], $17::smallint[], $18::bigint[], $19::text[], $20::numeric[],
    $21::integer[], $22::integer[], $23::numeric[], $24::integer[],
    $25::smallint[], $26::text[], $27::numeric[]
) AS x
WHERE EXISTS (SELECT 1 FROM new_session)
RETURNING account_id
"""

INSERT_REJECTED = """
INSERT INTO sessions (
    uniqueid, node, tenant_id, state, account_id, sip_account_id, sip_name,
    channel, number, settled_at, settle_source
)
VALUES ($1, $2, $3, 'rejected', $4, $5, $6, $7, $8, now(), 'authorize')
ON CONFLICT (uniqueid) DO NOTHING
RETURNING true
"""

INSERT_FAILED_CDR = """
INSERT INTO failed_cdrs (
    uniqueid, node, tenant_id, account_id, sip_account_id, sip_name, number,
    destination, dialstatus, reason, hangup_cause, source
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (uniqueid) DO NOTHING
"""

CLOSE_SESSION = """
UPDATE sessions
SET state = 'settled', settled_at = now(), settle_source = $2
WHERE uniqueid = $1 AND state = 'live'
RETURNING *
"""

# Reads a session's reservations and locks their accounts in id order. That is
# the order authorize locks them in, so the two cannot deadlock on them.
LOCK_RESERVATIONS = """
SELECT r.*
FROM reservations r
JOIN accounts a ON a.id = r.account_id
WHERE r.uniqueid = $1
ORDER BY a.id
FOR NO KEY UPDATE OF a
"""

# Debits each account its cost, releases its reservation, appends the ledger
# entries and deletes the reservations, in one statement.
CHARGE = """
WITH x AS (
    SELECT * FROM unnest($2::bigint[], $3::numeric[], $4::numeric[])
        AS x (id, cost, amount)
),
changed AS (
    UPDATE accounts a
    SET balance = a.balance - x.cost,
        reserved = greatest(a.reserved - x.amount, 0),
        updated_at = now()
    FROM x
    WHERE a.id = x.id
    RETURNING a.id, a.balance, a.tenant_id, x.cost
),
entries AS (
    INSERT INTO ledger (account_id, tenant_id, amount, balance_after, kind, reference)
    SELECT id, tenant_id, -cost, balance, 'call', $1
    FROM changed
    WHERE cost <> 0
),
gone AS (
    DELETE FROM reservations WHERE uniqueid = $1
)
SELECT count(*) FROM changed
"""

INSERT_CDR = """
WITH cdr AS (
    INSERT INTO cdrs (
        uniqueid, node, tenant_id, account_id, sip_account_id, sip_name, number,
        destination, prefix, callerid, trunk_id, trunk_name, started_at,
        answered_seconds, billed_seconds, cost, buy_cost, disposition,
        hangup_cause, source, unresolved
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
            (SELECT name FROM trunks WHERE id = $11), $12, $13, $14, $15, NULL,
            'ANSWERED', $16, $17, $18)
    RETURNING id
)
INSERT INTO cdr_charges (
    cdr_id, account_id, depth, plan_id, rate, connect_fee, billed_seconds, cost
)
SELECT (SELECT id FROM cdr), x.*
FROM unnest(
    $19::bigint[], $20::smallint[], $21::bigint[], $22::numeric[], $23::numeric[],
    $24::integer[], $25::numeric[]
) AS x
"""

EXPIRED_SESSIONS = """
SELECT uniqueid FROM sessions
WHERE state = 'live'
  AND created_at + make_interval(secs => max_seconds + $1) < now()
ORDER BY created_at
LIMIT 500
"""

ASTERISK_CDR = """
SELECT disposition, billsec FROM cdr
WHERE uniqueid = $1
ORDER BY (disposition = 'ANSWERED') DESC, billsec DESC NULLS LAST
LIMIT 1
"""


def _rejection(reason: Reason, detail: str = "") -> Authorization:
    return Authorization("REJECTED", str(reason), CAUSES[reason])


class CallService:
    """The call path: authorize, settle and expiry, on one database."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        interval_mode: Callable[[str], bool] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        # Returns whether the node's AMI link is up, so authorize may reserve
        # only the first block and leave the rest to the debit loop.
        self.interval_mode = interval_mode or (lambda node: False)
        self.unresolved_total = 0

    async def authorize(self, request: AuthorizeRequest) -> Authorization:
        """Decide whether a call may go ahead; reserve its money if so."""
        node = node_of(request.uniqueid)
        endpoint = endpoint_of(request.channel)
        if endpoint is None:
            await self._record_rejection(request, node, None, Reason.UNKNOWN_ENDPOINT)
            return _rejection(Reason.UNKNOWN_ENDPOINT)
        async with self.db.timed("authorize"), self.db.pool.acquire() as connection:
            sip = await connection.fetchrow(FIND_CALLER, endpoint)
            if sip is None or sip["sip_status"] != "active":
                await self._record_rejection(
                    request, node, sip, Reason.UNKNOWN_ENDPOINT, connection
                )
                return _rejection(Reason.UNKNOWN_ENDPOINT)
            call = _Call(request, node, sip)
            try:
                return await self._authorize_locked(connection, call)
            except Rejected as rejected:
                if rejected.reason is not Reason.DUPLICATE_CALL:
                    await self._record_rejection(
                        request, node, sip, rejected.reason, connection, call.number
                    )
                return _rejection(rejected.reason)

    async def _authorize_locked(
        self, connection: asyncpg.Connection, call: _Call
    ) -> Authorization:
        """Rate and route without locks, then lock the chain only to reserve.

        Rating and routing read plans, which need no row lock on the accounts.
        Taking the locks last keeps them held for two statements, so calls of
        clients under one reseller queue behind each other only briefly.
        """
        chain_ids = [call.sip["account_id"], *call.sip["ancestors"]]
        rows = {row["id"]: row for row in await connection.fetch(READ_CHAIN, chain_ids)}
        self._load_chain(call, chain_ids, rows)
        client = call.chain[0]
        try:
            call.number = rating.normalize(call.request.extension, client.intl_prefix)
        except InvalidInput as exc:
            raise Rejected(Reason.INVALID_NUMBER, str(exc)) from exc
        await self._rate_chain(connection, call)
        routes = await self._routes(connection, rows[client.id], call.number)
        if not routes:
            raise Rejected(Reason.NO_ROUTE)

        async with connection.transaction():
            locked = {
                row["id"]: row for row in await connection.fetch(LOCK_CHAIN, chain_ids)
            }
            rated = [(account.plan_id, account.rate) for account in call.chain]
            self._load_chain(call, chain_ids, locked)
            if [account.plan_id for account in call.chain] != [p for p, _ in rated]:
                # A plan changed between rating and locking: rate again.
                await self._rate_chain(connection, call)
            else:
                for account, (_, rate) in zip(call.chain, rated, strict=True):
                    account.rate = rate
            return await self._reserve(connection, call, routes)

    def _load_chain(
        self, call: _Call, chain_ids: list[int], rows: dict[int, asyncpg.Record]
    ) -> None:
        call.chain = [
            self._chain_account(rows[id_], depth) for depth, id_ in enumerate(chain_ids)
        ]
        for account in call.chain:
            if account.status != "active":
                raise Rejected(
                    Reason.ACCOUNT_INACTIVE
                    if account.depth == 0
                    else Reason.RESELLER_INACTIVE
                )

    async def _reserve(
        self, connection: asyncpg.Connection, call: _Call, routes: list[Route]
    ) -> Authorization:
        """Check limits and funds on the locked chain; store the reservations."""
        client = call.chain[0]
        if client.max_concurrent:
            live = await connection.fetchval(COUNT_LIVE, client.id)
            if live >= client.max_concurrent:
                raise Rejected(Reason.CONCURRENT_LIMIT, f"{live} live calls")

        cap = self.settings.max_call_duration
        for account in call.chain:
            assert account.rate is not None
            account.affordable = rating.affordable_seconds(
                account.available, account.rate, account.tariff, cap
            )
            if account.affordable is None:
                raise Rejected(
                    Reason.NO_CREDIT
                    if account.depth == 0
                    else Reason.RESELLER_NO_CREDIT
                )
        max_seconds = min(account.affordable or 0 for account in call.chain)

        interval = self.interval_mode(call.node)
        for account in call.chain:
            assert account.rate is not None
            funded = max_seconds
            if interval:
                funded = min(rating.minimum_block(account.rate), max_seconds)
            account.reservation = rating.grid_cost(funded, account.rate, account.tariff)

        callerid = call.sip["active_callerid"]
        await self._store_session(
            connection, call, max_seconds, interval, routes, callerid
        )
        return Authorization(
            "OK",
            "ok",
            None,
            max_seconds,
            self.settings.ring_timeout,
            tuple(
                route.dialstring.replace("{number}", call.number) for route in routes
            ),
            callerid,
            "interval" if interval else "full",
        )

    @staticmethod
    def _chain_account(row: asyncpg.Record, depth: int) -> ChainAccount:
        credit = row["credit_limit"] if row["billing"] == "postpaid" else Decimal(0)
        tariff = Tariff(
            row["free_seconds"] or 0, row["decimals"] or 6, row["rounding"] or "half-up"
        )
        return ChainAccount(
            id=row["id"],
            depth=depth,
            kind=row["kind"],
            status=row["status"],
            available=row["balance"] + credit - row["reserved"],
            max_concurrent=row["max_concurrent"],
            plan_id=row["plan_id"] or 0,
            intl_prefix=row["intl_prefix"] or "00",
            tariff=tariff,
        )

    async def _rate_chain(self, connection: asyncpg.Connection, call: _Call) -> None:
        """Find each account's rate: the longest prefix in its own plan."""
        plan_ids: list[int] = []
        prefixes: list[str] = []
        for account in call.chain:
            try:
                digits = rating.normalize(call.request.extension, account.intl_prefix)
            except InvalidInput as exc:
                raise Rejected(Reason.INVALID_NUMBER, str(exc)) from exc
            for prefix in rating.candidate_prefixes(digits):
                plan_ids.append(account.plan_id)
                prefixes.append(prefix)
        found = {
            row["plan_id"]: row
            for row in await connection.fetch(FIND_RATES, plan_ids, prefixes)
        }
        for account in call.chain:
            row = found.get(account.plan_id)
            if row is None:
                raise Rejected(Reason.NO_RATE, f"plan {account.plan_id}")
            account.rate = Rate(
                row["prefix"],
                row["destination"],
                row["rate"],
                row["initblock"],
                row["billingblock"],
                row["connect_fee"],
            )

    async def _routes(
        self, connection: asyncpg.Connection, plan: asyncpg.Record, number: str
    ) -> list[Route]:
        """Return the trunks to try, in the plan's route order, at most tariff_limit."""
        candidates = rating.candidate_prefixes(number)
        rows = await connection.fetch(FIND_ROUTES, plan["plan_id"], candidates)
        routes: list[Route] = []
        seen: set[int] = set()
        for row in rows:
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            routes.append(
                Route(
                    row["id"],
                    row["name"],
                    row["dialstring"],
                    row["prefix"],
                    row["priority"],
                )
            )
        order = plan["route_order"] or "priority"
        if order == "cheapest" and routes:
            routes = await self._by_buy_cost(connection, routes, rows, number)
        elif order == "random":
            random.shuffle(routes)
        return routes[: plan["tariff_limit"] or 3]

    async def _by_buy_cost(
        self,
        connection: asyncpg.Connection,
        routes: list[Route],
        rows: Sequence[asyncpg.Record],
        number: str,
    ) -> list[Route]:
        cost_plans = {row["id"]: row["cost_plan_id"] for row in rows}
        wanted = [plan for plan in set(cost_plans.values()) if plan is not None]
        plan_ids = [plan for plan in wanted for _ in rating.candidate_prefixes(number)]
        prefixes = [p for _ in wanted for p in rating.candidate_prefixes(number)]
        found = {
            row["plan_id"]: row["rate"]
            for row in await connection.fetch(FIND_RATES, plan_ids, prefixes)
        }
        priced = [
            Route(
                r.trunk_id,
                r.name,
                r.dialstring,
                r.prefix,
                r.priority,
                found.get(cost_plans.get(r.trunk_id) or -1),
            )
            for r in routes
        ]
        # A trunk without a buy price for the number goes last.
        return sorted(
            priced,
            key=lambda r: (r.buy_rate is None, r.buy_rate or Decimal(0), r.priority),
        )

    async def _store_session(
        self,
        connection: asyncpg.Connection,
        call: _Call,
        max_seconds: int,
        interval: bool,
        routes: list[Route],
        callerid: str | None,
    ) -> None:
        client = call.chain[0]
        assert client.rate is not None
        funded = max_seconds
        if interval:
            funded = min(rating.minimum_block(client.rate), max_seconds)
        chain = call.chain
        rates = [a.rate for a in chain if a.rate is not None]
        stored = await connection.fetch(
            STORE_SESSION,
            call.request.uniqueid,
            call.node,
            call.sip["tenant_id"],
            client.id,
            call.sip["sip_id"],
            call.sip["sip_name"],
            call.request.channel,
            call.number,
            client.rate.destination,
            client.rate.prefix,
            callerid or call.sip["sip_callerid"],
            max_seconds,
            "interval" if interval else "full",
            funded,
            [route.trunk_id for route in routes],
            [a.id for a in chain],
            [a.depth for a in chain],
            [a.plan_id for a in chain],
            [r.prefix for r in rates],
            [r.rate for r in rates],
            [r.initblock for r in rates],
            [r.billingblock for r in rates],
            [r.connect_fee for r in rates],
            [a.tariff.free_seconds for a in chain],
            [a.tariff.decimals for a in chain],
            [a.tariff.rounding for a in chain],
            [a.reservation for a in chain],
        )
        if not stored:
            raise Rejected(Reason.DUPLICATE_CALL, call.request.uniqueid)

    async def _record_rejection(
        self,
        request: AuthorizeRequest,
        node: str,
        sip: asyncpg.Record | None,
        reason: Reason,
        connection: asyncpg.Connection | None = None,
        number: str = "",
    ) -> None:
        """Write a rejected call's session and failed CDR in their own transaction."""
        if connection is None:
            async with self.db.pool.acquire() as own:
                await self._record_rejection(request, node, sip, reason, own, number)
            return
        account_id = sip["account_id"] if sip else None
        tenant_id = sip["tenant_id"] if sip else None
        sip_id = sip["sip_id"] if sip else None
        sip_name = sip["sip_name"] if sip else endpoint_of(request.channel)
        dialed = number or request.extension
        async with connection.transaction():
            inserted = await connection.fetchval(
                INSERT_REJECTED,
                request.uniqueid,
                node,
                tenant_id,
                account_id,
                sip_id,
                sip_name,
                request.channel,
                dialed,
            )
            if not inserted:
                return  # a call already known under this id keeps its record
            await connection.execute(
                INSERT_FAILED_CDR,
                request.uniqueid,
                node,
                tenant_id,
                account_id,
                sip_id,
                sip_name,
                dialed,
                None,
                None,
                str(reason),
                CAUSES[reason],
                "authorize",
            )

    async def settle(self, request: SettleRequest) -> SettleResult:
        """Charge a finished call once; a repeated settle changes nothing."""
        async with self.db.timed("settle"), self.db.transaction() as connection:
            session = await connection.fetchrow(
                CLOSE_SESSION, request.uniqueid, request.source
            )
            if session is None:
                return await self._settle_unknown(connection, request)
            reservations = await connection.fetch(LOCK_RESERVATIONS, request.uniqueid)
            answered = (
                request.dialstatus == "ANSWER" and request.answered_seconds is not None
            )
            if answered:
                return await self._charge(connection, session, reservations, request)
            await connection.fetchval(
                CHARGE,
                request.uniqueid,
                [row["account_id"] for row in reservations],
                [Decimal(0)] * len(reservations),
                [row["amount"] for row in reservations],
            )
            reason = request.reason or DIAL_REASONS.get(
                request.dialstatus or "", "not_dialed"
            )
            await self._write_failed(connection, session, request, reason)
            return SettleResult("failed")

    async def _settle_unknown(
        self, connection: asyncpg.Connection, request: SettleRequest
    ) -> SettleResult:
        state = await connection.fetchval(
            "SELECT state FROM sessions WHERE uniqueid = $1", request.uniqueid
        )
        if state is not None:
            log.debug("settle repeated uniqueid=%s state=%s", request.uniqueid, state)
            return SettleResult("already_settled")
        # A settle for a call callgate never authorized: keep a record so a
        # later authorize for the same id is rejected as a duplicate.
        inserted = await connection.fetchval(
            """
            INSERT INTO sessions (uniqueid, node, state, settled_at, settle_source)
            VALUES ($1, $2, 'unauthorized', now(), $3)
            ON CONFLICT (uniqueid) DO NOTHING RETURNING true
            """,
            request.uniqueid,
            node_of(request.uniqueid),
            request.source,
        )
        if not inserted:
            return SettleResult("already_settled")
        await connection.execute(
            INSERT_FAILED_CDR,
            request.uniqueid,
            node_of(request.uniqueid),
            None,
            None,
            None,
            None,
            None,
            None,
            request.dialstatus,
            "not_authorized",
            request.hangup_cause,
            request.source,
        )
        log.warning(
            "settle for a call never authorized uniqueid=%s dialstatus=%s answered=%s",
            request.uniqueid,
            request.dialstatus,
            request.answered_seconds,
        )
        return SettleResult("unauthorized")

    async def _charge(
        self,
        connection: asyncpg.Connection,
        session: asyncpg.Record,
        reservations: Sequence[asyncpg.Record],
        request: SettleRequest,
        *,
        unresolved: bool = False,
    ) -> SettleResult:
        """Debit every account of the chain and write the CDR with each one's cost."""
        answered = max(0, request.answered_seconds or 0)
        limit = session["max_seconds"]
        if limit is not None and answered > limit:
            # Dial's L() ends the call at the max duration, so more answered
            # seconds are a wrong report, not talk: bill the authorized most.
            log.warning(
                "answered time beyond the max duration uniqueid=%s answered=%s "
                "max=%s: billed at the max",
                session["uniqueid"],
                answered,
                limit,
            )
            answered = limit
        costs: list[Decimal] = []
        billed: list[int] = []
        for row in reservations:
            rate = Rate(
                row["prefix"],
                "",
                row["rate"],
                row["initblock"],
                row["billingblock"],
                row["connect_fee"],
            )
            tariff = Tariff(row["free_seconds"], row["decimals"], row["rounding"])
            billed.append(rating.billed_seconds(answered, rate, tariff.free_seconds))
            costs.append(rating.call_cost(answered, rate, tariff))
        await connection.fetchval(
            CHARGE,
            session["uniqueid"],
            [row["account_id"] for row in reservations],
            costs,
            [row["amount"] for row in reservations],
        )
        client = next(
            (i for i, row in enumerate(reservations) if row["depth"] == 0), None
        )
        client_cost = costs[client] if client is not None else Decimal(0)
        client_billed = billed[client] if client is not None else 0
        await connection.execute(
            INSERT_CDR,
            session["uniqueid"],
            session["node"],
            session["tenant_id"],
            session["account_id"],
            session["sip_account_id"],
            session["sip_name"],
            session["number"],
            session["destination"],
            session["prefix"],
            session["callerid"],
            self._trunk_used(session, request.route_index),
            session["created_at"],
            answered,
            client_billed,
            client_cost,
            request.hangup_cause,
            request.source,
            unresolved,
            [row["account_id"] for row in reservations],
            [row["depth"] for row in reservations],
            [row["plan_id"] for row in reservations],
            [row["rate"] for row in reservations],
            [row["connect_fee"] for row in reservations],
            billed,
            costs,
        )
        return SettleResult("settled", client_cost, client_billed)

    @staticmethod
    def _trunk_used(session: asyncpg.Record, index: int | None) -> int | None:
        """Return the trunk of the route the dialplan used (1-based), if known."""
        trunk_ids = session["trunk_ids"] or []
        if index is None or not 1 <= index <= len(trunk_ids):
            return None
        return int(trunk_ids[index - 1])

    async def _write_failed(
        self,
        connection: asyncpg.Connection,
        session: asyncpg.Record,
        request: SettleRequest,
        reason: str,
    ) -> None:
        await connection.execute(
            INSERT_FAILED_CDR,
            session["uniqueid"],
            session["node"],
            session["tenant_id"],
            session["account_id"],
            session["sip_account_id"],
            session["sip_name"],
            session["number"],
            session["destination"],
            request.dialstatus,
            reason,
            request.hangup_cause,
            request.source,
        )

    async def release(self, uniqueid: str, reason: str) -> SettleResult:
        """Close a session whose call will not go ahead (a broken authorize)."""
        return await self.settle(
            SettleRequest(uniqueid, None, None, source="authorize", reason=reason)
        )

    async def expire_sessions(self) -> int:
        """Settle live sessions older than their max duration plus the margins.

        The billed seconds come from Asterisk's own CDR row for the unique id;
        without one, the call gets a CDR flagged unresolved and billed 0.
        """
        margin = self.settings.ring_timeout + self.settings.expiry_margin
        async with self.db.pool.acquire() as connection:
            expired = [
                row["uniqueid"]
                for row in await connection.fetch(EXPIRED_SESSIONS, margin)
            ]
        settled = 0
        for uniqueid in expired:
            if await self.expire_one(uniqueid):
                settled += 1
        return settled

    async def expire_one(self, uniqueid: str, source: str = "expiry") -> bool:
        async with self.db.transaction() as connection:
            row = await connection.fetchrow(ASTERISK_CDR, uniqueid)
        if row is not None:
            disposition = row["disposition"] or ""
            dialstatus = {
                "ANSWERED": "ANSWER",
                "BUSY": "BUSY",
                "NO ANSWER": "NOANSWER",
                "CONGESTION": "CONGESTION",
                "FAILED": "CHANUNAVAIL",
            }.get(disposition)
            result = await self.settle(
                SettleRequest(uniqueid, dialstatus, row["billsec"], None, None, source)
            )
            log.info(
                "session expired uniqueid=%s from_cdr=%s outcome=%s",
                uniqueid,
                disposition,
                result.outcome,
            )
            return result.outcome in ("settled", "failed")
        return await self._settle_unresolved(uniqueid, source)

    async def _settle_unresolved(self, uniqueid: str, source: str) -> bool:
        async with self.db.transaction() as connection:
            session = await connection.fetchrow(CLOSE_SESSION, uniqueid, source)
            if session is None:
                return False
            reservations = await connection.fetch(LOCK_RESERVATIONS, uniqueid)
            await self._charge(
                connection,
                session,
                reservations,
                SettleRequest(uniqueid, "ANSWER", 0, None, None, source),
                unresolved=True,
            )
        self.unresolved_total += 1
        log.warning(
            "session expired with no record of its outcome uniqueid=%s: "
            "CDR written unresolved, billed 0, for an operator to review",
            uniqueid,
        )
        return True
