"""`callgate call`: play Asterisk's side of one whole call against a running daemon.

It runs the `authorize` FastAGI session, follows the dialplan's route
failover with the chosen Dial outcomes, runs `settle` as the `h` extension
does, then prints the variables and the CDR the call produced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from agi.peer import build_env, run_agi_session
from engine import db
from engine.errors import InvalidInput
from engine.settings import Settings

DIAL_OUTCOMES = ("ANSWER", "BUSY", "NOANSWER", "CANCEL", "CONGESTION", "CHANUNAVAIL")
# HANGUPCAUSE Asterisk 22.10 reported after each Dial outcome.
OUTCOME_CAUSES = {
    "ANSWER": "16",
    "BUSY": "17",
    "NOANSWER": "16",
    "CANCEL": "127",
    "CONGESTION": "34",
    "CHANUNAVAIL": "3",
}
FAILOVER = ("CHANUNAVAIL", "CONGESTION")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "call",
        help="play one whole call (authorize, Dial outcome, settle) against the daemon",
        description=(
            "Play Asterisk's side of one call against a running callgate serve: "
            "authorize, the chosen Dial outcome and talk time, then settle. "
            "Prints the variables set and the resulting CDR."
        ),
    )
    parser.add_argument(
        "--sip",
        required=True,
        metavar="NAME",
        help="the calling PJSIP endpoint (a SIP account name)",
    )
    parser.add_argument(
        "--number", required=True, metavar="NUMBER", help="the number dialed"
    )
    parser.add_argument(
        "--outcome",
        default="ANSWER",
        metavar="STATUS[,STATUS...]",
        help="Dial outcome per route tried, e.g. CHANUNAVAIL,ANSWER "
        f"(one of {', '.join(DIAL_OUTCOMES)}; default ANSWER)",
    )
    parser.add_argument(
        "--talk",
        type=_seconds,
        default=30,
        metavar="SECONDS",
        help="answered seconds reported as ANSWEREDTIME (default 30)",
    )
    parser.add_argument(
        "--uniqueid", metavar="ID", help="the call's unique id (default: new)"
    )
    parser.add_argument(
        "--callerid",
        default="unknown",
        metavar="NUMBER",
        help="caller ID number the channel presents",
    )
    parser.add_argument(
        "--agi",
        metavar="HOST:PORT",
        help="FastAGI address (default: CALLGATE_AGI_LISTEN)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=call)


def _seconds(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of seconds from 0 to 999999999, got {text!r}"
        )
    return int(text)


def _outcomes(text: str) -> list[str]:
    outcomes = [item.strip().upper() for item in text.split(",") if item.strip()]
    for outcome in outcomes:
        if outcome not in DIAL_OUTCOMES:
            raise SystemExit(
                f"callgate call: invalid --outcome {outcome!r}: "
                f"expected one of {', '.join(DIAL_OUTCOMES)}"
            )
    return outcomes or ["ANSWER"]


async def _cdr(settings: Settings, uniqueid: str) -> dict[str, Any] | None:
    url = await asyncio.to_thread(db.database_url, settings)
    database = await db.Database.connect(url, max_size=1)
    try:
        async with database.pool.acquire() as connection:
            row = await connection.fetchrow(
                "SELECT uniqueid, number, destination, prefix, answered_seconds,"
                " billed_seconds, cost, trunk_name, source"
                " FROM cdrs WHERE uniqueid = $1",
                uniqueid,
            )
            if row is not None:
                charges = await connection.fetch(
                    "SELECT a.login, c.depth, c.rate, c.billed_seconds, c.cost"
                    " FROM cdr_charges c JOIN accounts a ON a.id = c.account_id"
                    " JOIN cdrs d ON d.id = c.cdr_id"
                    " WHERE d.uniqueid = $1 ORDER BY c.depth",
                    uniqueid,
                )
                return {
                    "kind": "cdr",
                    **dict(row),
                    "charges": [dict(c) for c in charges],
                }
            failed = await connection.fetchrow(
                "SELECT uniqueid, number, dialstatus, reason, hangup_cause, source"
                " FROM failed_cdrs WHERE uniqueid = $1",
                uniqueid,
            )
            return {"kind": "failed_cdr", **dict(failed)} if failed else None
    finally:
        await database.close()


async def call(args: argparse.Namespace, settings: Settings) -> int:
    outcomes = _outcomes(args.outcome)
    host, port = settings.agi_listen
    if args.agi:
        host, _, port_text = args.agi.rpartition(":")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidInput("--agi", args.agi, "HOST:PORT, e.g. 127.0.0.1:4573")
        port = int(port_text)
    uniqueid = args.uniqueid or f"{time.time():.0f}.{time.monotonic_ns() % 100000}"
    channel = f"PJSIP/{args.sip}-{time.monotonic_ns() % 0xFFFFFFFF:08x}"
    variables: dict[str, str | None] = {"CALLERID(num)": args.callerid}

    authorize = await run_agi_session(
        host,
        port,
        env=build_env(
            "authorize", uniqueid, channel, args.number, callerid=args.callerid
        ),
        variables=variables,
    )
    channel_vars: dict[str, str | None] = {**variables, **authorize.variables_set}
    status = channel_vars.get("CALLGATE_STATUS")
    attempts: list[str] = []
    if status == "OK":
        count = int(channel_vars.get("CALLGATE_ROUTE_COUNT") or 0)
        for index in range(1, count + 1):
            outcome = outcomes[min(index - 1, len(outcomes) - 1)]
            attempts.append(f"{channel_vars.get(f'CALLGATE_ROUTE_{index}')}: {outcome}")
            channel_vars.update(
                CALLGATE_ROUTE_INDEX=str(index),
                DIALSTATUS=outcome,
                HANGUPCAUSE=OUTCOME_CAUSES[outcome],
                ANSWEREDTIME=str(args.talk) if outcome == "ANSWER" else "",
                DIALEDTIME=str(args.talk + 1) if outcome == "ANSWER" else "",
            )
            if outcome not in FAILOVER:
                break
    else:
        channel_vars["HANGUPCAUSE"] = channel_vars.get("CALLGATE_CAUSE") or "21"
    channel_vars["UNIQUEID"] = uniqueid

    await run_agi_session(
        host,
        port,
        env=build_env("settle", uniqueid, channel, "h", callerid=args.callerid),
        variables=channel_vars,
    )
    cdr = await _cdr(settings, uniqueid)
    report = {
        "uniqueid": uniqueid,
        "variables": authorize.variables_set,
        "dial": attempts,
        "cdr": cdr,
    }
    if args.json:
        print(json.dumps(report, default=str, indent=2))
    else:
        print(f"call {uniqueid} from {args.sip} to {args.number}")
        for name, value in authorize.variables_set.items():
            print(f"  {name}={value}")
        for attempt in attempts:
            print(f"  dial {attempt}")
        print(f"  cdr: {json.dumps(cdr, default=str)}")
    return 0 if status in ("OK", "REJECTED") else 1
