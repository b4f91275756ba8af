"""The server side of the workers: process supervision, env placement, batching and deadlines.

Everything here runs on the server's asyncio loop and never blocks it: commands are queued per
worker and flushed as one frame at the end of the current loop iteration; replies arrive on a
reader task per worker and are handed to the caller's *sink* (a plain callback), grouped per
sink, so a request of 64 items costs a handful of IPC frames and no per-item futures.

Faults (see docs/reliability.md):

- every item has a deadline; an item its worker has not answered by then is answered
  ``DEADLINE_EXCEEDED`` by the sweeper (workers cancel a call running past its deadline themselves);
- a worker whose current item is ``hung_worker_s`` past its deadline is killed (SIGKILL);
- a worker that dies is restarted and its envs are recreated under the same ids. Episodes that
  were running are truncated: the step in flight (or the env's next step) is answered ``ABORTED``
  with a truncated observation. Creates and resets in flight are re-run on the new worker (they
  never reached the client, and a reset does not depend on the lost state), in the order sent;
- a create or reset that was running when its worker died and is running again when the
  replacement dies too (a "poison" item, e.g. a task whose reset crashes the backend) is answered
  ``INTERNAL`` instead of being re-run a third time, so one bad task cannot crash-loop a worker
  (and stall every env on it) until the deadlines run out.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import multiprocessing as mp
import pickle
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from env_server.ipc import HEADER_BYTES, Cmd, Fmt, Op, Reply, Shot, encode
from env_server.wire import result_bytes, truncated_wire
from env_server.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)

# grpc status code values
OK, DEADLINE_EXCEEDED, NOT_FOUND, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE = (
    0, 4, 5, 8, 10, 13, 14)

Item = tuple[int, int, object, tuple[int, int]]  # (op, env_id, arg, meta)
Sink = Callable[[list[tuple[Cmd, Reply]]], None]

_EXPIRY_SLACK_S = 0.2  # the worker answers (and cancels) at the deadline; the sweeper is the backstop
_SWEEP_MAX_S = 0.1
_YOUNG_S = 10.0  # a worker dying sooner than this after its start is restarted with a back-off
_KIND = {Op.CREATE: 1, Op.RESET: 2, Op.STEP: 3, Op.CLOSE: 4, Op.PING: 0, Op.SHUTDOWN: 0}
_COMPACT_MIN = 4096  # deadline entries kept before answered ones are pruned (see _compact)


@dataclass
class PoolConfig:
    workers: int = 2
    start_method: str = "forkserver"  # or "spawn"
    max_envs: int = 4096
    restart_workers: bool = True
    item_timeout_s: float = 60.0  # deadline of items submitted without one
    hung_worker_s: float = 5.0  # kill a worker whose current item is this long past its deadline
    restart_min_s: float = 0.5  # back-off between restarts of a worker that keeps dying young
    restart_max_s: float = 30.0


@dataclass(eq=False)
class _Worker:
    """One worker slot; its process is replaced on restart, the slot (and its envs) stay."""

    index: int
    process: mp.process.BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[int, tuple[Sink, Cmd]] = field(default_factory=dict)
    outbox: list[Cmd] = field(default_factory=list)
    envs: set[int] = field(default_factory=set)
    inflight: deque[tuple[int, float]] = field(default_factory=deque)  # (tag, deadline) sent, unanswered
    expired: dict[int, int] = field(default_factory=dict)  # tag -> op of items the sweeper answered
    task: asyncio.Task | None = None
    alive: bool = True
    started_at: float = field(default_factory=time.monotonic)
    kill_reason: str = ""
    restarts: int = 0


def error_reply(cmd: Cmd, code: int, message: str) -> Reply:
    return Reply(cmd.tag, code, message, cmd.env_id, 0, 0, None, False)


def truncated_reply(cmd: Cmd, code: int, episode_id: int, step_index: int, message: str,
                    cause: str) -> Reply:
    """A reply that ends the env's episode: truncated observation, non-OK ``code``."""
    obs = truncated_wire(message, cause)
    if cmd.fmt == Fmt.PROTO:
        payload = result_bytes(cmd.meta, _KIND[cmd.op], cmd.env_id, episode_id, step_index, code,
                               message, obs)
    else:
        payload = obs
    return Reply(cmd.tag, code, message, cmd.env_id, episode_id, step_index, payload, True)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class WorkerPool:
    """N worker processes holding envs with server-global ids."""

    def __init__(self, spec: WorkerSpec, config: PoolConfig | None = None):
        self.spec = spec
        self.config = config or PoolConfig()
        self.workers: list[_Worker] = []
        self.env_worker: dict[int, _Worker] = {}
        # env id -> (episode id, step index, episode running) as last reported to a client
        self.env_pos: dict[int, tuple[int, int, bool]] = {}
        self.env_args: dict[int, object] = {}  # backend kwargs given at create (to recreate)
        self.cut: dict[int, tuple[int, int, str]] = {}  # truncations to report on the next step
        self.lost: dict[int, str] = {}  # env id -> why it is gone (worker died, not restarted)
        self.suspects: dict[int, int] = {}  # item tag -> worker deaths it was running at (create/reset)
        self.restarts = 0
        self.screen_shape: tuple[int, int] | None = None
        self._tags = itertools.count(1)
        self._env_ids = itertools.count(1)
        self._deadlines: list[tuple[float, int, list[tuple[_Worker, int]]]] = []
        self._compact_at = _COMPACT_MIN
        self._seq = itertools.count()
        self._flush_scheduled = False
        self._closing = False
        self._started = False
        self._restart_delay = self.config.restart_min_s
        self._loop: asyncio.AbstractEventLoop | None = None
        # called with the number of live workers whenever a worker dies or is replaced
        self.on_workers_changed: Callable[[int], None] | None = None
        self._sweeper: asyncio.Task | None = None
        self._ctx = mp.get_context(self.config.start_method)
        if self.config.start_method == "forkserver":
            self._ctx.set_forkserver_preload(["env_server.worker"])

    # ------------------------------------------------------------------ lifecycle
    async def start(self, timeout: float = 60.0) -> None:
        self._loop = asyncio.get_running_loop()
        self.workers = []
        for i in range(self.config.workers):
            w = _Worker(i, *await self._spawn(i))
            w.task = asyncio.create_task(self._read_loop(w, w.reader), name=f"worker-{i}-reader")
            self.workers.append(w)
        pings = [self.call(Op.PING, 0, None, timeout=timeout, worker=w) for w in self.workers]
        self._sweeper = asyncio.create_task(self._sweep(), name="pool-deadlines")
        for w, reply in zip(self.workers, await asyncio.gather(*pings), strict=True):
            if reply.code != OK:
                await self.stop(1.0)
                raise RuntimeError(f"worker {w.index} failed to start: {reply.message}")
        self._started = True

    async def _spawn(self, index: int):
        parent, child = socket.socketpair()
        proc = self._ctx.Process(target=worker_main, args=(child, self.spec, index),
                                 name=f"env-worker-{index}", daemon=True)
        try:
            await asyncio.to_thread(proc.start)
        finally:
            child.close()
        parent.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=2**20)
        log.info("worker %d started (pid %s)", index, proc.pid)
        return proc, reader, writer

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
    def _restarting(self) -> bool:
        """Dead workers are replaced (so items for their envs wait for the new process)."""
        return self.config.restart_workers and self._started

    @property
    def num_envs(self) -> int:
        return len(self.env_worker)

    @property
    def live_workers(self) -> int:
        return sum(w.alive for w in self.workers)

    def _workers_changed(self) -> None:
        if self.on_workers_changed is not None and not self._closing:
            try:
                self.on_workers_changed(self.live_workers)
            except Exception:  # a status hook must never take the pool down
                log.exception("on_workers_changed hook failed")

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
        self.env_pos.pop(env_id, None)
        self.env_args.pop(env_id, None)
        self.cut.pop(env_id, None)

    # ------------------------------------------------------------------ commands
    def submit(self, items: Sequence[Item], sink: Sink, *, shot: int = Shot.NONE,
               fmt: int = Fmt.TUPLE, deadline: float = 0.0) -> None:
        """Queue ``items`` for their workers; ``sink`` later receives every (cmd, reply) pair.

        Items for unknown envs (and steps of episodes the pool truncated) are answered immediately
        (synchronously, before returning). CREATE items must use ids from :meth:`allocate`. Items of
        a worker that is restarting wait for it (bounded by their deadline).
        """
        deadline = deadline or time.monotonic() + self.config.item_timeout_s
        immediate: list[tuple[Cmd, Reply]] = []
        tracked: list[tuple[_Worker, int]] = []
        cut = self.cut
        for op, env_id, arg, meta in items:
            cmd = Cmd(next(self._tags), op, env_id, arg, shot, fmt, deadline, meta)
            w = self.env_worker.get(env_id)
            if w is None or self._closing or not (w.alive or self._restarting):
                why = self.lost.get(env_id) or f"env {env_id} does not exist"
                if self._closing:
                    code, why = UNAVAILABLE, "the server is shutting down"
                else:  # (a dead worker not restarted: its envs are lost even before the clean-up)
                    code = NOT_FOUND
                    if w is not None:
                        why = f"env {env_id} was lost: its worker {w.index} died"
                immediate.append((cmd, error_reply(cmd, code, why)))
                continue
            if cut and env_id in cut:
                if op == Op.STEP:
                    immediate.append((cmd, self._cut_reply(cmd, *cut.pop(env_id))))
                    continue
                del cut[env_id]  # a reset or close ends the truncated episode anyway
            if op == Op.CLOSE:
                self._forget(env_id)
            elif op == Op.CREATE and arg is not None:
                self.env_args[env_id] = arg
            w.outbox.append(cmd)
            w.pending[cmd.tag] = (sink, cmd)
            tracked.append((w, cmd.tag))
        if tracked:
            heapq.heappush(self._deadlines, (deadline + _EXPIRY_SLACK_S, next(self._seq), tracked))
            if len(self._deadlines) > self._compact_at:
                self._compact()
            self._schedule_flush()
        if immediate:
            sink(immediate)

    def _compact(self) -> None:
        """Drop the answered items from the deadline heap.

        Entries stay in the heap until their deadline even when every item was answered long
        before, so without pruning the heap holds (deadline x request rate) entries: tens of MB at
        thousands of steps/s with a 60 s deadline. Pruning whenever it doubles keeps it within
        twice the unanswered items, at amortised O(1) per request.
        """
        kept = []
        for deadline, seq, tracked in self._deadlines:
            live = [(w, tag) for w, tag in tracked if tag in w.pending]
            if live:
                kept.append((deadline, seq, live))
        heapq.heapify(kept)
        self._deadlines = kept
        self._compact_at = max(_COMPACT_MIN, 2 * len(kept))

    def _cut_reply(self, cmd: Cmd, episode_id: int, step_index: int, why: str) -> Reply:
        self.env_pos[cmd.env_id] = (episode_id, step_index + 1, False)
        return truncated_reply(
            cmd, ABORTED, episode_id, step_index + 1,
            f"episode {episode_id} of env {cmd.env_id} was truncated after step {step_index}: {why}; "
            "the env was recreated, reset it to continue", "worker_lost")

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def call(self, op: int, env_id: int, arg=None, *, shot: int = Shot.NONE,
                   fmt: int = Fmt.TUPLE, timeout: float | None = None,
                   worker: _Worker | None = None) -> Reply:
        """One command, awaited (used by the dm_env_rpc service and for control messages)."""
        fut = self._loop.create_future()

        def sink(pairs: list[tuple[Cmd, Reply]]) -> None:
            if not fut.done():
                fut.set_result(pairs[0][1])

        deadline = time.monotonic() + (timeout or self.config.item_timeout_s)
        if worker is not None:  # control message to a specific worker
            cmd = Cmd(next(self._tags), op, env_id, arg, shot, fmt, deadline, (0, 0))
            worker.outbox.append(cmd)
            worker.pending[cmd.tag] = (sink, cmd)
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
                w.inflight.extend((c.tag, c.deadline) for c in w.outbox)
                w.outbox = []

    async def _read_loop(self, w: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(HEADER_BYTES)
                data = await reader.readexactly(int.from_bytes(header, "big"))
                self._dispatch(w, pickle.loads(data))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            return
        await self._on_worker_exit(w)

    def _dispatch(self, w: _Worker, replies: list[Reply]) -> None:
        if not replies:
            return
        inflight = w.inflight
        for _ in range(min(len(replies), len(inflight))):  # one reply per command, in order sent
            inflight.popleft()
        by_sink: dict[Sink, list[tuple[Cmd, Reply]]] = {}
        env_pos = self.env_pos
        for reply in replies:
            entry = w.pending.pop(reply.tag, None)
            if entry is None:
                self._late(w, reply)
                continue
            sink, cmd = entry
            op = cmd.op
            if op == Op.STEP or op == Op.RESET:
                if reply.code == OK:
                    env_pos[cmd.env_id] = (reply.episode_id, reply.step_index, not reply.done)
                elif reply.done:  # the worker cancelled the call: the episode is over
                    env_pos[cmd.env_id] = (reply.episode_id, reply.step_index, False)
            elif op == Op.CREATE:
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

    def _late(self, w: _Worker, reply: Reply) -> None:
        """A reply for an item already answered DEADLINE_EXCEEDED (or one nobody waits for)."""
        op = w.expired.pop(reply.tag, None)
        env_id = reply.env_id
        if op == Op.CREATE and reply.code == OK and env_id not in self.env_worker:
            # created after its deadline: nobody owns it, so close it on the worker
            w.outbox.append(Cmd(next(self._tags), Op.CLOSE, env_id, None, Shot.NONE, Fmt.TUPLE,
                                time.monotonic() + self.config.item_timeout_s, (0, 0)))
            self._schedule_flush()
            return
        if op not in (Op.STEP, Op.RESET) or not (reply.code == OK or reply.done):
            return  # not started, or no change the client could miss
        if env_id not in self.env_worker:
            return
        ep, st, _ = self.env_pos.get(env_id, (0, 0, False))
        why = (f"a {Op(op).name.lower()} answered DEADLINE_EXCEEDED finished after its deadline, "
               "so the env is no longer where the client saw it")
        self.cut[env_id] = (ep, st, why)

    async def _sweep(self) -> None:
        while True:
            now = time.monotonic()
            while self._deadlines and self._deadlines[0][0] <= now:  # (_compact replaces the list)
                _, _, tracked = heapq.heappop(self._deadlines)
                by_sink: dict[Sink, list[tuple[Cmd, Reply]]] = {}
                for w, tag in tracked:
                    entry = w.pending.pop(tag, None)
                    if entry is not None:
                        sink, cmd = entry
                        if cmd.op in (Op.STEP, Op.RESET, Op.CREATE):
                            w.expired[tag] = cmd.op
                        if cmd.op == Op.CREATE:
                            self._forget(cmd.env_id)
                        reply = error_reply(
                            cmd, DEADLINE_EXCEEDED,
                            f"{Op(cmd.op).name.lower()} of env {cmd.env_id} got no answer from its "
                            "worker before the deadline (worker busy, hung or restarting)")
                        by_sink.setdefault(sink, []).append((cmd, reply))
                for sink, pairs in by_sink.items():
                    sink(pairs)
            self._watchdog(now)
            heap = self._deadlines
            wait = min(_SWEEP_MAX_S, heap[0][0] - now) if heap else _SWEEP_MAX_S
            await asyncio.sleep(max(wait, 0.001))

    def _watchdog(self, now: float) -> None:
        """Kill workers stuck on an item long past its deadline (the worker failed to cancel it)."""
        limit = self.config.hung_worker_s
        for w in self.workers:
            if w.alive and w.inflight and not w.kill_reason:
                overdue = now - w.inflight[0][1]
                if overdue > limit:
                    w.kill_reason = (f"worker {w.index} hung: its current item was {overdue:.1f}s past "
                                     "its deadline, so it was killed and restarted")
                    log.error("%s (pid %s)", w.kill_reason, w.process.pid)
                    w.process.kill()

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
        w.alive = False
        self._workers_changed()
        await asyncio.to_thread(w.process.join, 1.0)
        why = w.kill_reason or f"worker {w.index} died ({_exit_text(w.process.exitcode)})"
        log.error("%s with %d envs", why, len(w.envs))
        w.writer.close()
        if self._closing:
            return
        if not (self.config.restart_workers and self._started):
            self._fail_worker(w, UNAVAILABLE, why)
            for env_id in list(w.envs):
                self.lost[env_id] = f"env {env_id} was lost: {why}"
                self._forget(env_id)
            return
        self._salvage(w, why)
        while not self._closing:
            if time.monotonic() - w.started_at < _YOUNG_S:  # dying young: back off
                await asyncio.sleep(self._restart_delay)
                self._restart_delay = min(self._restart_delay * 2, self.config.restart_max_s)
            else:
                self._restart_delay = self.config.restart_min_s
            if self._closing:
                return
            try:
                proc, reader, writer = await self._spawn(w.index)
            except Exception:
                log.exception("could not restart worker %d", w.index)
                w.started_at = time.monotonic()
                continue
            w.process, w.reader, w.writer = proc, reader, writer
            w.started_at, w.kill_reason, w.alive = time.monotonic(), "", True
            w.restarts += 1
            self.restarts += 1
            w.task = asyncio.create_task(self._read_loop(w, reader), name=f"worker-{w.index}-reader")
            self._flush()
            self._workers_changed()
            return

    def _salvage(self, w: _Worker, why: str) -> None:
        """Answer or re-queue everything the dead worker owed, and queue its envs' recreation.

        Per env, in submission order: a CREATE or RESET is re-run on the new worker; the first STEP
        of a running episode is answered ABORTED (episode truncated); later steps are re-queued (the
        new worker answers them as usual). Running episodes with no step waiting are truncated on
        their next step. Re-queued items keep the order they were sent in (recreations queued at an
        earlier death come before the items queued after them).

        Workers flush their replies before starting a create or reset, so when the oldest
        unanswered item is a create/reset it is the one that was running when the worker died. One
        found running at a second death is answered INTERNAL instead of being re-run again.
        """
        pending = list(w.pending.values())  # insertion order = the order sent to the worker
        entry = w.pending.get(w.inflight[0][0]) if w.inflight else None  # oldest sent, unanswered
        poison = self._poison(entry[1]) if entry is not None else None
        w.pending, w.outbox = {}, []
        w.inflight.clear()
        w.expired.clear()
        answers: dict[Sink, list[tuple[Cmd, Reply]]] = {}
        requeue: list[tuple[Sink, Cmd]] = []
        running: dict[int, bool] = {}  # env id -> episode still running (as the client knows it)
        created: set[int] = set()
        for sink, cmd in pending:
            op, env_id = cmd.op, cmd.env_id
            if op == Op.SHUTDOWN:
                continue
            if op == Op.PING:
                answers.setdefault(sink, []).append((cmd, error_reply(cmd, UNAVAILABLE, why)))
                continue
            if op == Op.CLOSE:  # the env is gone with its worker
                answers.setdefault(sink, []).append((cmd, error_reply(cmd, OK, f"closed ({why})")))
                continue
            if cmd is poison:
                answers.setdefault(sink, []).append((cmd, self._poison_reply(cmd, why)))
                if op == Op.CREATE:  # never made (a recreation's sink also marks it lost)
                    self._forget(env_id)
                else:
                    running[env_id] = False
                continue
            if op == Op.CREATE:
                created.add(env_id)
                requeue.append((sink, cmd))
                continue
            if env_id not in running:
                running[env_id] = self.env_pos.get(env_id, (0, 0, False))[2]
            if op == Op.RESET:
                running[env_id] = False
                requeue.append((sink, cmd))
            elif running[env_id]:  # the step in flight ends the episode
                running[env_id] = False
                ep, st, _ = self.env_pos[env_id]
                answers.setdefault(sink, []).append((cmd, self._cut_reply(cmd, ep, st, why)))
            else:
                requeue.append((sink, cmd))
        now = time.monotonic()
        recreate: list[tuple[int, Cmd]] = []
        for env_id in sorted(w.envs):
            ep, st, run = self.env_pos.get(env_id, (0, 0, False))
            if running.get(env_id, run):
                self.cut[env_id] = (ep, st, why)
            if env_id not in created:
                arg = (self.env_args.get(env_id), ep)
                cmd = Cmd(next(self._tags), Op.CREATE, env_id, arg, Shot.NONE, Fmt.TUPLE,
                          now + self.config.item_timeout_s, (0, 0))
                recreate.append((cmd.tag, cmd))
        for tag, cmd in recreate:
            w.pending[tag] = (self._recreated(why), cmd)
            w.outbox.append(cmd)
        for sink, cmd in requeue:
            w.pending[cmd.tag] = (sink, cmd)
            w.outbox.append(cmd)
        if recreate:
            heapq.heappush(self._deadlines, (now + self.config.item_timeout_s, next(self._seq),
                                             [(w, tag) for tag, _ in recreate]))
        for sink, pairs in answers.items():
            try:
                sink(pairs)
            except Exception:
                log.exception("result sink failed")

    def _poison(self, first: Cmd) -> Cmd | None:
        """``first`` (the oldest item sent to a dead worker and not answered) if it is a create or
        reset that was also running at an earlier worker death, else None (and remember it).

        Workers flush their replies before they start a create or reset, so such an item was the
        one running when the worker died.
        """
        if first.op not in (Op.CREATE, Op.RESET):
            return None
        deaths = self.suspects.pop(first.tag, 0) + 1
        if deaths >= 2:
            return first
        if len(self.suspects) > 1024:  # items that later finished normally; keep this bounded
            self.suspects.clear()
        self.suspects[first.tag] = deaths
        return None

    def _poison_reply(self, cmd: Cmd, why: str) -> Reply:
        what = f"{Op(cmd.op).name.lower()} of env {cmd.env_id}"
        if cmd.op == Op.RESET:
            family, seed, split = cmd.arg
            what += f" (task family={family!r}, seed={seed}, split={split!r})"
        message = (f"{what} was running when its worker died, and again when the replacement "
                   f"died ({why}); it is not retried again (it probably crashes the backend)")
        log.error("%s", message)
        return error_reply(cmd, INTERNAL, message)

    def _recreated(self, why: str) -> Sink:
        def sink(pairs: list[tuple[Cmd, Reply]]) -> None:
            for cmd, reply in pairs:
                if reply.code != OK:
                    self._forget(cmd.env_id)
                    self.lost[cmd.env_id] = (f"env {cmd.env_id} was lost: {why}, and recreating it "
                                             f"failed: {reply.message}")
                    log.error("%s", self.lost[cmd.env_id])
        return sink
