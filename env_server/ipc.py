"""The server <-> worker wire: length-prefixed pickled frames of command / reply batches.

One frame carries every command the server has for a worker at that moment (or every reply a
worker has ready), so IPC cost is per batch, not per env. Both ends own the framing (an 8-byte
big-endian length, then a protocol-5 pickle), so the server can read with asyncio streams while
the worker uses a plain blocking socket.
"""

from __future__ import annotations

import pickle
import socket
from enum import IntEnum
from typing import Any, NamedTuple

HEADER_BYTES = 8


class Op(IntEnum):
    CREATE = 1
    RESET = 2
    STEP = 3
    CLOSE = 4
    PING = 5  # env_id 0; replies with worker stats
    SHUTDOWN = 6


class Fmt(IntEnum):
    """How the worker packs an observation into a reply's payload."""

    TUPLE = 0  # a WireObs (the screenshot as raw bytes) for the server to convert
    PROTO = 1  # a serialized ``desktop.v1.Result`` ready to splice into a Response


class Shot(IntEnum):
    """Screenshot mode; values equal ``desktop.v1.ScreenshotMode``."""

    NONE = 0
    RAW = 1
    PNG = 2


class Cmd(NamedTuple):
    tag: int  # server-unique id of this item (for routing the reply)
    op: int
    env_id: int
    arg: Any  # RESET: (family, seed, split); STEP: action str; CREATE: backend kwargs or None
    shot: int  # Shot
    fmt: int  # Fmt
    deadline: float  # time.monotonic() (system-wide clock) after which the item is not started
    meta: tuple[int, int]  # (request_id, index), echoed into PROTO payloads


class Reply(NamedTuple):
    tag: int
    code: int  # grpc status code value (0 = OK)
    message: str
    env_id: int
    episode_id: int
    step_index: int
    payload: Any  # bytes (Fmt.PROTO), WireObs (Fmt.TUPLE) or None
    done: bool  # the episode is over (terminated or truncated)


class WireObs(NamedTuple):
    instruction: str
    a11y: str
    reward: float
    terminated: bool
    truncated: bool
    error: str
    task_id: str
    info: dict[str, str]
    screenshot: tuple[int, int, int, bytes] | None  # (height, width, encoding Shot, data)


def encode(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=5)
    return len(data).to_bytes(HEADER_BYTES, "big") + data


def send_frame(sock: socket.socket, obj: Any) -> None:
    sock.sendall(encode(obj))


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the connection")
        got += k
    return buf


def recv_frame(sock: socket.socket) -> Any:
    size = int.from_bytes(_recv_exact(sock, HEADER_BYTES), "big")
    return pickle.loads(_recv_exact(sock, size))
