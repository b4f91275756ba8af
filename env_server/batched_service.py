"""``desktop.v1.DesktopEnv``: many envs per stream, batched requests, per-env streamed results.

Workers serialize each ``Result`` themselves; this service only splices the bytes into
``Response`` messages (a repeated field is its entries back to back), so the server's per-step
work is routing, not protobuf building. Results are written as soon as they arrive, bundled up
to the message-size budget.

Robustness: an undecodable request is answered with a request-level error (the stream goes on);
envs die with the stream that created them; envs created by the unary ``Batch`` RPC hold a lease
(``unary_lease_s``) renewed by every item that names them, and are closed when it runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

import env_server.proto  # noqa: F401
from env_server.ipc import Cmd, Fmt, Op, Reply
from env_server.pool import Item, WorkerPool
from env_server.proto import desktop_pb2 as pb
from env_server.wire import framed_result, result_bytes

log = logging.getLogger(__name__)

SERVICE = "desktop.v1.DesktopEnv"
_KIND = {Op.CREATE: pb.CREATE, Op.RESET: pb.RESET, Op.STEP: pb.STEP, Op.CLOSE: pb.CLOSE}
_OPS = {"create": Op.CREATE, "reset": Op.RESET, "step": Op.STEP, "close": Op.CLOSE}
_RESULT_OVERHEAD = 64


def _identity(data: bytes) -> bytes:
    return data


class BadRequest:
    """What the deserializer returns for bytes that are not a ``desktop.v1.Request``."""

    def __init__(self, error: Exception, size: int):
        self.message = (f"the request ({size} bytes) is not a valid desktop.v1.Request: "
                        f"{type(error).__name__}: {error}")


def parse_request(data: bytes) -> pb.Request | BadRequest:
    try:
        return pb.Request.FromString(data)
    except Exception as err:  # DecodeError and friends
        return BadRequest(err, len(data))


class _Results:
    """Collects serialized results for one stream (or one unary call)."""

    def __init__(self, budget: int, on_progress: Callable[[], None] | None = None):
        self.budget = budget
        self.framed: list[bytes] = []
        self.inflight = 0
        self.changed = asyncio.Event()
        self.on_progress = on_progress

    def sink(self, pairs: list[tuple[Cmd, Reply]]) -> None:
        for cmd, reply in pairs:
            data = reply.payload
            if not isinstance(data, bytes):
                data = result_bytes(cmd.meta, _KIND[cmd.op], reply.env_id, reply.episode_id,
                                    reply.step_index, reply.code, reply.message)
            if len(data) + _RESULT_OVERHEAD > self.budget:
                data = result_bytes(cmd.meta, _KIND[cmd.op], reply.env_id, reply.episode_id,
                                    reply.step_index, pb.RESOURCE_EXHAUSTED,
                                    f"result of {len(data)} bytes exceeds the max message size "
                                    f"({self.budget}); ask for PNG or no screenshot")
            self.framed.append(framed_result(data))
        self.inflight -= len(pairs)
        self.changed.set()
        if self.on_progress is not None:
            self.on_progress()

    def add_error(self, meta: tuple[int, int], kind: int, env_id: int, code: int, message: str,
                  request_error: bool = False) -> None:
        self.framed.append(framed_result(result_bytes(meta, kind, env_id, 0, 0, code, message,
                                                      request_error=request_error)))
        self.changed.set()

    def take(self) -> bytes:
        """As many results as fit one message (at least one)."""
        total, n = 0, 0
        for chunk in self.framed:
            if n and total + len(chunk) > self.budget:
                break
            total += len(chunk)
            n += 1
        out, self.framed = self.framed[:n], self.framed[n:]
        return b"".join(out)


class BatchedService:
    """The servicer; ``handler()`` returns its generic RPC handler (bytes-level responses)."""

    def __init__(self, pool: WorkerPool, *, backend: str, max_message_bytes: int,
                 step_timeout_s: float = 60.0, max_inflight: int = 65536, version: str = "",
                 unary_lease_s: float = 600.0, max_batch_items: int = 65536):
        self.pool = pool
        self.backend = backend
        self.budget = max_message_bytes - 1024
        self.step_timeout_s = step_timeout_s
        self.max_inflight = max_inflight
        self.version = version
        self.unary_lease_s = unary_lease_s
        self.max_batch_items = max_batch_items
        self.action_schema = ""
        self.draining = False
        self.reaped = 0  # envs closed because their unary lease ran out
        self._sessions: set[_Results] = set()
        self._leases: dict[int, float] = {}  # env id -> lease end (envs created by unary Batch)
        self._reaper: asyncio.Task | None = None

    def start_reaper(self) -> None:
        """Start closing unary envs whose lease ran out (call on the server's event loop)."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name="unary-lease-reaper")

    def stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    async def _reap(self) -> None:
        period = min(max(self.unary_lease_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            expired = [e for e, end in self._leases.items() if end <= now]
            for env_id in expired:
                del self._leases[env_id]
            expired = [e for e in expired if e in self.pool.env_worker]
            if expired:
                log.info("closing %d envs of unary clients idle for over %gs", len(expired),
                         self.unary_lease_s)
                self.reaped += len(expired)
                self.pool.submit([(Op.CLOSE, e, None, (0, 0)) for e in expired], _ignore)

    def _renew(self, env_ids) -> None:
        leases = self._leases
        end = time.monotonic() + self.unary_lease_s
        for env_id in env_ids:
            if env_id in leases:
                leases[env_id] = end

    @property
    def active_streams(self) -> int:
        return len(self._sessions)

    def begin_drain(self) -> None:
        """Refuse new items; streams end (UNAVAILABLE) once their in-flight items are answered."""
        self.draining = True
        for results in self._sessions:
            results.changed.set()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Stream": grpc.stream_stream_rpc_method_handler(
                self.stream, request_deserializer=parse_request,
                response_serializer=_identity),
            "Batch": grpc.unary_unary_rpc_method_handler(
                self.batch, request_deserializer=parse_request,
                response_serializer=_identity),
            "Info": grpc.unary_unary_rpc_method_handler(
                self.info, request_deserializer=_parse_info,
                response_serializer=pb.ServerInfo.SerializeToString),
        })

    # ------------------------------------------------------------------ requests
    def _deadline(self, request: pb.Request, context: grpc.aio.ServicerContext) -> float:
        timeout = request.timeout_ms / 1000 if request.timeout_ms else self.step_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:  # leave the answer time to get back before the call deadline
            timeout = min(timeout, remaining - min(0.1, remaining * 0.2))
        return time.monotonic() + timeout

    def _submit(self, request: pb.Request | BadRequest, results: _Results, context,
                owned: set[int] | None) -> None:
        if isinstance(request, BadRequest):
            results.add_error((0, 0), pb.KIND_UNSPECIFIED, 0, pb.INVALID_ARGUMENT, request.message,
                              request_error=True)
            return
        rid = request.request_id
        which = request.WhichOneof("op")
        if which is None:
            results.add_error((rid, 0), pb.KIND_UNSPECIFIED, 0, pb.INVALID_ARGUMENT,
                              "request has no operation (create/reset/step/close)", True)
            return
        op = _OPS[which]
        if request.screenshot not in (pb.SCREENSHOT_NONE, pb.SCREENSHOT_RAW, pb.SCREENSHOT_PNG):
            results.add_error((rid, 0), _KIND[op], 0, pb.INVALID_ARGUMENT,
                              f"unknown screenshot mode {request.screenshot} (use SCREENSHOT_NONE=0, "
                              "SCREENSHOT_RAW=1 or SCREENSHOT_PNG=2)", True)
            return
        n = _count(request, op)
        if n > self.max_batch_items:
            results.add_error((rid, 0), _KIND[op], 0, pb.INVALID_ARGUMENT,
                              f"{which} request has {n} items; at most {self.max_batch_items} are "
                              "allowed per request (split it)", True)
            return
        if self.draining:
            results.add_error((rid, 0), _KIND[op], 0, pb.UNAVAILABLE, "server is shutting down", True)
            return
        items: list[Item]
        if op == Op.STEP:
            items = [(Op.STEP, it.env_id, it.action, (rid, i))
                     for i, it in enumerate(request.step.items)]
        elif op == Op.RESET:
            items = [(Op.RESET, it.env_id, (it.task.family, it.task.seed, it.task.split), (rid, i))
                     for i, it in enumerate(request.reset.items)]
        elif op == Op.CLOSE:
            items = [(Op.CLOSE, env_id, None, (rid, i))
                     for i, env_id in enumerate(request.close.env_ids)]
            if owned is not None:
                owned.difference_update(request.close.env_ids)
        else:
            count = request.create.count
            ids = self.pool.allocate(count)
            items = [(Op.CREATE, env_id, None, (rid, i)) for i, env_id in enumerate(ids)]
            if len(ids) < count:
                code = pb.RESOURCE_EXHAUSTED
                why = f"the server's env limit ({self.pool.config.max_envs}) is reached"
                if not self.pool.live_workers:
                    code, why = pb.UNAVAILABLE, "no live worker process (restarting); retry shortly"
                for i in range(len(ids), count):
                    results.add_error((rid, i), pb.CREATE, 0, code, why)
            if owned is not None:
                owned.update(ids)
            else:
                end = time.monotonic() + self.unary_lease_s
                self._leases.update((e, end) for e in ids)
        if self._leases and op != Op.CREATE:
            if op == Op.CLOSE:
                for env_id in request.close.env_ids:
                    self._leases.pop(env_id, None)
            else:
                self._renew(item[1] for item in items)
        results.inflight += len(items)
        self.pool.submit(items, results.sink, shot=request.screenshot, fmt=Fmt.PROTO,
                         deadline=self._deadline(request, context))

    # ------------------------------------------------------------------ rpcs
    async def stream(self, requests: AsyncIterator[pb.Request],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        owned: set[int] = set()
        room = asyncio.Event()
        room.set()

        def on_progress() -> None:
            if results.inflight < self.max_inflight:
                room.set()

        results = _Results(self.budget, on_progress)

        async def read() -> None:
            try:
                async for request in requests:
                    self._submit(request, results, context, owned)
                    if results.inflight >= self.max_inflight:
                        room.clear()
                        await room.wait()
            finally:
                results.changed.set()

        self._sessions.add(results)
        reader = asyncio.create_task(read())
        try:
            while True:
                if results.framed:
                    yield results.take()
                    continue
                if reader.done() and results.inflight <= 0:
                    reader.result()  # re-raise a reader failure
                    return
                if self.draining and results.inflight <= 0:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
                results.changed.clear()
                await results.changed.wait()
        finally:
            self._sessions.discard(results)
            reader.cancel()
            if owned:  # envs created on this stream die with it
                self.pool.submit([(Op.CLOSE, e, None, (0, 0)) for e in owned], _ignore)

    async def batch(self, request: pb.Request | BadRequest,
                    context: grpc.aio.ServicerContext) -> bytes:
        if isinstance(request, BadRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        results = _Results(self.budget)
        self._submit(request, results, context, None)
        while results.inflight > 0:
            results.changed.clear()
            await results.changed.wait()
        data = b"".join(results.framed)
        if len(data) > self.budget:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the response would be {len(data)} bytes (> {self.budget}); "
                                "use smaller batches, PNG screenshots or the Stream RPC")
        return data

    async def info(self, request, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        if isinstance(request, BadRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                request.message.replace("desktop.v1.Request", "desktop.v1.InfoRequest"))
        h, w = self.pool.screen_shape or (0, 0)
        return pb.ServerInfo(backend=self.backend, workers=len(self.pool.workers),
                             envs=self.pool.num_envs, max_envs=self.pool.config.max_envs,
                             screen_height=h, screen_width=w, action_schema=self.action_schema,
                             version=self.version, live_workers=self.pool.live_workers,
                             worker_restarts=self.pool.restarts, envs_reaped=self.reaped)


def _ignore(pairs) -> None:
    del pairs


def _parse_info(data: bytes) -> pb.InfoRequest | BadRequest:
    try:
        return pb.InfoRequest.FromString(data)
    except Exception as err:
        return BadRequest(err, len(data))


def _count(request: pb.Request, op: int) -> int:
    if op == Op.CREATE:
        return request.create.count
    if op == Op.STEP:
        return len(request.step.items)
    if op == Op.RESET:
        return len(request.reset.items)
    return len(request.close.env_ids)
