"""The `callgate` command line.

Commands that need the Asterisk or HTTP side (`serve`, `call`) live in agi/
and api/ and register through the `callgate.commands` entry-point group, so
this module never imports them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import Callable, Coroutine
from decimal import Decimal
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import asyncpg

from engine import accounts, db, plans
from engine.errors import CallgateError, InvalidInput
from engine.ledger import change_balance
from engine.secrets import PASSWORD_RULES, hash_api_key, new_api_key, password_is_strong
from engine.settings import Settings, describe_settings, load_settings

log = logging.getLogger("callgate.cli")

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # pgserver reports every start and stop of the embedded server at INFO.
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, logging.root.level))


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """Print data as JSON with --json, else the human-readable text."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, indent=2))
    else:
        print(text)


async def open_database(settings: Settings) -> db.Database:
    """Connect (starting the embedded server if needed) and migrate."""
    url = await asyncio.to_thread(db.database_url, settings)
    await db.migrate_url(url)
    database = await db.Database.connect(url, max_size=4)
    async with database.pool.acquire() as connection:
        await accounts.ensure_admin(connection, settings.currency)
    return database


def decimal_arg(field: str) -> Callable[[str], Decimal]:
    def parse(text: str) -> Decimal:
        try:
            return plans.parse_money(field, text)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a whole number of 0 or more, got {text!r}"
        )
    return int(text)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number above 0, got {text!r}"
        )
    return int(text)


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    url = await asyncio.to_thread(db.database_url, settings)
    applied = await db.migrate_url(url)
    emit(
        args, {"applied": applied}, "applied: " + (", ".join(applied) or "nothing new")
    )
    return 0


async def cmd_plan_add(args: argparse.Namespace, settings: Settings) -> int:
    if not (
        args.intl_prefix == ""
        or (args.intl_prefix.isdigit() and len(args.intl_prefix) <= 4)
    ):
        raise InvalidInput(
            "--intl-prefix", args.intl_prefix, "0 to 4 digits, e.g. 00 or 011"
        )
    database = await open_database(settings)
    try:
        async with database.transaction() as connection:
            owner_id = None
            if args.reseller:
                reseller = await accounts.get_by_login(connection, args.reseller)
                if reseller["kind"] != "reseller":
                    raise InvalidInput(
                        "--reseller", args.reseller, "the login of a reseller"
                    )
                owner_id = reseller["id"]
                retail_of = await connection.fetchval(
                    "SELECT plan_id FROM accounts WHERE id = $1", owner_id
                )
                plan_id = await accounts.create_retail_plan(
                    connection,
                    owner_id,
                    reseller["login"],
                    retail_of,
                    reseller["markup"],
                    reseller["tenant_id"],
                    name=args.name,
                    signup=args.signup,
                )
            else:
                options = plans.PlanOptions(
                    free_seconds=args.free_seconds,
                    decimals=args.decimals,
                    rounding=args.rounding,
                    intl_prefix=args.intl_prefix,
                    route_order=args.route_order,
                    tariff_limit=args.tariff_limit,
                    initial_credit=args.initial_credit,
                    signup=args.signup,
                )
                plan_id = await plans.create_plan(connection, args.name, options)
    finally:
        await database.close()
    emit(
        args,
        {"id": plan_id, "name": args.name},
        f"plan {args.name} created (id {plan_id})",
    )
    return 0


def _progress_printer(total: int) -> Callable[[int], None] | None:
    if not sys.stderr.isatty() or total == 0:
        return None

    def show(done: int) -> None:
        width = 40
        filled = width * done // total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


async def cmd_rates_import(args: argparse.Namespace, settings: Settings) -> int:
    rows, errors = plans.read_rate_file(Path(args.file))
    if errors:
        for error in errors:
            print(f"{args.file}: {error}", file=sys.stderr)
        if not args.skip_invalid:
            print(
                f"{len(errors)} invalid row(s); nothing imported "
                "(use --skip-invalid to import the valid rows)",
                file=sys.stderr,
            )
            return 1
    database = await open_database(settings)
    try:
        async with database.transaction() as connection:
            plan = await plans.find_plan(connection, args.plan)
            count = await plans.replace_rates(
                connection, plan["id"], rows, progress=_progress_printer(len(rows))
            )
    finally:
        await database.close()
    emit(
        args,
        {"plan": args.plan, "imported": count, "skipped": len(errors)},
        f"imported {count} rates into {args.plan}"
        + (f", skipped {len(errors)} invalid" if errors else ""),
    )
    return 0


async def cmd_trunk_add(args: argparse.Namespace, settings: Settings) -> int:
    if args.prefix and not args.plan:
        raise InvalidInput("--prefix", args.prefix, "--plan PLAN as well")
    database = await open_database(settings)
    try:
        async with database.transaction() as connection:
            cost_plan_id = None
            if args.cost_plan:
                cost_plan_id = (await plans.find_plan(connection, args.cost_plan))["id"]
            trunk_id = await plans.add_trunk(
                connection, args.name, args.dialstring, cost_plan_id=cost_plan_id
            )
            route_id = None
            if args.plan:
                plan = await plans.find_plan(connection, args.plan)
                route_id = await plans.add_route(
                    connection,
                    plan["id"],
                    trunk_id,
                    prefix=args.prefix or "",
                    priority=args.priority,
                )
                # Retail plans derived from it route the same way.
                await connection.execute(
                    """
                    INSERT INTO routes (plan_id, prefix, trunk_id, priority)
                    SELECT id, $2, $3, $4 FROM plans WHERE parent_plan_id = $1
                    ON CONFLICT DO NOTHING
                    """,
                    plan["id"],
                    args.prefix or "",
                    trunk_id,
                    args.priority,
                )
    finally:
        await database.close()
    emit(
        args,
        {"id": trunk_id, "name": args.name, "route_id": route_id},
        f"trunk {args.name} created (id {trunk_id})"
        + (
            f", routing {args.prefix or 'all destinations'} on {args.plan}"
            if args.plan
            else ""
        ),
    )
    return 0


async def cmd_account_add(args: argparse.Namespace, settings: Settings) -> int:
    if args.password is not None and not password_is_strong(args.password):
        raise InvalidInput("--password", "(hidden)", PASSWORD_RULES)
    if args.kind == "client" and not args.plan and not args.reseller:
        raise InvalidInput(
            "--plan",
            "(none)",
            "a plan for a client of the operator (--plan NAME), "
            "or --reseller LOGIN to use that reseller's retail plan",
        )
    if args.kind == "reseller" and not args.plan:
        raise InvalidInput(
            "--plan", "(none)", "the reseller's wholesale plan (--plan NAME)"
        )
    database = await open_database(settings)
    try:
        async with database.transaction() as connection:
            parent_id = None
            owner_id = None
            if args.reseller:
                parent = await accounts.get_by_login(connection, args.reseller)
                if parent["kind"] != "reseller":
                    raise InvalidInput(
                        "--reseller", args.reseller, "the login of a reseller"
                    )
                parent_id = owner_id = parent["id"]
            plan_id = None
            if args.plan:
                plan_id = (
                    await plans.find_plan(connection, args.plan, owner_id=owner_id)
                )["id"]
            created = await accounts.create_account(
                connection,
                kind=args.kind,
                currency=settings.currency,
                login=args.login,
                parent_id=parent_id,
                plan_id=plan_id,
                balance=args.balance,
                credit_limit=args.credit_limit,
                postpaid=args.postpaid,
                password=args.password,
                markup=settings.default_markup,
                max_concurrent=args.max_concurrent,
            )
    finally:
        await database.close()
    data = {
        "id": created.id,
        "login": created.login,
        "kind": created.kind,
        "sip_name": created.sip_name,
        "sip_password": created.sip_password,
    }
    text = f"{created.kind} {created.login} created (id {created.id})"
    if created.sip_name:
        text += f"\nSIP account {created.sip_name} password {created.sip_password}"
    emit(args, data, text)
    return 0


async def cmd_account_show(args: argparse.Namespace, settings: Settings) -> int:
    database = await open_database(settings)
    try:
        async with database.pool.acquire() as connection:
            data = await accounts.show_account(connection, args.login)
    finally:
        await database.close()
    lines = [f"{key}: {value}" for key, value in data.items() if key != "live_sessions"]
    sessions = data["live_sessions"]
    assert isinstance(sessions, list)
    lines.append(f"live_sessions: {len(sessions)}")
    lines.extend(
        f"  {s['uniqueid']} {s['number']} reserved {s['reserved']}" for s in sessions
    )
    emit(args, data, "\n".join(lines))
    return 0


async def cmd_account_credit(args: argparse.Namespace, settings: Settings) -> int:
    if args.amount == 0:
        raise InvalidInput("--amount", str(args.amount), "an amount other than 0")
    database = await open_database(settings)
    try:
        async with database.transaction() as connection:
            account = await accounts.get_by_login(connection, args.login)
            entry = await change_balance(
                connection,
                account["id"],
                args.amount,
                "refill" if args.amount > 0 else "adjustment",
                note=args.note or "operator credit from the command line",
            )
    finally:
        await database.close()
    log.info("balance changed account=%s amount=%s", account["id"], args.amount)
    emit(
        args,
        {
            "login": args.login,
            "amount": str(args.amount),
            "balance": str(entry.balance_after),
            "ledger_id": entry.id,
        },
        f"{args.login}: {args.amount:+} {settings.currency},"
        f" balance {entry.balance_after}",
    )
    return 0


def signed_money(text: str) -> Decimal:
    """Parse an amount that may be negative (a debit), with at most 6 decimals."""
    negative = text.strip().startswith("-")
    amount = decimal_arg("--amount")(text.strip().lstrip("-"))
    return -amount if negative else amount


async def cmd_apikey_issue(args: argparse.Namespace, settings: Settings) -> int:
    database = await open_database(settings)
    key = new_api_key()
    try:
        async with database.transaction() as connection:
            account = await accounts.get_by_login(connection, args.login)
            key_id = await connection.fetchval(
                "INSERT INTO api_keys (account_id, key_hash, label) VALUES ($1, $2, $3)"
                " RETURNING id",
                account["id"],
                hash_api_key(key),
                args.label,
            )
    finally:
        await database.close()
    log.info("api key issued id=%s account=%s", key_id, args.login)
    if args.json:
        print(json.dumps({"id": key_id, "login": args.login, "key": key}))
    else:
        print(key)
    return 0


VOUCHER_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


async def cmd_voucher_add(args: argparse.Namespace, settings: Settings) -> int:
    if not VOUCHER_CODE.match(args.code):
        raise InvalidInput(
            "CODE",
            args.code,
            "1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
        )
    if args.amount <= 0:
        raise InvalidInput("--amount", str(args.amount), "an amount above 0")
    database = await open_database(settings)
    try:
        async with database.transaction() as connection:
            reseller_id = None
            if args.reseller:
                reseller = await accounts.get_by_login(connection, args.reseller)
                if reseller["kind"] != "reseller":
                    raise InvalidInput(
                        "--reseller", args.reseller, "the login of a reseller"
                    )
                reseller_id = reseller["id"]
            voucher_id = await connection.fetchval(
                """
                INSERT INTO vouchers (code, amount, currency, reseller_id)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (code) DO NOTHING RETURNING id
                """,
                args.code,
                args.amount,
                settings.currency,
                reseller_id,
            )
            if voucher_id is None:
                raise InvalidInput("CODE", args.code, "a voucher code not used before")
    finally:
        await database.close()
    emit(
        args,
        {"id": voucher_id, "code": args.code, "amount": str(args.amount)},
        f"voucher {args.code} for {args.amount} {settings.currency} created",
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callgate",
        description="Real-time rating and call control for Asterisk.",
        epilog=describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        help_text: str,
        handler: Command,
        json_output: bool = True,
        parent: Any = commands,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler)
        if json_output:
            sub.add_argument("--json", action="store_true", help="print JSON")
        return sub

    add("migrate", "apply the database migrations", cmd_migrate)

    plan = commands.add_parser("plan", help="manage plans").add_subparsers(
        dest="plan_command", metavar="ACTION", required=True
    )
    plan_add = add("add", "create a plan", cmd_plan_add, parent=plan)
    plan_add.add_argument("name", metavar="NAME")
    plan_add.add_argument(
        "--free-seconds",
        type=non_negative,
        default=0,
        help="calls up to this many seconds are free (default 0)",
    )
    plan_add.add_argument(
        "--decimals",
        type=int,
        choices=range(0, 7),
        default=6,
        metavar="N",
        help="decimals of a call's cost, 0 to 6 (default 6)",
    )
    plan_add.add_argument(
        "--rounding",
        choices=("half-up", "up", "down"),
        default="half-up",
        help="rounding of a call's cost (default half-up)",
    )
    plan_add.add_argument(
        "--intl-prefix",
        default="00",
        metavar="P",
        help="international prefix stripped before rating (default 00)",
    )
    plan_add.add_argument(
        "--route-order",
        choices=("priority", "cheapest", "random"),
        default="priority",
        help="order of the routes tried (default priority)",
    )
    plan_add.add_argument(
        "--tariff-limit",
        type=positive,
        default=3,
        metavar="N",
        help="most routes tried per call (default 3)",
    )
    plan_add.add_argument(
        "--initial-credit",
        type=decimal_arg("--initial-credit"),
        default=Decimal(0),
        metavar="X",
        help="credit a new client on this plan starts with (default 0)",
    )
    plan_add.add_argument(
        "--signup", action="store_true", help="offer the plan to clients for sign-up"
    )
    plan_add.add_argument(
        "--reseller",
        metavar="LOGIN",
        help="create a retail plan of this reseller, derived by its markup",
    )

    rates = commands.add_parser("rates", help="manage rate decks").add_subparsers(
        dest="rates_command", metavar="ACTION", required=True
    )
    rates_import = add(
        "import",
        "replace a plan's rate deck from a CSV file",
        cmd_rates_import,
        parent=rates,
    )
    rates_import.add_argument("plan", metavar="PLAN")
    rates_import.add_argument(
        "file",
        metavar="FILE",
        help="CSV: prefix,destination,rate,initblock,billingblock,connect_fee",
    )
    rates_import.add_argument(
        "--skip-invalid",
        action="store_true",
        help="import the valid rows even if some are invalid",
    )

    trunk = commands.add_parser("trunk", help="manage trunks").add_subparsers(
        dest="trunk_command", metavar="ACTION", required=True
    )
    trunk_add = add(
        "add", "create a trunk, optionally with a route", cmd_trunk_add, parent=trunk
    )
    trunk_add.add_argument("name", metavar="NAME")
    trunk_add.add_argument(
        "--dialstring",
        required=True,
        metavar="TEMPLATE",
        help="Asterisk dial string with {number}, e.g. PJSIP/{number}@carrier",
    )
    trunk_add.add_argument(
        "--cost-plan", metavar="PLAN", help="what the carrier charges"
    )
    trunk_add.add_argument(
        "--plan", metavar="PLAN", help="also route this plan's calls here"
    )
    trunk_add.add_argument(
        "--prefix", metavar="P", help="route only this prefix (with --plan)"
    )
    trunk_add.add_argument(
        "--priority",
        type=int,
        default=1,
        metavar="N",
        help="route priority, lower first (default 1)",
    )

    account = commands.add_parser("account", help="manage accounts").add_subparsers(
        dest="account_command", metavar="ACTION", required=True
    )
    account_add = add(
        "add", "create a client or reseller", cmd_account_add, parent=account
    )
    account_add.add_argument("login", metavar="LOGIN")
    account_add.add_argument("--kind", choices=("client", "reseller"), required=True)
    account_add.add_argument(
        "--reseller", metavar="LOGIN", help="the reseller above it"
    )
    account_add.add_argument(
        "--plan", metavar="NAME", help="its plan (a reseller's: wholesale)"
    )
    account_add.add_argument(
        "--balance",
        type=decimal_arg("--balance"),
        default=Decimal(0),
        metavar="X",
        help="opening balance (default 0)",
    )
    account_add.add_argument(
        "--credit-limit",
        type=decimal_arg("--credit-limit"),
        default=Decimal(0),
        metavar="X",
        help="credit a postpaid account may use (default 0)",
    )
    account_add.add_argument(
        "--postpaid",
        action="store_true",
        help="postpaid: calls may use balance plus credit limit",
    )
    account_add.add_argument("--password", metavar="P", help="login password")
    account_add.add_argument(
        "--max-concurrent",
        type=non_negative,
        default=0,
        metavar="N",
        help="most simultaneous calls, 0 for no limit (default 0)",
    )
    account_credit = add(
        "credit",
        "add to (or, with a negative amount, take from) a balance, through the ledger",
        cmd_account_credit,
        parent=account,
    )
    account_credit.add_argument("login", metavar="LOGIN")
    account_credit.add_argument(
        "--amount",
        type=signed_money,
        required=True,
        metavar="X",
        help="amount to credit; negative to debit",
    )
    account_credit.add_argument("--note", help="why, stored on the ledger entry")
    account_show = add(
        "show",
        "show balance, reservations and status",
        cmd_account_show,
        parent=account,
    )
    account_show.add_argument("login", metavar="LOGIN")

    apikey = commands.add_parser("apikey", help="manage API keys").add_subparsers(
        dest="apikey_command", metavar="ACTION", required=True
    )
    apikey_issue = add(
        "issue",
        "issue an API key (printed alone on stdout)",
        cmd_apikey_issue,
        parent=apikey,
    )
    apikey_issue.add_argument("login", metavar="LOGIN")
    apikey_issue.add_argument("--label", help="a note to tell keys apart")

    voucher = commands.add_parser("voucher", help="manage vouchers").add_subparsers(
        dest="voucher_command", metavar="ACTION", required=True
    )
    voucher_add = add("add", "create a voucher", cmd_voucher_add, parent=voucher)
    voucher_add.add_argument("code", metavar="CODE")
    voucher_add.add_argument(
        "--amount", type=decimal_arg("--amount"), required=True, metavar="X"
    )
    voucher_add.add_argument(
        "--reseller", metavar="LOGIN", help="only this reseller's clients may redeem it"
    )

    for plugin in entry_points(group="callgate.commands"):
        register = plugin.load()
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except CallgateError as exc:
        print(f"callgate: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    handler: Command = args.handler
    try:
        return asyncio.run(handler(args, settings))
    except CallgateError as exc:
        print(f"callgate: {exc}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:
        # A constraint the checks above did not catch: say what the database
        # refused rather than print a traceback.
        detail = getattr(exc, "detail", None)
        print(
            f"callgate: the database refused the change: {exc}"
            + (f" ({detail})" if detail else ""),
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"callgate: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
