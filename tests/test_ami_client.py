"""Tests of the AMI client against recorded Asterisk 22.10.1 traffic.

The peer in ami_peer.py replays the recorded bytes over real loopback TCP. Only the
ActionID values are rewritten, to the ones the client sends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agi.ami import (
    AMIActionError,
    AMIAuthenticationError,
    AMIClient,
    AMIConnectionLost,
    AMIEndpoint,
    AMINotConnectedError,
    AMIProtocolError,
    AMIState,
    AMITimeoutError,
    FrameParser,
    Message,
    backoff_ceiling,
    backoff_delay,
    format_action,
)
from tests.ami_peer import AMIPeer, Expect, Pause, Recording, Send, frame_header

pytestmark = pytest.mark.timeout(5)

SECRETS = ("billingpass", "wrong-secret")
ZOE = "Zoë Ñandú"


class CallbackLog:
    """Records what the client passes to its callbacks."""

    def __init__(self) -> None:
        self.events: list[Message] = []
        self.connects = 0
        self.disconnects: list[str] = []

    def on_event(self, message: Message) -> None:
        self.events.append(message)

    def on_connect(self) -> None:
        self.connects += 1

    def on_disconnect(self, reason: str) -> None:
        self.disconnects.append(reason)

    def names(self) -> list[str]:
        return [event.name for event in self.events]

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_event": self.on_event,
            "on_connect": self.on_connect,
            "on_disconnect": self.on_disconnect,
        }


async def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 2.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


def is_subsequence(items: list[str], sequence: list[str]) -> bool:
    remaining = iter(sequence)
    return all(any(item == candidate for candidate in remaining) for item in items)


def event_names(recording: Recording) -> list[str]:
    return [
        frame_header(frame, "Event") or "" for frame in recording.unsolicited_events()
    ]


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG, logger="callgate.ami")
    yield
    for secret in SECRETS:
        assert secret not in caplog.text


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., AMIClient]]:
    created: list[AMIClient] = []

    def make(url: str, **kwargs: Any) -> AMIClient:
        client = AMIClient(url, **kwargs)
        created.append(client)
        return client

    yield make
    for client in created:
        await client.close()


# URL, message and framing ----------------------------------------------------------


def test_endpoint_url_defaults() -> None:
    endpoint = AMIEndpoint.from_url("ami://billing:s%40cret%3Ax@127.0.0.1")

    assert endpoint.host == "127.0.0.1"
    assert endpoint.port == 5038
    assert endpoint.username == "billing"
    assert endpoint.secret == "s@cret:x"
    assert "cret" not in repr(endpoint)


def test_endpoint_url_explicit_port_ipv6() -> None:
    endpoint = AMIEndpoint.from_url("ami://billing:billingpass@[::1]:15038")

    assert endpoint.host == "::1"
    assert endpoint.port == 15038


@pytest.mark.parametrize(
    "url",
    [
        "http://billing:billingpass@127.0.0.1:5038",
        "ami://billing@127.0.0.1:5038",
        "ami://:billingpass@127.0.0.1:5038",
        "ami://billing:billingpass@:5038",
        "ami://billing:billingpass@127.0.0.1:5038/path",
        "ami://billing:billingpass@127.0.0.1:99999",
    ],
)
def test_endpoint_url_invalid(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        AMIEndpoint.from_url(url)

    assert "billingpass" not in str(caught.value)


def test_client_repr_hides_secret() -> None:
    client = AMIClient("ami://billing:billingpass@127.0.0.1:5038")

    assert "billingpass" not in repr(client)
    assert client.state is AMIState.STOPPED
    assert not client.connected


def test_message_case_insensitive_repeats() -> None:
    message = Message(
        [
            ("Event", "VarSet"),
            ("ChanVariable", "BILL_SESSION=42"),
            ("ChanVariable", "BILL_ACCOUNT=7"),
            ("AccountCode", ""),
        ]
    )

    assert message.name == "VarSet"
    assert message.is_event
    assert not message.is_response
    assert message["chanvariable"] == "BILL_SESSION=42"
    assert message.getall("CHANVARIABLE") == ["BILL_SESSION=42", "BILL_ACCOUNT=7"]
    assert message.getall("Missing") == []
    assert message.get("accountcode") == ""
    assert message.get("Missing", "x") == "x"
    assert list(message) == ["Event", "ChanVariable", "AccountCode"]
    assert "EVENT" in message


def test_parser_splits_banner_and_headers() -> None:
    parser = FrameParser()
    data = (
        b"Asterisk Call Manager/11.0.0\r\n"
        b"Response: Success\r\nActionID: 1-1\r\nMessage: a: b\r\n\r\n"
        b"\r\n"
        b"Event: X\r\nOutput: one\r\nOutput: two\r\nEmpty: \r\nNoColon\r\n\r\n"
    )

    messages = parser.feed(data)

    assert parser.banner == "Asterisk Call Manager/11.0.0"
    assert len(messages) == 2
    assert messages[0].is_response
    assert messages[0].is_success
    assert messages[0]["Message"] == "a: b"
    assert messages[1].getall("Output") == ["one", "two"]
    assert messages[1]["Empty"] == ""
    assert messages[1][""] == "NoColon"


@pytest.mark.parametrize(
    "scenario",
    [
        "00-ami-login",
        "01-answered",
        "09-ami-hangup",
        "10-coreshowchannels",
        "12-utf8-callerid",
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_parser_chunked_equals_whole(scenario: str, chunk_size: int) -> None:
    raw = (Recording.load(scenario).banner) + b"".join(Recording.load(scenario).frames)
    whole = FrameParser().feed(raw)
    parser = FrameParser()

    chunked: list[Message] = []
    for start in range(0, len(raw), chunk_size):
        chunked.extend(parser.feed(raw[start : start + chunk_size]))

    assert [m.headers for m in chunked] == [m.headers for m in whole]
    assert len(whole) == len(Recording.load(scenario).frames)
    assert parser.banner == "Asterisk Call Manager/11.0.0"


def test_parser_utf8_split_across_reads() -> None:
    raw = (Recording.load("12-utf8-callerid").banner) + b"".join(
        Recording.load("12-utf8-callerid").frames
    )
    split_at = raw.index(ZOE.encode()) + 3  # inside the two bytes of "ë"
    parser = FrameParser()

    messages = parser.feed(raw[:split_at]) + parser.feed(raw[split_at:])

    names = [m["CallerIDName"] for m in messages if "CallerIDName" in m]
    assert ZOE in names
    assert raw.count(ZOE.encode()) == sum(
        value.count(ZOE) for m in messages for _, value in m.headers
    )
    assert not any("\ufffd" in value for m in messages for value in m.values())


@pytest.mark.parametrize("line_end", [b"\n", b"mixed"])
def test_parser_bare_lf(line_end: bytes) -> None:
    recording = Recording.load("00-ami-login")
    raw = recording.banner + b"".join(recording.frames)
    if line_end == b"mixed":
        changed = raw.replace(b"Message: Authentication accepted\r\n", b"Message: x\n")
    else:
        changed = raw.replace(b"\r\n", b"\n")

    messages = FrameParser().feed(changed)

    assert [m.name or m["Response"] for m in messages] == [
        "Success",
        "FullyBooted",
        "SuccessfulAuth",
        "Goodbye",
    ]
    assert messages[1]["Status"] == "Fully Booted"


def test_parser_rejects_oversized_frame() -> None:
    parser = FrameParser(max_frame_bytes=100)
    parser.feed(b"Asterisk Call Manager/11.0.0\r\n")

    with pytest.raises(AMIProtocolError):
        for _ in range(20):
            parser.feed(b"Key: " + b"v" * 10 + b"\r\n")


def test_parser_rejects_unterminated_line() -> None:
    parser = FrameParser(max_frame_bytes=100)

    with pytest.raises(AMIProtocolError):
        parser.feed(b"x" * 101)


def test_format_action_repeats_and_rejects() -> None:
    frame = format_action(
        "Originate", "3-9", {"Variable": ["A=1", "B=2"], "Async": True, "Timeout": 5}
    )

    assert frame == (
        b"Action: Originate\r\nActionID: 3-9\r\nVariable: A=1\r\nVariable: B=2\r\n"
        b"Async: true\r\nTimeout: 5\r\n\r\n"
    )
    with pytest.raises(ValueError, match="line break"):
        format_action("Hangup", "1-2", {"Channel": "x\r\nAction: Originate"})
    with pytest.raises(ValueError, match="set by the AMI client"):
        format_action("Hangup", "1-2", {"ActionID": "mine"})
    with pytest.raises(ValueError, match="header name"):
        format_action("Hangup", "1-2", {"Bad Name": "x"})


# Backoff ---------------------------------------------------------------------------


def test_backoff_ceiling_grows_and_caps() -> None:
    ceilings = [backoff_ceiling(n, initial=0.5, maximum=30.0) for n in range(9)]

    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff_ceiling(100_000, initial=0.5, maximum=30.0) == 30.0


def test_backoff_delay_full_jitter_seeded() -> None:
    first = [
        backoff_delay(n, initial=0.5, maximum=30.0, rng=random.Random(7))
        for n in range(12)
    ]
    again = [
        backoff_delay(n, initial=0.5, maximum=30.0, rng=random.Random(7))
        for n in range(12)
    ]
    rng = random.Random(42)
    samples = {
        n: [backoff_delay(n, initial=0.5, maximum=30.0, rng=rng) for _ in range(300)]
        for n in (0, 3, 10)
    }

    assert first == again
    for n, delays in samples.items():
        ceiling = backoff_ceiling(n, initial=0.5, maximum=30.0)
        assert all(0.0 <= delay <= ceiling for delay in delays)
    assert max(samples[0]) <= 0.5
    assert max(samples[3]) > 2.0
    assert max(samples[10]) > 25.0
    assert sum(samples[0]) < sum(samples[3]) < sum(samples[10])


# Login -----------------------------------------------------------------------------


async def test_login_success_replay(clients: Callable[..., AMIClient]) -> None:
    recording = Recording.load("00-ami-login")
    log = CallbackLog()
    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url(), **log.callbacks())
        await client.start()
        await wait_until(lambda: len(log.events) == 2, "FullyBooted, SuccessfulAuth")

        state_while_connected = client.state
        assert client.connected
        assert state_while_connected is AMIState.CONNECTED
        assert log.connects == 1
        login = peer.actions[0].headers
        assert login["action"] == "Login"
        assert login["actionid"] == "1-1"
        assert login["username"] == "billing"
        assert login["secret"] == "billingpass"
        assert login["events"] == "call,cdr,system"
        assert log.names() == ["FullyBooted", "SuccessfulAuth"]
        assert log.events[1]["AccountID"] == "billing"

        await client.close()

    assert peer.action_names() == ["Login", "Logoff"]
    assert peer.errors == []
    assert client.state is AMIState.CLOSED
    assert not client.connected
    assert log.disconnects == ["AMI client closed"]
    assert client.events_received == {"FullyBooted": 1, "SuccessfulAuth": 1}


async def test_login_failure_raises_no_retry(
    clients: Callable[..., AMIClient], caplog: pytest.LogCaptureFixture
) -> None:
    recording = Recording.load(
        "00-ami-login", "ami-login-failed.raw", "ami-login-failed-actions.raw"
    )
    steps = recording.steps()
    # Asterisk 22.10.1 sent this Error about 1 s after the Login. 50 ms keeps it quick.
    steps.insert(2, Pause(0.05))
    log = CallbackLog()
    async with AMIPeer(lambda index: steps) as peer:
        client = clients(
            peer.url(secret="wrong-secret"),
            backoff_initial=0.001,
            backoff_max=0.002,
            **log.callbacks(),
        )
        with pytest.raises(AMIAuthenticationError) as caught:
            await client.start()
        await asyncio.sleep(0.1)  # room for a retry loop, if there were one

        assert peer.connections == 1

    assert caught.value.username == "billing"
    assert caught.value.message == "Authentication failed"
    assert client.state is AMIState.AUTH_FAILED
    assert client.reconnects == 0
    assert not client.connected
    assert "Authentication failed" in (client.last_error or "")
    assert log.connects == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "billing" in errors[0].getMessage()
    assert "not reconnecting" in errors[0].getMessage()
    with pytest.raises(AMINotConnectedError):
        await client.hangup("PJSIP/alice-00000021")


async def test_start_twice_rejected(clients: Callable[..., AMIClient]) -> None:
    recording = Recording.load("00-ami-login")
    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url())
        await client.start()

        with pytest.raises(RuntimeError):
            await client.start()


# Actions ---------------------------------------------------------------------------


async def test_core_show_channels_list(clients: Callable[..., AMIClient]) -> None:
    recording = Recording.load("10-coreshowchannels")
    log = CallbackLog()
    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url(), **log.callbacks())
        await client.start()

        channels = await client.core_show_channels()

        assert len(channels) == 2
        carrier, caller = channels
        assert {c.name for c in channels} == {"CoreShowChannel"}
        assert {c.action_id for c in channels} == {"1-2"}
        assert carrier["Channel"] == "PJSIP/carrier-00000024"
        assert carrier["Application"] == "AppDial"
        assert carrier["Context"] == "carrier-inbound"
        assert caller["Channel"] == "PJSIP/alice-00000023"
        assert caller["Uniqueid"] == "1796389665.35"
        assert caller["Linkedid"] == "1796389665.35"
        assert caller["ApplicationData"] == "PJSIP/15555550101@carrier,10,L(60000)"
        assert caller["Duration"] == "00:00:03"
        assert caller["BridgeId"] == carrier["BridgeId"]
        await wait_until(
            lambda: len(log.events) == len(event_names(recording)), "all events"
        )

    assert log.names() == event_names(recording)
    assert "CoreShowChannel" not in log.names()
    assert client.events_received["CoreShowChannel"] == 2
    assert client.events_received["CoreShowChannelsComplete"] == 1
    assert peer.errors == []


async def test_on_connect_resync_before_events(
    clients: Callable[..., AMIClient],
) -> None:
    recording = Recording.load("10-coreshowchannels")
    timeline: list[str] = []
    client: AMIClient | None = None

    async def on_connect() -> None:
        assert client is not None
        timeline.append("resync start")
        channels = await client.core_show_channels()
        timeline.append(f"resync done: {len(channels)} channels")

    def on_event(message: Message) -> None:
        timeline.append(message.name)

    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url(), on_connect=on_connect, on_event=on_event)
        await client.start()

        # start() returns once on_connect has finished.
        assert timeline[:2] == ["resync start", "resync done: 2 channels"]
        await wait_until(
            lambda: len(timeline) == 2 + len(event_names(recording)), "all events"
        )

    assert timeline[2:] == event_names(recording)


async def test_hangup_action_success(clients: Callable[..., AMIClient]) -> None:
    recording = Recording.load("09-ami-hangup")
    log = CallbackLog()
    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url(), **log.callbacks())
        await client.start()

        response = await client.hangup("PJSIP/alice-00000021")

        assert response.is_success
        assert response["Message"] == "Channel Hungup"
        assert response.action_id == "1-2"
        sent = peer.actions[1].headers
        assert sent["action"] == "Hangup"
        assert sent["channel"] == "PJSIP/alice-00000021"
        assert sent["cause"] == "16"
        await wait_until(
            lambda: len(log.events) == len(event_names(recording)), "all events"
        )

    assert log.names() == event_names(recording)
    hangups = [e["Channel"] for e in log.events if e.name == "Hangup"]
    assert hangups == ["PJSIP/carrier-00000022", "PJSIP/alice-00000021"]
    assert log.names().index("Cdr") > max(
        i for i, e in enumerate(log.events) if e.name == "Hangup"
    )
    assert peer.errors == []


async def test_action_timeout(clients: Callable[..., AMIClient]) -> None:
    login = Recording.load("00-ami-login")
    steps = [*login.steps()[:3], Expect("Hangup"), Expect("Logoff")]
    async with AMIPeer(lambda index: steps) as peer:
        client = clients(peer.url())
        await client.start()

        with pytest.raises(AMITimeoutError):
            await client.send_action(
                "Hangup", timeout=0.05, Channel="PJSIP/alice-00000021"
            )

        assert client.connected


async def test_list_action_error(clients: Callable[..., AMIClient]) -> None:
    login = Recording.load("00-ami-login")
    error = b"Response: Error\r\nActionID: x-1\r\nMessage: Permission denied\r\n\r\n"
    steps = [*login.steps()[:3], Expect("CoreShowChannels", "x-1"), Send(error)]
    async with AMIPeer(lambda index: steps) as peer:
        client = clients(peer.url())
        await client.start()

        with pytest.raises(AMIActionError, match="Permission denied"):
            await client.core_show_channels()


async def test_action_validation_before_send() -> None:
    client = AMIClient("ami://billing:billingpass@127.0.0.1:5038")

    with pytest.raises(AMINotConnectedError):
        await client.hangup("PJSIP/alice-00000021")
    with pytest.raises(ValueError, match="line break"):
        await client.hangup("PJSIP/alice\r\nAction: Originate")
    with pytest.raises(ValueError, match="cause"):
        await client.hangup("PJSIP/alice-00000021", cause=300)
    with pytest.raises(ValueError, match="channel"):
        await client.absolute_timeout("", 10)
    with pytest.raises(ValueError, match="AbsoluteTimeout"):
        await client.absolute_timeout("PJSIP/alice-00000021", -1)


async def test_sorcery_and_timeout_headers(clients: Callable[..., AMIClient]) -> None:
    login = Recording.load("00-ami-login")
    ok = b"Response: Success\r\nActionID: r-{n}\r\n\r\n"
    steps = [*login.steps()[:3]]
    for n, name in enumerate(
        [
            "AbsoluteTimeout",
            "SorceryMemoryCacheExpireObject",
            "SorceryMemoryCachePopulate",
        ]
    ):
        steps += [Expect(name, f"r-{n}"), Send(ok.replace(b"{n}", str(n).encode()))]
    steps.append(Expect("Logoff"))
    async with AMIPeer(lambda index: steps) as peer:
        client = clients(peer.url())
        await client.start()

        responses = [
            await client.absolute_timeout("PJSIP/alice-00000021", 30),
            await client.sorcery_memory_cache_expire_object("endpoint_cache", "alice"),
            await client.sorcery_memory_cache_populate("endpoint_cache"),
        ]

        assert all(response.is_success for response in responses)
        sent = [action.headers for action in peer.actions[1:4]]
        assert sent[0]["timeout"] == "30"
        assert sent[0]["channel"] == "PJSIP/alice-00000021"
        assert sent[1]["cache"] == "endpoint_cache"
        assert sent[1]["object"] == "alice"
        assert sent[2]["cache"] == "endpoint_cache"


# Events ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario", ["01-answered", "07-limit-reached", "12-utf8-callerid"]
)
@pytest.mark.parametrize("chunk_size", [1, 7])
async def test_events_in_order_chunked(
    clients: Callable[..., AMIClient], scenario: str, chunk_size: int
) -> None:
    recording = Recording.load(scenario)
    expected = event_names(recording)
    log = CallbackLog()
    async with AMIPeer(lambda index: recording.steps(), chunk_size=chunk_size) as peer:
        client = clients(peer.url(), **log.callbacks())
        await client.start()
        await wait_until(lambda: len(log.events) == len(expected), "all events", 4.0)

    assert log.names() == expected
    assert sum(client.events_received.values()) == len(expected)
    assert client.events_received["Newchannel"] == expected.count("Newchannel")
    names = {e["CallerIDName"] for e in log.events if "CallerIDName" in e}
    if scenario == "12-utf8-callerid":
        assert ZOE in names
        recorded = recording.banner + b"".join(recording.frames)
        count = sum(value.count(ZOE) for e in log.events for _, value in e.headers)
        assert count == recorded.count(ZOE.encode())
    assert not any("\ufffd" in name for name in names)


@pytest.mark.parametrize(
    ("scenario", "cdr_first"),
    [
        ("01-answered", True),
        ("07-limit-reached", True),
        ("12-utf8-callerid", True),
        ("03-busy", False),
    ],
)
async def test_cdr_and_caller_hangup_order(
    clients: Callable[..., AMIClient], scenario: str, cdr_first: bool
) -> None:
    recording = Recording.load(scenario)
    log = CallbackLog()
    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url(), **log.callbacks())
        await client.start()
        await wait_until(
            lambda: len(log.events) == len(event_names(recording)), "all events"
        )

    cdr = log.names().index("Cdr")
    caller_hangup = next(
        i
        for i, e in enumerate(log.events)
        if e.name == "Hangup" and e["Channel"].startswith("PJSIP/alice-")
    )
    assert (cdr < caller_hangup) is cdr_first
    assert log.events[cdr]["Channel"].startswith("PJSIP/alice-")
    assert log.events[cdr]["Disposition"] in ("ANSWERED", "BUSY")


async def test_slow_consumer_drops_counted(
    clients: Callable[..., AMIClient], caplog: pytest.LogCaptureFixture
) -> None:
    recording = Recording.load("01-answered")
    expected = event_names(recording)
    gate = asyncio.Event()
    received: list[str] = []

    async def on_event(message: Message) -> None:
        received.append(message.name)
        await gate.wait()

    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url(), event_queue_size=5, on_event=on_event)
        await client.start()
        await wait_until(
            lambda: sum(client.events_received.values()) == len(expected),
            "the reader to read every event",
        )
        dropped = client.events_dropped
        gate.set()
        await wait_until(lambda: len(received) + dropped == len(expected), "drain")

    assert dropped > 0
    assert len(received) <= 6
    assert received[:5] == expected[:5]
    assert is_subsequence(received, expected)
    warnings = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(warnings) == 1


async def test_on_event_error_logged_counted(
    clients: Callable[..., AMIClient],
) -> None:
    recording = Recording.load("00-ami-login")
    names: list[str] = []

    async def on_event(message: Message) -> None:
        names.append(message.name)
        if message.name == "FullyBooted":
            raise RuntimeError("callback bug")

    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url(), on_event=on_event)
        await client.start()
        await wait_until(lambda: len(names) == 2, "both events")

    assert names == ["FullyBooted", "SuccessfulAuth"]
    assert client.callback_errors == 1


# Link failures ---------------------------------------------------------------------


async def test_watchdog_reconnects_without_pong(
    clients: Callable[..., AMIClient],
) -> None:
    recording = Recording.load("00-ami-login")
    log = CallbackLog()
    peer = AMIPeer(lambda index: recording.steps(), answer_ping=lambda index: index > 0)
    async with peer:
        client = clients(
            peer.url(),
            ping_interval=0.05,
            ping_timeout=0.1,
            backoff_initial=0.01,
            backoff_max=0.02,
            **log.callbacks(),
        )
        await client.start()
        started = asyncio.get_running_loop().time()
        await wait_until(lambda: log.connects == 2, "a second login", 2.0)
        elapsed = asyncio.get_running_loop().time() - started
        await wait_until(
            lambda: peer.action_names(1).count("Ping") >= 3, "answered Pings"
        )

        assert elapsed < 1.0
        assert client.connected
        assert log.connects == 2
        assert client.reconnects == 1

    assert "Ping" in log.disconnects[0]
    assert peer.connections == 2


async def test_close_mid_frame_reconnects(clients: Callable[..., AMIClient]) -> None:
    login = Recording.load("00-ami-login")
    hangup = Recording.load("09-ami-hangup")

    def script(index: int) -> list[Any]:
        if index > 0:
            return login.steps()
        return [
            Send(login.banner),
            Expect("Login", "login-00"),
            Send(login.frame("ActionID", "login-00")),
            Send(login.frame("Event", "FullyBooted")),
            Expect("Hangup", "hangup-1"),
            Send(hangup.frame("ActionID", "hangup-1"), limit=30),
        ]

    log = CallbackLog()
    async with AMIPeer(script) as peer:
        client = clients(
            peer.url(), backoff_initial=0.01, backoff_max=0.02, **log.callbacks()
        )
        await client.start()

        with pytest.raises(AMIConnectionLost) as caught:
            await client.hangup("PJSIP/alice-00000021")
        await wait_until(lambda: log.connects == 2, "a second login")
        await wait_until(lambda: len(log.events) == 3, "the second session events")

        assert not isinstance(caught.value, AMINotConnectedError)
        assert client.connected
        assert client.reconnects == 1
        assert log.disconnects == ["AMIConnectionLost: connection closed by peer"]
        assert log.names() == ["FullyBooted", "FullyBooted", "SuccessfulAuth"]
        assert [a.headers["actionid"] for a in peer.actions[2:3]] == ["2-1"]

    assert peer.errors == []


async def test_connect_refused_keeps_retrying(
    clients: Callable[..., AMIClient],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = clients(
        f"ami://billing:billingpass@127.0.0.1:{port}",
        backoff_initial=0.005,
        backoff_max=0.01,
    )

    await client.start()
    await wait_until(lambda: client.reconnects >= 3, "three retries")

    assert not client.connected
    assert client.state in (AMIState.BACKOFF, AMIState.CONNECTING)
    assert "connect failed" in (client.last_error or "")
    with pytest.raises(TimeoutError):
        await client.wait_connected(timeout=0.01)


async def test_on_connect_error_reconnects(clients: Callable[..., AMIClient]) -> None:
    recording = Recording.load("00-ami-login")
    attempts: list[int] = []
    reasons: list[str] = []

    def on_connect() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise RuntimeError("resync failed")

    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(
            peer.url(),
            backoff_initial=0.01,
            backoff_max=0.02,
            on_connect=on_connect,
            on_disconnect=reasons.append,
        )
        await client.start()
        await wait_until(lambda: len(attempts) == 2, "a second on_connect")

        assert client.callback_errors == 1
        assert reasons == ["on_connect callback failed"]
        assert peer.connections == 2


async def test_close_from_event_callback(clients: Callable[..., AMIClient]) -> None:
    recording = Recording.load("00-ami-login")
    names: list[str] = []
    client: AMIClient | None = None

    async def on_event(message: Message) -> None:
        names.append(message.name)
        if message.name == "FullyBooted":
            assert client is not None
            await client.close()

    async with AMIPeer(lambda index: recording.steps()) as peer:
        client = clients(peer.url(), on_event=on_event)
        await client.start()
        await wait_until(
            lambda: client is not None and client.state is AMIState.CLOSED, "close"
        )
        consumer = client._consumer
        assert consumer is not None
        await wait_until(consumer.done, "the consumer to stop")

    assert names == ["FullyBooted", "SuccessfulAuth"]
    assert peer.action_names() == ["Login", "Logoff"]
