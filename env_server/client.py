"""``BatchedClient``: many envs over one ``desktop.v1`` stream, blocking or EnvPool-style async.

Blocking calls (``create`` / ``reset`` / ``step`` / ``close``) return results in the order of the
env ids given. ``send`` / ``send_reset`` return at once and ``recv`` hands back results as envs
finish, in completion order. A bad item comes back as a ``StepResult`` with a non-OK ``code``;
a broken stream (auth, oversized message, server gone) raises ``grpc.RpcError`` from every call.
An episode the server had to end (lost worker, cancelled hung step) comes back with
``truncated`` set (``done`` too) and a non-OK code saying why; reset the env to go on.

This client does not reconnect: :class:`env_server.fleet.FleetClient` (one address or many) adds
reconnection with :class:`Backoff`, env recreation and failover on top of it.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import grpc

import env_server.proto  # noqa: F401
from env_server.auth import channel_credentials, client_metadata
from env_server.proto import desktop_pb2 as pb
from env_server.proto import desktop_pb2_grpc as pb_grpc
from env_server.types import Observation, TaskRef
from env_server.wire import observation_from_proto

MiB = 1 << 20
SCREENSHOT_MODES = {"none": pb.SCREENSHOT_NONE, "raw": pb.SCREENSHOT_RAW, "png": pb.SCREENSHOT_PNG}
_KINDS = {pb.CREATE: "create", pb.RESET: "reset", pb.STEP: "step", pb.CLOSE: "close",
          pb.KIND_UNSPECIFIED: "unspecified"}
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_WAIT_SLACK_S = 5.0  # beyond the item deadline, for the server's own DEADLINE_EXCEEDED to arrive
_END = object()

TaskLike = TaskRef | int | dict | tuple


@dataclass(slots=True)
class StepResult:
    """One env's answer to one item: what happened and (for reset/step) the observation."""

    env_id: int
    episode_id: int
    step_index: int
    kind: str  # "create" | "reset" | "step" | "close"
    code: grpc.StatusCode
    message: str
    observation: Observation | None
    request_id: int
    index: int
    request_error: bool = False  # the whole request was rejected (this result stands for all items)

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    @property
    def truncated(self) -> bool:
        """The episode ended without the task ending (step limit, or the server had to cut it)."""
        return bool(self.observation and self.observation.truncated)

    @property
    def reward(self) -> float:
        return self.observation.reward if self.observation else 0.0

    @property
    def done(self) -> bool:
        return bool(self.observation and self.observation.last)


class EnvError(RuntimeError):
    """Raised by :func:`check` for results with a non-OK status."""

    def __init__(self, results: Sequence[StepResult]):
        self.results = list(results)
        first = self.results[0]
        more = f" (and {len(self.results) - 1} more)" if len(self.results) > 1 else ""
        super().__init__(f"{first.kind} of env {first.env_id}: {first.code.name}: {first.message}{more}")


@dataclass(frozen=True)
class Backoff:
    """Reconnection schedule: ``attempts`` tries, waiting ``initial_s * multiplier**k`` (capped at
    ``max_s``) after failed try ``k``; each try waits up to ``connect_timeout_s`` for the channel."""

    attempts: int = 6
    initial_s: float = 0.2
    multiplier: float = 2.0
    max_s: float = 5.0
    connect_timeout_s: float = 2.0

    def __post_init__(self):
        if self.attempts < 0 or self.initial_s < 0 or self.multiplier < 1 or self.connect_timeout_s <= 0:
            raise ValueError(f"invalid Backoff {self}: need attempts >= 0, initial_s >= 0, "
                             "multiplier >= 1, connect_timeout_s > 0")

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        for _ in range(self.attempts):
            yield min(delay, self.max_s)
            delay *= self.multiplier


def check(results: Sequence[StepResult]) -> list[StepResult]:
    """Return ``results`` unchanged, or raise :class:`EnvError` if any failed."""
    bad = [r for r in results if not r.ok]
    if bad:
        raise EnvError(bad)
    return list(results)


def as_task(task: TaskLike) -> TaskRef:
    if isinstance(task, TaskRef):
        return task
    if isinstance(task, int):
        return TaskRef(seed=task)
    if isinstance(task, dict):
        return TaskRef(**task)
    return TaskRef(*task)


def make_channel(address: str, *, root_cert: str | bytes | None = None, tls: bool = False,
                 server_name: str | None = None, max_message_bytes: int = 256 * MiB,
                 keepalive_s: float = 30.0) -> grpc.Channel:
    """A channel with our message limits and keepalive; TLS when a root cert (or ``tls``) is given."""
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if root_cert is not None or tls:
        return grpc.secure_channel(address, channel_credentials(root_cert), options=options)
    return grpc.insecure_channel(address, options=options)


def result_from_proto(r: pb.Result) -> StepResult:
    obs = observation_from_proto(r.observation, r.step_index) if r.HasField("observation") else None
    return StepResult(r.env_id, r.episode_id, r.step_index, _KINDS.get(r.kind, "unspecified"),
                      _CODES.get(r.status.code, grpc.StatusCode.UNKNOWN), r.status.message, obs,
                      r.request_id, r.index, r.request_error)


class PendingBatch:
    """The future results of one request; filled by the client's reader thread.

    Every request is tracked until all its results arrived, also those sent with ``collect=False``
    (whose results go to ``recv`` / the sink), so a broken stream can name what is outstanding.
    """

    def __init__(self, request_id: int, kind: str, env_ids: Sequence[int], timeout: float | None,
                 collect: bool = True):
        self.request_id = request_id
        self.kind = kind
        self.env_ids = list(env_ids)  # 0 for create items
        self.size = len(self.env_ids)
        self.timeout = timeout
        self.collect = collect
        self._results: list[StepResult | None] = [None] * self.size
        self._count = 0
        self._error: BaseException | None = None
        self._event = threading.Event()
        if self.size == 0:
            self._event.set()

    def _add(self, result: StepResult) -> bool:
        if 0 <= result.index < self.size and self._results[result.index] is None:
            self._results[result.index] = result
            self._count += 1
            if self._count == self.size:
                self._event.set()
            return True
        return False

    def _fill(self, result: StepResult) -> list[StepResult]:
        """Answer every missing item with ``result`` (a request-level error)."""
        added = []
        for i, env_id in self.missing():
            r = replace(result, index=i, env_id=env_id)
            self._add(r)
            added.append(r)
        return added

    def missing(self) -> list[tuple[int, int]]:
        """(index, env id) of the items without a result yet."""
        return [(i, self.env_ids[i]) for i, r in enumerate(self._results) if r is None]

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> list[StepResult]:
        """Results in item order. Waits up to ``timeout`` (default: the request's deadline + slack)."""
        if timeout is None and self.timeout is not None:
            timeout = self.timeout + _WAIT_SLACK_S
        if not self._event.wait(timeout):
            raise TimeoutError(f"request {self.request_id}: {self._count}/{self.size} results "
                               f"after {timeout}s")
        if self._error is not None and self._count < self.size:
            raise self._error
        return self._results  # type: ignore[return-value]


class BatchedClient:
    """Many envs over one bidirectional ``desktop.v1.DesktopEnv/Stream``."""

    def __init__(self, address: str, *, token: str | None = None,
                 root_cert: str | bytes | None = None, tls: bool = False,
                 server_name: str | None = None, max_message_bytes: int = 256 * MiB,
                 timeout: float | None = 60.0, connect_timeout: float | None = 30.0,
                 sink: Callable[[list[StepResult]], None] | None = None,
                 on_error: Callable[[grpc.RpcError, list[PendingBatch]], None] | None = None):
        """``sink`` receives results of uncollected requests (instead of :meth:`recv`);
        ``on_error(error, outstanding)`` runs on the reader thread when the stream breaks, before
        the outstanding collected requests fail with ``error``."""
        self.address = address
        self.timeout = timeout
        self._on_error = on_error
        self._metadata = client_metadata(token)
        self._channel = make_channel(address, root_cert=root_cert, tls=tls, server_name=server_name,
                                     max_message_bytes=max_message_bytes)
        self._stub = pb_grpc.DesktopEnvStub(self._channel)
        self._sink = sink
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: dict[int, PendingBatch] = {}
        self._ready: deque[StepResult] = deque()
        self._error: grpc.RpcError | None = None
        self._closed = False
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        if connect_timeout:
            try:
                grpc.channel_ready_future(self._channel).result(timeout=connect_timeout)
            except grpc.FutureTimeoutError:
                self._channel.close()
                raise
        self._call = self._stub.Stream(self._request_iter(), metadata=self._metadata)
        self._reader = threading.Thread(target=self._read_loop, name=f"client-{address}", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ stream plumbing
    def _request_iter(self) -> Iterator[pb.Request]:
        while (req := self._requests.get()) is not _END:
            yield req

    def _read_loop(self) -> None:
        try:
            for response in self._call:
                self._deliver([result_from_proto(r) for r in response.results])
            error = None
        except grpc.RpcError as err:
            error = err
        with self._cond:
            self._error = error or _StreamClosed()
            pending, self._pending = self._pending, {}
        if self._on_error is not None:
            try:
                self._on_error(self._error, list(pending.values()))
            except Exception:  # the hook must not kill the reader silently
                import logging

                logging.getLogger(__name__).exception("on_error hook failed")
        with self._cond:
            self._cond.notify_all()
        for batch in pending.values():
            if batch.collect and not batch.done():
                batch._fail(self._error)

    def _deliver(self, results: list[StepResult]) -> None:
        loose = []
        with self._cond:
            for r in results:
                batch = self._pending.get(r.request_id)
                if batch is None:
                    loose.append(r)
                    continue
                if r.request_error:
                    added = batch._fill(r)
                    if not batch.collect:
                        loose.extend(added)
                elif batch._add(r) and not batch.collect:
                    loose.append(r)
                if batch.done():
                    del self._pending[r.request_id]
            if loose and self._sink is None:
                self._ready.extend(loose)
                self._cond.notify_all()
        if loose and self._sink is not None:
            self._sink(loose)

    def _send(self, request: pb.Request, kind: str, env_ids: Sequence[int], timeout: float | None,
              collect: bool) -> PendingBatch:
        timeout = self.timeout if timeout is None else timeout
        request.request_id = next(self._ids)
        if timeout:
            request.timeout_ms = max(1, int(timeout * 1000))
        batch = PendingBatch(request.request_id, kind, env_ids, timeout, collect)
        with self._cond:
            if self._error is not None:
                raise self._error
            if batch.size:
                self._pending[request.request_id] = batch
        self._requests.put(request)
        return batch

    @property
    def broken(self) -> grpc.RpcError | None:
        """The error that ended the stream (None while it is up)."""
        return self._error

    # ------------------------------------------------------------------ async API
    def create_async(self, n: int, timeout: float | None = None,
                     collect: bool = True) -> PendingBatch:
        return self._send(pb.Request(create=pb.CreateRequest(count=n)), "create", [0] * n, timeout,
                          collect)

    def reset_async(self, env_ids: Sequence[int], tasks: Sequence[TaskLike], *,
                    screenshot: str = "none", timeout: float | None = None,
                    collect: bool = True) -> PendingBatch:
        if len(env_ids) != len(tasks):
            raise ValueError(f"{len(env_ids)} env ids but {len(tasks)} tasks")
        items = []
        for env_id, task in zip(env_ids, tasks, strict=True):
            t = as_task(task)
            items.append(pb.ResetItem(env_id=env_id,
                                      task=pb.TaskRef(family=t.family, seed=t.seed, split=t.split)))
        req = pb.Request(screenshot=_mode(screenshot), reset=pb.ResetRequest(items=items))
        return self._send(req, "reset", env_ids, timeout, collect)

    def step_async(self, env_ids: Sequence[int], actions: Sequence[str], *,
                   screenshot: str = "none", timeout: float | None = None,
                   collect: bool = True) -> PendingBatch:
        if len(env_ids) != len(actions):
            raise ValueError(f"{len(env_ids)} env ids but {len(actions)} actions")
        items = [pb.StepItem(env_id=e, action=a) for e, a in zip(env_ids, actions, strict=True)]
        req = pb.Request(screenshot=_mode(screenshot), step=pb.StepRequest(items=items))
        return self._send(req, "step", env_ids, timeout, collect)

    def close_async(self, env_ids: Sequence[int], timeout: float | None = None,
                    collect: bool = True) -> PendingBatch:
        req = pb.Request(close=pb.CloseRequest(env_ids=list(env_ids)))
        return self._send(req, "close", env_ids, timeout, collect)

    def send(self, env_ids: Sequence[int], actions: Sequence[str], *, screenshot: str = "none",
             timeout: float | None = None) -> int:
        """Queue steps without waiting; their results come from :meth:`recv`. Returns the request id."""
        return self.step_async(env_ids, actions, screenshot=screenshot, timeout=timeout,
                               collect=False).request_id

    def send_reset(self, env_ids: Sequence[int], tasks: Sequence[TaskLike], *,
                   screenshot: str = "none", timeout: float | None = None) -> int:
        """Queue resets without waiting; their results come from :meth:`recv`."""
        return self.reset_async(env_ids, tasks, screenshot=screenshot, timeout=timeout,
                                collect=False).request_id

    def recv(self, min_results: int = 1, *, max_results: int | None = None,
             timeout: float | None = None) -> list[StepResult]:
        """Results of :meth:`send` / :meth:`send_reset` as they arrive (completion order).

        Waits until ``min_results`` are ready (or ``timeout`` passes; then returns what there is).
        """
        if self._sink is not None:
            raise RuntimeError("this client delivers results to a sink; recv() is not available")
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._ready) < min_results and self._error is None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            if not self._ready and self._error is not None:
                raise self._error
            n = len(self._ready) if max_results is None else min(max_results, len(self._ready))
            return [self._ready.popleft() for _ in range(n)]

    # ------------------------------------------------------------------ blocking API
    def create(self, n: int, timeout: float | None = None) -> list[int]:
        """Create ``n`` envs; returns their ids. Raises :class:`EnvError` if any could not be made."""
        return [r.env_id for r in check(self.create_async(n, timeout).result())]

    def reset(self, env_ids: Sequence[int], tasks: Sequence[TaskLike], *, screenshot: str = "none",
              timeout: float | None = None) -> list[StepResult]:
        return self.reset_async(env_ids, tasks, screenshot=screenshot, timeout=timeout).result()

    def step(self, env_ids: Sequence[int], actions: Sequence[str], *, screenshot: str = "none",
             timeout: float | None = None) -> list[StepResult]:
        return self.step_async(env_ids, actions, screenshot=screenshot, timeout=timeout).result()

    def close(self, env_ids: Sequence[int], timeout: float | None = None) -> list[StepResult]:
        """Close envs (the server also closes a stream's envs when the stream ends)."""
        return self.close_async(env_ids, timeout).result()

    def info(self, timeout: float = 10.0) -> pb.ServerInfo:
        return self._stub.Info(pb.InfoRequest(), timeout=timeout, metadata=self._metadata)

    def shutdown(self, timeout: float = 10.0) -> None:
        """End the stream (the server closes this stream's envs) and the channel."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(_END)
        self._reader.join(timeout)
        if self._reader.is_alive():
            self._call.cancel()
            self._reader.join(timeout)
        self._channel.close()

    def __enter__(self) -> BatchedClient:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _mode(screenshot: str) -> int:
    try:
        return SCREENSHOT_MODES[screenshot]
    except KeyError:
        raise ValueError(f"unknown screenshot mode {screenshot!r}; use one of "
                         f"{sorted(SCREENSHOT_MODES)}") from None


class _StreamClosed(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "the stream is closed"

    def __str__(self) -> str:
        return "the stream is closed"
