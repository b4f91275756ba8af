"""``FleetClient``: the ``BatchedClient`` API over one or more servers that survives their loss.

Envs are spread over the servers in proportion to their worker counts. Fleet env ids are the
client's own, stable for the fleet's lifetime; results are translated back to them (``request_id``,
``index`` and ``episode_id`` too), so callers cannot tell one server from many, nor a recreated env
from the original.

When a server's stream breaks (server killed, restarted or shut down):

- every item still outstanding on it is answered at once: a step of a running episode comes back
  ``ABORTED`` with ``truncated`` set (the episode is over), a reset comes back ``ABORTED`` +
  ``truncated`` (reset again), a close comes back OK, a create is retried elsewhere;
- running episodes with nothing outstanding are truncated on their next step (answered locally);
- the next reset of such an env recreates it on the remaining servers or, when none is left, on
  the first server that comes back within the :class:`Backoff` schedule (so a one-address fleet
  is a client that reconnects after a server restart). :meth:`FleetClient.rejoin` brings a lost
  server back for new envs.

Episode ids keep counting across recreation, so ``(env_id, episode_id, step_index)`` never repeats.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

import grpc

from env_server.client import (
    Backoff,
    BatchedClient,
    EnvError,
    PendingBatch,
    StepResult,
    TaskLike,
)
from env_server.types import Observation

log = logging.getLogger(__name__)

ABORTED, UNAVAILABLE = grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE
# stream errors after which the server (or our connection to it) is gone, not our request
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
DEFAULT_BACKOFF = Backoff()


class FleetUnavailable(ConnectionError):
    """No server of the fleet could be reached within the reconnection schedule."""


class _Sub:
    """The part of one fleet request sent to one server."""

    __slots__ = ("batch", "fids", "kind", "left", "positions", "rid")

    def __init__(self, rid: int, kind: str, positions: list[int], fids: list[int],
                 batch: PendingBatch | None):
        self.rid, self.kind, self.positions, self.fids, self.batch = rid, kind, positions, fids, batch
        self.left = len(positions)


class FleetClient:
    """Spreads envs over ``addresses``; other keywords go to each :class:`BatchedClient`.

    ``reconnect``: how long to keep trying when no server is reachable (None: give up at once).
    """

    def __init__(self, addresses: Sequence[str], *, reconnect: Backoff | None = DEFAULT_BACKOFF,
                 **client_kwargs):
        if not addresses:
            raise ValueError("a fleet needs at least one server address")
        self.addresses = list(addresses)
        self.reconnect = reconnect
        self._kw = client_kwargs
        self._timeout = client_kwargs.get("timeout", 60.0)
        self._cond = threading.Condition(threading.RLock())
        self._ready: deque[StepResult] = deque()
        self._ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._route: dict[int, tuple[int, int]] = {}  # fleet id -> (client index, server env id)
        self._back: dict[tuple[int, int], int] = {}
        self._base: dict[int, int] = {}  # fleet id -> episodes before its current server env
        self._pos: dict[int, tuple[int, int, bool]] = {}  # fleet id -> (episode, step, running)
        self._cut: dict[int, tuple[int, int, str]] = {}  # truncations to report on the next step
        self._homeless: set[int] = set()  # envs whose server was lost; placed again on reset
        self._subs: dict[tuple[BatchedClient, int], _Sub] = {}
        self._orphans: dict[BatchedClient, list] = {}
        self._fatal: BaseException | None = None
        self._closing = False
        self.down: dict[int, str] = {}  # client index -> why it is out of the fleet
        self.clients: list[BatchedClient | None] = [None] * len(self.addresses)
        self.weights = [1] * len(self.addresses)
        self._count = [0] * len(self.addresses)
        for ci in range(len(self.addresses)):
            timeout = client_kwargs.get("connect_timeout", 30.0)
            try:
                self._connect(ci, timeout)
            except grpc.FutureTimeoutError:
                self.shutdown()
                raise FleetUnavailable(f"could not connect to env server {self.addresses[ci]} "
                                       f"within {timeout}s") from None

    # ------------------------------------------------------------------ connections
    def _connect(self, ci: int, connect_timeout: float | None) -> None:
        box: list[BatchedClient] = []
        kw = {**self._kw, "connect_timeout": connect_timeout}
        client = BatchedClient(self.addresses[ci], sink=lambda rs: self._on_results(ci, box[0], rs),
                               on_error=lambda err, out: self._on_error(ci, box[0], err, out), **kw)
        box.append(client)
        try:
            self.weights[ci] = max(1, client.info(timeout=connect_timeout or 10.0).workers)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                client.shutdown()
                raise
        with self._cond:
            self.clients[ci] = client
            self.down.pop(ci, None)

    def _revive(self, schedule: Backoff | None) -> bool:
        """Reconnect to any lost server, waiting between rounds per ``schedule``."""
        rounds = list(schedule.delays()) if schedule else []
        timeout = schedule.connect_timeout_s if schedule else 1.0
        for k, delay in enumerate([0.0, *rounds]):
            if k:
                log.warning("no env server reachable; retry %d/%d in %.2fs", k, len(rounds), delay)
                time.sleep(delay)
            for ci in sorted(self.down):
                try:
                    self._connect(ci, timeout)
                except (grpc.FutureTimeoutError, grpc.RpcError):
                    continue
                log.warning("reconnected to env server %s", self.addresses[ci])
                return True
            if not schedule:
                break
        return False

    def rejoin(self) -> list[str]:
        """Try each lost server once (for new envs and future moves); returns those back."""
        back = []
        for ci in sorted(self.down):
            try:
                self._connect(ci, self.reconnect.connect_timeout_s if self.reconnect else 1.0)
                back.append(self.addresses[ci])
            except (grpc.FutureTimeoutError, grpc.RpcError):
                pass
        return back

    def _live(self) -> list[int]:
        return [ci for ci in range(len(self.clients)) if ci not in self.down]

    def _need_live(self) -> list[int]:
        live = self._live()
        if live:
            return live
        if self._revive(self.reconnect):
            return self._live()
        raise FleetUnavailable(
            f"no env server reachable after {self.reconnect.attempts if self.reconnect else 0} "
            f"reconnection attempts: " + "; ".join(self.down.values()))

    # ------------------------------------------------------------------ results
    def _on_results(self, ci: int, client: BatchedClient, results: list[StepResult]) -> None:
        with self._cond:
            for r in results:
                key = (client, r.request_id)
                sub = self._subs.get(key)
                if sub is None:
                    self._ready.append(r)  # a stream-level error not tied to a request of ours
                    continue
                sub.left -= 1
                if sub.left <= 0:
                    del self._subs[key]
                self._deliver(sub, self._translate(ci, sub, r))
            self._cond.notify_all()

    def _deliver(self, sub: _Sub, result: StepResult) -> None:
        if sub.batch is not None:
            sub.batch._add(result)
        else:
            self._ready.append(result)

    def _translate(self, ci: int, sub: _Sub, r: StepResult) -> StepResult:
        index = sub.positions[r.index] if 0 <= r.index < len(sub.positions) else r.index
        if sub.kind == "create":  # the caller maps server ids to fleet ids
            return replace(r, request_id=sub.rid, index=index)
        fid = sub.fids[r.index] if 0 <= r.index < len(sub.fids) else 0
        ep = r.episode_id + self._base.get(fid, 0) if r.episode_id else 0
        if r.kind in ("step", "reset"):
            if r.ok:
                self._pos[fid] = (ep, r.step_index, not r.done)
            elif r.truncated:
                self._pos[fid] = (ep, r.step_index, False)
        return replace(r, env_id=fid, request_id=sub.rid, index=index, episode_id=ep)

    def _local(self, kind: str, fid: int, rid: int, index: int, code: grpc.StatusCode,
               message: str, truncated: bool = False) -> StepResult:
        """A result made by the fleet itself (the server that had the env is gone)."""
        ep, st, _ = self._pos.get(fid, (0, 0, False))
        obs = None
        if truncated:
            if kind == "step":
                st += 1
            self._pos[fid] = (ep, st, False)
            obs = Observation("", "", truncated=True, error=message, step=st,
                              info={"truncated_by": "server_lost"})
        return StepResult(fid, ep, st, kind, code, message, obs, rid, index)

    def _lost(self, kind: str, fid: int, rid: int, index: int, why: str) -> StepResult:
        """The answer to an item whose server went away before answering it."""
        if kind == "create":
            return StepResult(0, 0, 0, kind, UNAVAILABLE, why, None, rid, index)
        if kind == "close":
            return StepResult(fid, 0, 0, kind, grpc.StatusCode.OK, f"closed ({why})", None, rid, index)
        ep, st, running = self._pos.get(fid, (0, 0, False))
        if kind == "reset":
            return self._local(kind, fid, rid, index, ABORTED,
                               f"reset of env {fid} was interrupted: {why}; reset it again", True)
        if running:
            return self._local(kind, fid, rid, index, ABORTED,
                               f"episode {ep} of env {fid} was truncated after step {st}: {why}; "
                               "reset the env to continue (it is recreated)", True)
        return self._local(kind, fid, rid, index, grpc.StatusCode.FAILED_PRECONDITION,
                           f"env {fid} has no running episode ({why}); reset it first")

    def _on_error(self, ci: int, client: BatchedClient, error: grpc.RpcError,
                  outstanding: list[PendingBatch]) -> None:
        with self._cond:
            if self._closing:
                return
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
            details = error.details() if hasattr(error, "details") else str(error)
            why = f"server {self.addresses[ci]} was lost ({code.name}: {details})"
            log.error("%s; %d requests outstanding", why, len(outstanding))
            if code not in RETRYABLE and self._fatal is None:
                self._fatal = error
            if self.clients[ci] is client:
                self.down[ci] = why
                for fid, (c, _sid) in self._route.items():
                    if c == ci:
                        self._homeless.add(fid)
            for batch in sorted(outstanding, key=lambda b: b.request_id):
                sub = self._subs.pop((client, batch.request_id), None)
                if sub is None:
                    continue
                for i, _sid in batch.missing():
                    fid = sub.fids[i] if sub.kind != "create" else 0
                    self._deliver(sub, self._lost(sub.kind, fid, sub.rid, sub.positions[i], why))
            for sub, i in self._orphans.pop(client, []):
                fid = sub.fids[i] if sub.kind != "create" else 0
                self._deliver(sub, self._lost(sub.kind, fid, sub.rid, sub.positions[i], why))
            for fid in list(self._homeless):
                ep, st, running = self._pos.get(fid, (0, 0, False))
                if running and self._route.get(fid, (None,))[0] == ci:
                    self._cut[fid] = (ep, st, why)
            self._cond.notify_all()
        # runs on the client's reader thread, which shutdown() joins: close it from another thread
        threading.Thread(target=client.shutdown, kwargs={"timeout": 2.0}, daemon=True).start()

    # ------------------------------------------------------------------ placement
    def _create_on(self, plan: dict[int, int], timeout: float | None) -> list[tuple[int, StepResult]]:
        """Create ``plan[ci]`` envs on each server; returns (client index, result) in plan order."""
        total = sum(plan.values())
        fleet_batch = PendingBatch(next(self._rids), "create", [0] * total, timeout)
        owners: list[int] = []
        with self._cond:
            for ci, k in plan.items():
                if not k:
                    continue
                positions = list(range(len(owners), len(owners) + k))
                owners += [ci] * k
                sub = _Sub(fleet_batch.request_id, "create", positions, [0] * k, fleet_batch)
                client = self.clients[ci]
                try:
                    batch = client.create_async(k, timeout, collect=False)
                    self._subs[(client, batch.request_id)] = sub
                except grpc.RpcError:
                    self._orphans.setdefault(client, []).extend((sub, i) for i in range(k))
        results = fleet_batch.result()
        return list(zip(owners, results, strict=True))

    def _plan(self, n: int, live: list[int]) -> dict[int, int]:
        plan = dict.fromkeys(live, 0)
        for _ in range(n):
            ci = min(live, key=lambda i: (self._count[i] + plan[i]) / self.weights[i])
            plan[ci] += 1
        return plan

    def _place(self, fids: list[int], timeout: float | None) -> None:
        """Recreate homeless envs on live servers (reconnecting if there are none)."""
        fids = [f for f in dict.fromkeys(fids) if f in self._homeless]
        for _ in range(len(self.addresses) + 1):
            if not fids:
                return
            made = self._create_on(self._plan(len(fids), self._need_live()), timeout)
            left = []
            with self._cond:
                for fid, (ci, r) in zip(fids, made, strict=True):
                    if not r.ok:
                        left.append(fid)
                        continue
                    old_ci, old_sid = self._route[fid]
                    self._back.pop((old_ci, old_sid), None)
                    self._count[old_ci] -= 1
                    self._route[fid] = (ci, r.env_id)
                    self._back[(ci, r.env_id)] = fid
                    self._count[ci] += 1
                    self._base[fid] = self._pos.get(fid, (0, 0, False))[0]
                    self._homeless.discard(fid)
                    log.info("env %d moved to %s", fid, self.addresses[ci])
            fids = left
        raise FleetUnavailable(f"could not recreate envs {fids[:8]} on any server")

    # ------------------------------------------------------------------ requests
    def _check_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _fanout(self, method: str, kind: str, env_ids: Sequence[int], values: Sequence,
                collect: bool, **kw) -> PendingBatch:
        if len(values) != len(env_ids):
            raise ValueError(f"{len(env_ids)} env ids but {len(values)} values")
        self._check_fatal()
        for fid in env_ids:
            if fid not in self._route:
                raise KeyError(f"env {fid} is not part of this fleet")
        if kind == "reset" and self._homeless:
            self._place([f for f in env_ids if f in self._homeless], kw.get("timeout"))
        fleet_batch = PendingBatch(next(self._rids), kind, env_ids, kw.get("timeout", self._timeout),
                                   collect)
        rid = fleet_batch.request_id
        target = fleet_batch if collect else None
        with self._cond:
            groups: dict[int, list[int]] = {}
            for pos, fid in enumerate(env_ids):
                if self._cut and fid in self._cut:
                    ep, st, why = self._cut.pop(fid)
                    if kind == "step":
                        self._pos[fid] = (ep, st, True)
                        self._emit(target, self._lost("step", fid, rid, pos, why))
                        continue
                if fid in self._homeless:  # only steps get here (resets were placed above)
                    self._emit(target, self._lost(kind, fid, rid, pos, self.down.get(
                        self._route[fid][0], "its server was lost")))
                    continue
                groups.setdefault(self._route[fid][0], []).append(pos)
            for ci, positions in groups.items():
                sids = [self._route[env_ids[p]][1] for p in positions]
                sub = _Sub(rid, kind, positions, [env_ids[p] for p in positions], target)
                client = self.clients[ci]
                try:
                    if kind == "close":
                        batch = client.close_async(sids, kw.get("timeout"), collect=False)
                    else:
                        batch = getattr(client, method)(sids, [values[p] for p in positions],
                                                        collect=False, **kw)
                    self._subs[(client, batch.request_id)] = sub
                except grpc.RpcError:  # broken just now: answered when its error is handled
                    self._orphans.setdefault(client, []).extend((sub, i) for i in range(len(positions)))
            self._cond.notify_all()
        return fleet_batch

    def _emit(self, target: PendingBatch | None, result: StepResult) -> None:
        if target is not None:
            target._add(result)
        else:
            self._ready.append(result)

    # ------------------------------------------------------------------ API
    def create(self, n: int, timeout: float | None = None) -> list[int]:
        """Create ``n`` envs spread over the servers by weight; returns fleet env ids."""
        self._check_fatal()
        ids: list[int] = []
        todo = n
        for _ in range(len(self.addresses) + 1):
            failed, errors = 0, []
            for ci, r in self._create_on(self._plan(todo, self._need_live()), timeout):
                if r.ok:
                    with self._cond:
                        fid = next(self._ids)
                        self._route[fid] = (ci, r.env_id)
                        self._back[(ci, r.env_id)] = fid
                        self._count[ci] += 1
                    ids.append(fid)
                elif r.code == UNAVAILABLE:
                    failed += 1
                else:
                    errors.append(r)
            if errors:
                raise EnvError(errors)
            if not failed:
                return ids
            todo = failed
        raise FleetUnavailable(f"created only {len(ids)} of {n} envs: servers kept failing")

    def reset(self, env_ids: Sequence[int], tasks: Sequence[TaskLike], **kw) -> list[StepResult]:
        return self._fanout("reset_async", "reset", env_ids, tasks, True, **kw).result()

    def step(self, env_ids: Sequence[int], actions: Sequence[str], **kw) -> list[StepResult]:
        return self._fanout("step_async", "step", env_ids, actions, True, **kw).result()

    def send(self, env_ids: Sequence[int], actions: Sequence[str], **kw) -> None:
        self._fanout("step_async", "step", env_ids, actions, False, **kw)

    def send_reset(self, env_ids: Sequence[int], tasks: Sequence[TaskLike], **kw) -> None:
        self._fanout("reset_async", "reset", env_ids, tasks, False, **kw)

    def recv(self, min_results: int = 1, *, max_results: int | None = None,
             timeout: float | None = None) -> list[StepResult]:
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._ready) < min_results and self._fatal is None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            if not self._ready:
                self._check_fatal()
            n = len(self._ready) if max_results is None else min(max_results, len(self._ready))
            return [self._ready.popleft() for _ in range(n)]

    def close(self, env_ids: Sequence[int] | None = None) -> list[StepResult]:
        env_ids = list(self._route) if env_ids is None else list(env_ids)
        batch = self._fanout("close_async", "close", env_ids, [None] * len(env_ids), True)
        results = batch.result()
        with self._cond:
            for fid in env_ids:
                ci, sid = self._route.pop(fid)
                self._back.pop((ci, sid), None)
                self._count[ci] -= 1
                for table in (self._base, self._pos, self._cut):
                    table.pop(fid, None)
                self._homeless.discard(fid)
        return results

    @property
    def env_ids(self) -> list[int]:
        return list(self._route)

    def server_of(self, env_id: int) -> str:
        return self.addresses[self._route[env_id][0]]

    def shutdown(self) -> None:
        with self._cond:
            self._closing = True
            clients = [c for c in self.clients if c is not None]
        for c in clients:
            c.shutdown()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
