"""The Asterisk side of FastAGI, for ``callgate call``, the tests and benchmarks.

It connects to a FastAGI server, sends an environment block in the order
Asterisk 22.10.1 sends it, and replies to commands the way that Asterisk does,
including the ``HANGUP`` line it writes after the server half-closes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

REPLY_OK = "200 result=1"
REPLY_INVALID = "510 Invalid or unknown command"
REPLY_DEAD_CHANNEL = "511 Command Not Permitted on a dead channel or intercept routine"
REPLY_USAGE = "520 Invalid command syntax.  Proper usage not available."

# Commands that Asterisk allows on a hung-up channel (dead-safe commands).
_DEAD_SAFE = frozenset(
    {
        "GET VARIABLE",
        "GET FULL VARIABLE",
        "SET VARIABLE",
        "VERBOSE",
        "EXEC",
        "NOOP",
        "DATABASE GET",
        "DATABASE PUT",
        "DATABASE DEL",
        "DATABASE DELTREE",
        "ASYNCAGI BREAK",
    }
)
# The other supported verbs, with the reply each gets on a live channel.
_LIVE_REPLIES = {
    "ANSWER": "200 result=0",
    "STREAM FILE": "200 result=0 endpos=0",
    "SET AUTOHANGUP": "200 result=0",
    "CHANNEL STATUS": "200 result=6",
    "HANGUP": REPLY_OK,
}
_SUBSTITUTION = re.compile(r"\$\{([^{}]*)\}")


@dataclass
class PeerResult:
    """Record of the server's actions in one session, seen from Asterisk's side."""

    variables_set: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    closed_by_server: bool = False


def split_agi_arguments(line: str) -> list[str]:
    """Split a command line into arguments as Asterisk's ``parse_args`` does.

    Spaces and tabs separate arguments, double quotes group them (and are
    removed), and a backslash makes the next character literal. ``""`` gives
    an empty argument.
    """
    arguments: list[str] = []
    current: list[str] | None = None
    quoted = False
    escaped = False
    for char in line:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            continue
        elif char == '"':
            quoted = not quoted
            if current is None:
                current = []
                arguments.append("")
            continue
        elif char in " \t" and not quoted:
            if current is not None:
                arguments[-1] = "".join(current)
                current = None
            continue

        if current is None:
            current = []
            arguments.append("")
        current.append(char)
    if current is not None:
        arguments[-1] = "".join(current)

    return arguments


def build_env(
    script: str,
    uniqueid: str,
    channel: str,
    extension: str,
    *,
    callerid: str = "unknown",
    calleridname: str = "unknown",
    query: Mapping[str, str] | None = None,
    server: str = "127.0.0.1:4573",
    context: str = "callgate-outbound",
    accountcode: str = "",
    arguments: Sequence[str] = (),
) -> dict[str, str]:
    """Build an environment block in the order Asterisk 22.10.1 sends it.

    ``server`` is only written into ``agi_request``. The ``arguments`` become
    ``agi_arg_1`` and on.
    """
    network_script = script
    if query:
        network_script = f"{script}?{urlencode(query)}"
    env = {
        "agi_network": "yes",
        "agi_network_script": network_script,
        "agi_request": f"agi://{server}/{network_script}",
        "agi_channel": channel,
        "agi_language": "en",
        "agi_type": channel.partition("/")[0],
        "agi_uniqueid": uniqueid,
        "agi_version": "22.10.1",
        "agi_callerid": callerid,
        "agi_calleridname": calleridname,
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": extension if extension != "h" else "unknown",
        "agi_rdnis": "unknown",
        "agi_context": context,
        "agi_extension": extension,
        "agi_priority": "1",
        "agi_enhanced": "0.0",
        "agi_accountcode": accountcode,
        "agi_threadid": "139969994847936",
    }
    for number, argument in enumerate(arguments, start=1):
        env[f"agi_arg_{number}"] = argument

    return env


class _AsteriskSide:
    """Reply logic of one session. The server's SET VARIABLE updates ``variables``."""

    def __init__(self, variables: Mapping[str, str | None], hung_up: bool) -> None:
        self.variables = dict(variables)
        self.hung_up = hung_up
        self.result = PeerResult()

    def reply(self, line: str) -> str:
        self.result.commands.append(line)
        arguments = split_agi_arguments(line)
        words = [argument.upper() for argument in arguments[:3]]
        for length in (3, 2, 1):
            verb = " ".join(words[:length])
            if verb in _DEAD_SAFE or verb in _LIVE_REPLIES:
                return self._reply_to(verb, arguments[length:])
        return REPLY_INVALID

    def _reply_to(self, verb: str, arguments: list[str]) -> str:
        if verb not in _DEAD_SAFE and self.hung_up:
            return REPLY_DEAD_CHANNEL
        if verb == "GET VARIABLE":
            if len(arguments) != 1:
                return REPLY_USAGE
            return self._value_reply(self.variables.get(arguments[0]))
        if verb == "GET FULL VARIABLE":
            if len(arguments) not in (1, 2):
                return REPLY_USAGE
            return self._value_reply(self._substitute(arguments[0]))
        if verb == "SET VARIABLE":
            if len(arguments) != 2:
                return REPLY_USAGE
            name, value = arguments
            self.variables[name] = value
            self.result.variables_set[name] = value
            return REPLY_OK
        if verb == "VERBOSE":
            return REPLY_OK if arguments else REPLY_USAGE
        if verb == "HANGUP":
            self.hung_up = True
        return _LIVE_REPLIES.get(verb, "200 result=0")

    def _substitute(self, expression: str) -> str:
        # NOTE: only plain ${NAME} is expanded. Nested ${} is not, and a
        # function such as ${CDR(x)} is looked up by its literal name.
        def value(match: re.Match[str]) -> str:
            return self.variables.get(match[1]) or ""

        return _SUBSTITUTION.sub(value, expression)

    @staticmethod
    def _value_reply(value: str | None) -> str:
        if value is None:
            return "200 result=0"
        return f"200 result=1 ({value})"


async def run_agi_session(
    host: str,
    port: int,
    *,
    env: Mapping[str, str],
    variables: Mapping[str, str | None],
    hangup_after_env: bool = False,
    read_timeout: float = 5,
) -> PeerResult:
    """Play Asterisk for one FastAGI session and return what the server did.

    ``variables`` contains the channel's variables (None means unset). With
    ``hangup_after_env`` an unprompted ``HANGUP`` follows the environment
    block and the channel is dead, so ANSWER and STREAM FILE get 511. Raises
    ``TimeoutError`` if the server sends no line for ``read_timeout`` seconds.
    """
    side = _AsteriskSide(variables, hung_up=hangup_after_env)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        block = "".join(f"{name}: {value}\n" for name, value in env.items()) + "\n"
        if hangup_after_env:
            block += "HANGUP\n"
        writer.write(block.encode("utf-8"))
        await writer.drain()

        while True:
            async with asyncio.timeout(read_timeout):
                raw = await reader.readline()
            if not raw.endswith(b"\n"):
                break
            line = raw[:-1].decode("utf-8", errors="replace")
            writer.write(side.reply(line).encode("utf-8") + b"\n")
            await writer.drain()

        side.result.closed_by_server = True
        # Asterisk writes HANGUP once more when the AGI loop ends.
        writer.write(b"HANGUP\n")
        await writer.drain()
    except ConnectionError:
        side.result.closed_by_server = True
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            side.result.closed_by_server = True

    return side.result
