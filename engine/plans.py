"""Plans, rate decks, retail plans derived by markup, trunks and routes."""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg

from engine.errors import Conflict, InvalidInput, NotFound

RATE_COLUMNS = (
    "prefix",
    "destination",
    "rate",
    "initblock",
    "billingblock",
    "connect_fee",
)
MAX_MONEY = Decimal("99999999999999")
SIX_PLACES = Decimal("0.000001")
PLAIN_DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$", re.ASCII)


@dataclass(frozen=True)
class PlanOptions:
    free_seconds: int = 0
    decimals: int = 6
    rounding: str = "half-up"
    intl_prefix: str = "00"
    route_order: str = "priority"
    tariff_limit: int = 3
    initial_credit: Decimal = Decimal(0)
    signup: bool = False


@dataclass(frozen=True)
class RateRow:
    line: int
    prefix: str
    destination: str
    rate: Decimal
    initblock: int
    billingblock: int
    connect_fee: Decimal


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def parse_money(field: str, value: Any, *, allow_zero: bool = True) -> Decimal:
    """Parse a JSON number or decimal string into Decimal with no float step."""
    if isinstance(value, bool) or value is None:
        raise InvalidInput(field, value, "a decimal amount such as 1.50")
    if isinstance(value, float):
        # JSON numbers arrive as float from some parsers; use their shortest
        # repr, which is the text that was sent.
        value = Decimal(repr(value))
    if isinstance(value, str):
        # Decimal() also takes "1_000", " 1", "1e3" and non-ASCII digits;
        # an amount from outside is plain decimal notation only.
        if not PLAIN_DECIMAL.match(value):
            raise InvalidInput(field, value, "a decimal amount such as 1.50")
    elif not isinstance(value, int | Decimal):
        raise InvalidInput(field, value, "a decimal amount such as 1.50")
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise InvalidInput(field, value, "a decimal amount such as 1.50") from exc
    if not amount.is_finite():
        raise InvalidInput(field, value, "a finite decimal amount")
    if amount < 0 or (amount == 0 and not allow_zero):
        expected = "an amount of 0 or more" if allow_zero else "an amount above 0"
        raise InvalidInput(field, value, expected)
    if amount > MAX_MONEY:
        raise InvalidInput(field, value, f"at most {MAX_MONEY}")
    if amount != amount.quantize(SIX_PLACES):
        raise InvalidInput(field, value, "at most 6 decimals")
    # 1E+3 and 1000 are the same amount; store and show it as 1000.000000.
    return amount.quantize(SIX_PLACES)


def _parse_row(line: int, record: dict[str, str]) -> RateRow:
    prefix = (record.get("prefix") or "").strip()
    if not (prefix.isascii() and prefix.isdigit() and 1 <= len(prefix) <= 15):
        raise InvalidInput("prefix", prefix, "1 to 15 digits")
    destination = (record.get("destination") or "").strip()
    if not destination or any(unicodedata.category(c) == "Cc" for c in destination):
        raise InvalidInput(
            "destination", destination, "a non-empty name without control characters"
        )
    rate = parse_money("rate", record.get("rate"))
    connect_fee = parse_money("connect_fee", (record.get("connect_fee") or "0"))
    blocks: list[int] = []
    for name, minimum in (("initblock", 0), ("billingblock", 1)):
        text = (record.get(name) or "").strip()
        if not (text.isascii() and text.isdigit()) or int(text) < minimum:
            raise InvalidInput(
                name, text, f"a whole number of seconds, {minimum} or more"
            )
        blocks.append(int(text))
    return RateRow(line, prefix, destination, rate, blocks[0], blocks[1], connect_fee)


def parse_rate_csv(text: str) -> tuple[list[RateRow], list[RowError]]:
    """Parse a rate deck; return the valid rows and an error per bad line.

    Header: prefix,destination,rate,initblock,billingblock,connect_fee. A
    prefix seen twice makes the second row bad.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(name.strip() for name in (reader.fieldnames or ()))
    if header != RATE_COLUMNS:
        return [], [
            RowError(
                1, f"header must be {','.join(RATE_COLUMNS)}, found {','.join(header)}"
            )
        ]
    rows: list[RateRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        if None in record:
            errors.append(RowError(line, "more columns than the header"))
            continue
        if None in record.values():
            errors.append(RowError(line, "fewer columns than the header"))
            continue
        try:
            row = _parse_row(line, record)
        except InvalidInput as exc:
            errors.append(RowError(line, str(exc)))
            continue
        if row.prefix in seen:
            errors.append(
                RowError(
                    line,
                    f"duplicate prefix {row.prefix} (first on line {seen[row.prefix]})",
                )
            )
            continue
        seen[row.prefix] = line
        rows.append(row)
    if not rows and not errors:
        # A deck with no rate would silently empty the plan.
        errors.append(RowError(reader.line_num or 1, "the file has no rate rows"))
    return rows, errors


def read_rate_file(path: Path) -> tuple[list[RateRow], list[RowError]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput(
            "file", str(path), f"a readable CSV file ({exc.strerror})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput("file", str(path), "a UTF-8 CSV file") from exc
    return parse_rate_csv(text)


INSERT_PLAN = """
INSERT INTO plans (
    name, owner_id, parent_plan_id, tenant_id, free_seconds, decimals, rounding,
    intl_prefix, route_order, tariff_limit, initial_credit, signup
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING id
"""


async def create_plan(
    connection: asyncpg.Connection,
    name: str,
    options: PlanOptions = PlanOptions(),
    *,
    owner_id: int | None = None,
    parent_plan_id: int | None = None,
    tenant_id: int | None = None,
) -> int:
    if not name or len(name) > 80:
        raise InvalidInput("name", name, "a plan name of 1 to 80 characters")
    try:
        plan_id: int = await connection.fetchval(
            INSERT_PLAN,
            name,
            owner_id,
            parent_plan_id,
            tenant_id,
            options.free_seconds,
            options.decimals,
            options.rounding,
            options.intl_prefix,
            options.route_order,
            options.tariff_limit,
            options.initial_credit,
            options.signup,
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"a plan named {name!r} already exists") from exc
    return plan_id


async def find_plan(
    connection: asyncpg.Connection, name: str, *, owner_id: int | None = None
) -> asyncpg.Record:
    """Find a plan by name: the owner's own first, then the operator's."""
    row = await connection.fetchrow(
        """
        SELECT * FROM plans
        WHERE name = $1 AND (owner_id = $2 OR owner_id IS NULL)
        ORDER BY owner_id NULLS LAST
        LIMIT 1
        """,
        name,
        owner_id,
    )
    if row is None:
        raise NotFound(f"plan {name!r} not found")
    return row


async def replace_rates(
    connection: asyncpg.Connection,
    plan_id: int,
    rows: Iterable[RateRow],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Replace a plan's deck in the caller's transaction; re-derive retail plans.

    Readers see the old deck or the new one, never a mix, because the delete,
    the copy and the re-derivation commit together.
    """
    await connection.execute("DELETE FROM rates WHERE plan_id = $1", plan_id)
    records = [
        (
            plan_id,
            r.prefix,
            r.destination,
            r.rate,
            r.initblock,
            r.billingblock,
            r.connect_fee,
        )
        for r in rows
    ]
    chunk = 5000
    for start in range(0, len(records), chunk):
        await connection.copy_records_to_table(
            "rates",
            records=records[start : start + chunk],
            columns=[
                "plan_id",
                "prefix",
                "destination",
                "rate",
                "initblock",
                "billingblock",
                "connect_fee",
            ],
        )
        if progress is not None:
            progress(min(start + chunk, len(records)))
    await rederive_children(connection, plan_id)
    # Fresh statistics keep the planner on the primary-key lookup that
    # rating relies on; after a bulk load it may otherwise scan the table.
    await connection.execute("ANALYZE rates")
    return len(records)


DERIVE_RATES = """
INSERT INTO rates (
    plan_id, prefix, destination, rate, initblock, billingblock, connect_fee,
    valid_from
)
SELECT $1, prefix, destination, round(rate * (1 + $3::numeric), 6), initblock,
       billingblock, round(connect_fee * (1 + $3::numeric), 6), valid_from
FROM rates
WHERE plan_id = $2
"""


async def derive_rates(
    connection: asyncpg.Connection, plan_id: int, parent_plan_id: int, markup: Decimal
) -> None:
    """Rewrite a retail plan's rates as its parent's x (1 + markup), half-up."""
    await connection.execute("DELETE FROM rates WHERE plan_id = $1", plan_id)
    await connection.execute(DERIVE_RATES, plan_id, parent_plan_id, markup)


async def rederive_children(connection: asyncpg.Connection, plan_id: int) -> None:
    """Re-derive every retail plan below plan_id, down the chain of resellers."""
    pending = [plan_id]
    seen: set[int] = set()
    while pending:
        parent = pending.pop()
        if parent in seen:
            continue
        seen.add(parent)
        children = await connection.fetch(
            """
            SELECT p.id, a.markup FROM plans p
            JOIN accounts a ON a.id = p.owner_id
            WHERE p.parent_plan_id = $1
            ORDER BY p.id
            """,
            parent,
        )
        for child in children:
            await derive_rates(connection, child["id"], parent, child["markup"])
            pending.append(child["id"])


async def add_trunk(
    connection: asyncpg.Connection,
    name: str,
    dialstring: str,
    *,
    cost_plan_id: int | None = None,
) -> int:
    if "{number}" not in dialstring:
        raise InvalidInput(
            "dialstring",
            dialstring,
            "an Asterisk dial string with {number}, e.g. PJSIP/{number}@carrier",
        )
    if any(char in dialstring for char in ",\n\r"):
        raise InvalidInput(
            "dialstring", dialstring, "no comma or line break (Dial's separator)"
        )
    try:
        trunk_id: int = await connection.fetchval(
            "INSERT INTO trunks (name, dialstring, cost_plan_id)"
            " VALUES ($1, $2, $3) RETURNING id",
            name,
            dialstring,
            cost_plan_id,
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"a trunk named {name!r} already exists") from exc
    return trunk_id


async def add_route(
    connection: asyncpg.Connection,
    plan_id: int,
    trunk_id: int,
    *,
    prefix: str = "",
    priority: int = 1,
) -> int:
    if prefix and not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 15):
        raise InvalidInput(
            "prefix", prefix, "up to 15 digits, or empty for all destinations"
        )
    try:
        route_id: int = await connection.fetchval(
            """
            INSERT INTO routes (plan_id, prefix, trunk_id, priority)
            VALUES ($1, $2, $3, $4) RETURNING id
            """,
            plan_id,
            prefix,
            trunk_id,
            priority,
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict("this trunk already routes that prefix on that plan") from exc
    return route_id
