"""Scripted AMI peer for tests: a TCP server on 127.0.0.1 that replays Asterisk bytes.

A script is a list of steps run once per connection. `Recording.steps` turns a
recorded ``ami.raw`` into a script that sends the recorded bytes unchanged, except
for one rewrite: the value of each ``ActionID:`` line that the recorder chose is
replaced by the ActionID the client sent in the matching action. Before the first
frame that carries such an ActionID, the script waits for that action.

The recordings contain no Ping traffic, so the peer replies to each ``Ping`` itself
(unless ``answer_ping`` returns False) in the format of Asterisk 22:
``Response: Success`` with ``Ping: Pong`` and a ``Timestamp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(
    os.environ.get(
        "CALLGATE_AMI_FIXTURES",
        Path(__file__).resolve().parent / "fixtures" / "asterisk-22",
    )
)
FRAME_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Send:
    """Send ``data`` after the ActionID rewrite; ``limit`` keeps only a prefix."""

    data: bytes
    limit: int | None = None


@dataclass(frozen=True)
class Expect:
    """Wait for the client's next action (Ping aside) and check its name."""

    action: str
    recorded_id: str | None = None


@dataclass(frozen=True)
class Pause:
    seconds: float


Step = Send | Expect | Pause


def frame_header(frame: bytes, key: str) -> str | None:
    """Return the first value of ``key`` in a raw frame, read without the client."""
    match = re.search(rb"^" + re.escape(key.encode()) + rb": (.*?)\r?$", frame, re.M)
    return None if match is None else match.group(1).decode("utf-8")


@dataclass
class Recording:
    """One recorded AMI connection: the banner, Asterisk's frames, the actions."""

    banner: bytes
    frames: list[bytes]
    actions: list[tuple[str, str]]

    @classmethod
    def load(
        cls,
        scenario: str,
        raw_name: str = "ami.raw",
        actions_name: str = "ami-actions.raw",
    ) -> Recording:
        folder = FIXTURES / scenario
        if not folder.is_dir():
            raise FileNotFoundError(
                f"AMI fixtures not found in {folder}; set CALLGATE_AMI_FIXTURES "
                "to the folder holding the recorded Asterisk 22 scenarios"
            )
        raw = (folder / raw_name).read_bytes()
        banner_end = raw.index(b"\r\n") + 2
        frames = [
            chunk + FRAME_END for chunk in raw[banner_end:].split(FRAME_END) if chunk
        ]
        actions = []
        for chunk in (folder / actions_name).read_bytes().split(FRAME_END):
            name = frame_header(chunk, "Action")
            action_id = frame_header(chunk, "ActionID")
            if name is not None and action_id is not None:
                actions.append((name, action_id))

        return cls(raw[:banner_end], frames, actions)

    def steps(self) -> list[Step]:
        """Return the script that replays this recording."""
        names = dict((action_id, name) for name, action_id in self.actions)
        steps: list[Step] = [Send(self.banner)]
        awaited: set[str] = set()
        for frame in self.frames:
            action_id = frame_header(frame, "ActionID")
            if action_id in names and action_id not in awaited:
                awaited.add(action_id)
                steps.append(Expect(names[action_id], action_id))
            steps.append(Send(frame))
        return steps

    def frame(self, key: str, value: str) -> bytes:
        """Return the first frame whose ``key`` header equals ``value``."""
        for frame in self.frames:
            if frame_header(frame, key) == value:
                return frame
        raise LookupError(f"no frame with {key}: {value}")

    def unsolicited_events(self) -> list[bytes]:
        """Return the event frames that carry no ActionID, in wire order."""
        return [
            frame
            for frame in self.frames
            if frame.startswith(b"Event: ") and frame_header(frame, "ActionID") is None
        ]


@dataclass
class PeerAction:
    connection: int
    headers: dict[str, str]
    raw: bytes


@dataclass
class AMIPeer:
    """AMI server on 127.0.0.1 (a free port) that runs ``script(index)`` per client.

    ``chunk_size`` splits every write into pieces of that many bytes, with a pass
    through the event loop between pieces. ``answer_ping(index)`` decides whether
    connection ``index`` replies to Ping. When a script ends the peer closes the link,
    as Asterisk does after Goodbye or a failed login.
    """

    script: Callable[[int], list[Step]]
    chunk_size: int | None = None
    answer_ping: Callable[[int], bool] = lambda index: True
    connections: int = 0
    actions: list[PeerAction] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def __aenter__(self) -> AMIPeer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        # Aborting the links ends every handler, because its reader sees EOF and
        # writes to a closing transport are skipped. Cancelling a handler task
        # instead makes asyncio log an error on Python 3.11.
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, username: str = "billing", secret: str = "billingpass") -> str:
        return f"ami://{username}:{secret}@127.0.0.1:{self.port}"

    def action_names(self, connection: int | None = None) -> list[str]:
        return [
            action.headers.get("action", "")
            for action in self.actions
            if connection is None or action.connection == connection
        ]

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        index = self.connections
        self.connections += 1
        incoming: asyncio.Queue[PeerAction | None] = asyncio.Queue()
        lock = asyncio.Lock()
        reader_task = asyncio.create_task(
            self._read_actions(index, reader, writer, incoming, lock)
        )
        try:
            await self._run_script(index, writer, incoming, lock)
        finally:
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)
            self._writers.discard(writer)

    async def _run_script(
        self,
        index: int,
        writer: asyncio.StreamWriter,
        incoming: asyncio.Queue[PeerAction | None],
        lock: asyncio.Lock,
    ) -> None:
        action_ids: dict[str, str] = {}
        for step in self.script(index):
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, Expect):
                action = await incoming.get()
                if action is None:
                    return
                name = action.headers.get("action", "")
                if name.lower() != step.action.lower():
                    self.errors.append(f"expected {step.action}, received {name}")
                if step.recorded_id is not None:
                    action_ids[step.recorded_id] = action.headers.get("actionid", "")
            else:
                data = _rewrite_action_ids(step.data, action_ids)
                async with lock:
                    await self._write(writer, data[: step.limit])

    async def _read_actions(
        self,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        incoming: asyncio.Queue[PeerAction | None],
        lock: asyncio.Lock,
    ) -> None:
        try:
            while True:
                raw = await reader.readuntil(FRAME_END)
                action = PeerAction(index, _parse_action(raw), raw)
                self.actions.append(action)
                if action.headers.get("action", "").lower() != "ping":
                    incoming.put_nowait(action)
                elif self.answer_ping(index):
                    pong = (
                        "Response: Success\r\n"
                        f"ActionID: {action.headers.get('actionid', '')}\r\n"
                        "Ping: Pong\r\n"
                        f"Timestamp: {time.time():.6f}\r\n\r\n"
                    )
                    async with lock:
                        await self._write(writer, pong.encode())
        except (asyncio.IncompleteReadError, ConnectionError):
            incoming.put_nowait(None)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.is_closing():
            return
        size = self.chunk_size or len(data) or 1
        for start in range(0, len(data), size):
            writer.write(data[start : start + size])
            await writer.drain()
            if self.chunk_size is not None:
                await asyncio.sleep(0)


def _parse_action(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8").split("\r\n"):
        key, colon, value = line.partition(": ")
        if colon:
            headers.setdefault(key.lower(), value)
    return headers


def _rewrite_action_ids(data: bytes, action_ids: dict[str, str]) -> bytes:
    def replace(match: re.Match[bytes]) -> bytes:
        recorded = match.group(2).decode("utf-8")
        return match.group(1) + action_ids.get(recorded, recorded).encode("utf-8")

    return re.sub(rb"^(ActionID: )([^\r\n]*)", replace, data, flags=re.M)
