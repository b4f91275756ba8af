"""The server side of the workers: process supervision, env placement, batching and deadlines.

Everything here runs on the server's asyncio loop and never blocks it: commands are queued per
worker and flushed as one frame at the end of the current loop iteration; replies arrive on a
reader task per worker and are handed to the caller's *sink* (a plain callback), grouped per
sink, so a request of 64 items costs a handful of IPC frames and no per-item futures.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import multiprocessing as mp
import pickle
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from env_server.ipc import HEADER_BYTES, Cmd, Fmt, Op, Reply, Shot, encode
from env_server.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)

# grpc status code values
OK, DEADLINE_EXCEEDED, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE = 0, 4, 5, 8, 14

Item = tuple[int, int, object, tuple[int, int]]  # (op, env_id, arg, meta)
Sink = Callable[[list[tuple[Cmd, Reply]]], None]

_EXPIRY_SLACK_S = 0.02  # results finishing this late still count as in time
_SWEEP_MAX_S = 0.1
_RESTART_MIN_S, _RESTART_MAX_S = 0.5, 30.0


@dataclass
class PoolConfig:
    workers: int = 2
    start_method: str = "forkserver"  # or "spawn"
    max_envs: int = 4096
    restart_workers: bool = True


@dataclass(eq=False)
class _Worker:
    index: int
    process: mp.process.BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[int, tuple[Sink, Cmd]] = field(default_factory=dict)
    outbox: list[Cmd] = field(default_factory=list)
    envs: set[int] = field(default_factory=set)
    task: asyncio.Task | None = None
    alive: bool = True
    started_at: float = field(default_factory=time.monotonic)


def error_reply(cmd: Cmd, code: int, message: str) -> Reply:
    return Reply(cmd.tag, code, message, cmd.env_id, 0, 0, None, False)


class WorkerPool:
    """N worker processes holding envs with server-global ids."""

    def __init__(self, spec: WorkerSpec, config: PoolConfig | None = None):
        self.spec = spec
        self.config = config or PoolConfig()
        self.workers: list[_Worker] = []
        self.env_worker: dict[int, _Worker] = {}
        self.lost: dict[int, str] = {}  # env id -> why it is gone (worker died)
        self.screen_shape: tuple[int, int] | None = None
        self._tags = itertools.count(1)
        self._env_ids = itertools.count(1)
        self._deadlines: list[tuple[float, int, list[tuple[_Worker, int]]]] = []
        self._seq = itertools.count()
        self._flush_scheduled = False
        self._closing = False
        self._started = False
        self._restart_delay = _RESTART_MIN_S
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task | None = None
        self._ctx = mp.get_context(self.config.start_method)
        if self.config.start_method == "forkserver":
            self._ctx.set_forkserver_preload(["env_server.worker"])

    # ------------------------------------------------------------------ lifecycle
    async def start(self, timeout: float = 60.0) -> None:
        self._loop = asyncio.get_running_loop()
        self.workers = [await self._spawn(i) for i in range(self.config.workers)]
        pings = [self.call(Op.PING, 0, None, timeout=timeout, worker=w) for w in self.workers]
        for w, reply in zip(self.workers, await asyncio.gather(*pings), strict=True):
            if reply.code != OK:
                await self.stop(1.0)
                raise RuntimeError(f"worker {w.index} failed to start: {reply.message}")
        self._sweeper = asyncio.create_task(self._sweep(), name="pool-deadlines")
        self._started = True

    async def _spawn(self, index: int) -> _Worker:
        parent, child = socket.socketpair()
        proc = self._ctx.Process(target=worker_main, args=(child, self.spec, index),
                                 name=f"env-worker-{index}", daemon=True)
        await asyncio.to_thread(proc.start)
        child.close()
        parent.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=2**20)
        w = _Worker(index, proc, reader, writer)
        w.task = asyncio.create_task(self._read_loop(w), name=f"worker-{index}-reader")
        log.info("worker %d started (pid %s)", index, proc.pid)
        return w

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask every worker to close its envs and exit; kill the ones that do not in time."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for w in self.workers:
            if w.alive:
                w.outbox.append(Cmd(next(self._tags), Op.SHUTDOWN, 0, None, 0, 0, 0.0, (0, 0)))
        self._flush()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            left = max(0.0, deadline - time.monotonic())
            await asyncio.to_thread(w.process.join, left)
            if w.process.is_alive():
                log.warning("worker %d did not exit in time; killing it", w.index)
                w.process.kill()
                await asyncio.to_thread(w.process.join, 2.0)
            self._fail_worker(w, UNAVAILABLE, "the server is shutting down")
            w.writer.close()
            if w.task is not None:
                w.task.cancel()

    # ------------------------------------------------------------------ envs
    @property
    def num_envs(self) -> int:
        return len(self.env_worker)

    @property
    def live_workers(self) -> int:
        return sum(w.alive for w in self.workers)

    def allocate(self, n: int) -> list[int]:
        """Reserve ids for ``n`` new envs, each placed on the least loaded live worker.

        Returns fewer ids than asked when ``max_envs`` would be exceeded.
        """
        n = max(0, min(n, self.config.max_envs - len(self.env_worker)))
        live = [w for w in self.workers if w.alive]
        ids = []
        for _ in range(n if live else 0):
            w = min(live, key=lambda w: len(w.envs))
            env_id = next(self._env_ids)
            w.envs.add(env_id)
            self.env_worker[env_id] = w
            ids.append(env_id)
        return ids

    def _forget(self, env_id: int) -> None:
        w = self.env_worker.pop(env_id, None)
        if w is not None:
            w.envs.discard(env_id)

    # ------------------------------------------------------------------ commands
    def submit(self, items: Sequence[Item], sink: Sink, *, shot: int = Shot.NONE,
               fmt: int = Fmt.TUPLE, deadline: float = 0.0) -> None:
        """Queue ``items`` for their workers; ``sink`` later receives every (cmd, reply) pair.

        Items for unknown envs are answered immediately (synchronously, before returning).
        CREATE items must use ids from :meth:`allocate`.
        """
        immediate: list[tuple[Cmd, Reply]] = []
        tracked: list[tuple[_Worker, int]] = []
        for op, env_id, arg, meta in items:
            cmd = Cmd(next(self._tags), op, env_id, arg, shot, fmt, deadline, meta)
            w = self.env_worker.get(env_id)
            if w is None or not w.alive:
                why = self.lost.get(env_id) or f"env {env_id} does not exist"
                code = UNAVAILABLE if self._closing else NOT_FOUND
                immediate.append((cmd, error_reply(cmd, code, why)))
                continue
            if op == Op.CLOSE:
                self._forget(env_id)
            w.outbox.append(cmd)
            w.pending[cmd.tag] = (sink, cmd)
            tracked.append((w, cmd.tag))
        if tracked:
            if deadline:
                heapq.heappush(self._deadlines, (deadline + _EXPIRY_SLACK_S, next(self._seq), tracked))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
        if immediate:
            sink(immediate)

    async def call(self, op: int, env_id: int, arg=None, *, shot: int = Shot.NONE,
                   fmt: int = Fmt.TUPLE, timeout: float | None = None,
                   worker: _Worker | None = None) -> Reply:
        """One command, awaited (used by the dm_env_rpc service and for control messages)."""
        fut = self._loop.create_future()

        def sink(pairs: list[tuple[Cmd, Reply]]) -> None:
            if not fut.done():
                fut.set_result(pairs[0][1])

        deadline = time.monotonic() + timeout if timeout else 0.0
        if worker is not None:  # control message to a specific worker
            cmd = Cmd(next(self._tags), op, env_id, arg, shot, fmt, deadline, (0, 0))
            worker.outbox.append(cmd)
            worker.pending[cmd.tag] = (sink, cmd)
            if deadline:
                heapq.heappush(self._deadlines, (deadline, next(self._seq), [(worker, cmd.tag)]))
            self._flush()
        else:
            self.submit([(op, env_id, arg, (0, 0))], sink, shot=shot, fmt=fmt, deadline=deadline)
        return await fut

    async def stats(self, timeout: float = 5.0) -> list[dict]:
        replies = await asyncio.gather(*(self.call(Op.PING, 0, None, timeout=timeout, worker=w)
                                         for w in self.workers if w.alive))
        return [r.payload for r in replies if r.code == OK]

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.alive and w.process.pid]

    # ------------------------------------------------------------------ io
    def _flush(self) -> None:
        self._flush_scheduled = False
        for w in self.workers:
            if w.outbox and w.alive:
                w.writer.write(encode(w.outbox))
                w.outbox = []

    async def _read_loop(self, w: _Worker) -> None:
        try:
            while True:
                header = await w.reader.readexactly(HEADER_BYTES)
                data = await w.reader.readexactly(int.from_bytes(header, "big"))
                self._dispatch(w, pickle.loads(data))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            return
        await self._on_worker_exit(w)

    def _dispatch(self, w: _Worker, replies: list[Reply]) -> None:
        by_sink: dict[Sink, list[tuple[Cmd, Reply]]] = {}
        for reply in replies:
            entry = w.pending.pop(reply.tag, None)
            if entry is None:
                continue  # already answered (deadline expired) - the result arrived too late
            sink, cmd = entry
            if cmd.op == Op.CREATE:
                if reply.code != OK:
                    self._forget(cmd.env_id)
                elif self.screen_shape is None and reply.payload:
                    self.screen_shape = tuple(reply.payload)
            by_sink.setdefault(sink, []).append((cmd, reply))
        for sink, pairs in by_sink.items():
            try:
                sink(pairs)
            except Exception:
                log.exception("result sink failed")

    async def _sweep(self) -> None:
        heap = self._deadlines
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, tracked = heapq.heappop(heap)
                by_sink: dict[Sink, list[tuple[Cmd, Reply]]] = {}
                for w, tag in tracked:
                    entry = w.pending.pop(tag, None)
                    if entry is not None:
                        sink, cmd = entry
                        reply = error_reply(cmd, DEADLINE_EXCEEDED,
                                            f"{Op(cmd.op).name.lower()} of env {cmd.env_id} did not "
                                            "finish before its deadline (it may still run)")
                        by_sink.setdefault(sink, []).append((cmd, reply))
                for sink, pairs in by_sink.items():
                    sink(pairs)
            wait = min(_SWEEP_MAX_S, heap[0][0] - now) if heap else _SWEEP_MAX_S
            await asyncio.sleep(max(wait, 0.001))

    # ------------------------------------------------------------------ supervision
    def _fail_worker(self, w: _Worker, code: int, message: str) -> None:
        w.alive = False
        pending, w.pending = w.pending, {}
        by_sink: dict[Sink, list[tuple[Cmd, Reply]]] = {}
        for sink, cmd in pending.values():
            if cmd.op != Op.SHUTDOWN:
                by_sink.setdefault(sink, []).append((cmd, error_reply(cmd, code, message)))
        for sink, pairs in by_sink.items():
            sink(pairs)

    async def _on_worker_exit(self, w: _Worker) -> None:
        if self._closing or not w.alive:
            return
        await asyncio.to_thread(w.process.join, 1.0)
        why = f"worker {w.index} died (exit code {w.process.exitcode})"
        log.error("%s with %d envs", why, len(w.envs))
        self._fail_worker(w, UNAVAILABLE, why)
        for env_id in list(w.envs):
            self.lost[env_id] = f"env {env_id} was lost: {why}"
            self._forget(env_id)
        w.writer.close()
        if not (self.config.restart_workers and self._started):
            return
        if time.monotonic() - w.started_at < 10.0:  # dying young: back off
            await asyncio.sleep(self._restart_delay)
            self._restart_delay = min(self._restart_delay * 2, _RESTART_MAX_S)
        else:
            self._restart_delay = _RESTART_MIN_S
        if not self._closing:
            self.workers[w.index] = await self._spawn(w.index)
