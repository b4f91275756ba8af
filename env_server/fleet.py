"""``FleetClient``: the ``BatchedClient`` API over several servers.

Envs are spread over the servers in proportion to their worker counts; fleet env ids are the
client's own (stable) ids and results are translated back to them, including ``request_id``
and ``index``, so callers cannot tell one server from many.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from env_server.client import BatchedClient, PendingBatch, StepResult, TaskLike, check


class FleetClient:
    """Spreads envs over ``addresses``; every keyword goes to each :class:`BatchedClient`."""

    def __init__(self, addresses: Sequence[str], **client_kwargs):
        if not addresses:
            raise ValueError("a fleet needs at least one server address")
        self._cond = threading.Condition()
        self._ready: deque[StepResult] = deque()
        self.clients = [BatchedClient(a, sink=self._sink_for(i), **client_kwargs)
                        for i, a in enumerate(addresses)]
        self.weights = [max(1, c.info().workers) for c in self.clients]
        self._ids = itertools.count(1)
        self._rids = itertools.count(1)
        self._route: dict[int, tuple[int, int]] = {}  # fleet id -> (client index, server env id)
        self._back: dict[tuple[int, int], int] = {}
        self._subs: dict[tuple[int, int], list] = {}  # (ci, rid) -> [fleet rid, positions, left]
        self._count = [0] * len(self.clients)

    # ------------------------------------------------------------------ routing
    def _sink_for(self, ci: int):
        def sink(results: list[StepResult]) -> None:
            with self._cond:  # _fanout holds it while sending, so the mapping exists by now
                self._ready.extend(self._translate(ci, r, release=True) for r in results)
                self._cond.notify_all()
        return sink

    def _translate(self, ci: int, r: StepResult, release: bool = False) -> StepResult:
        key = (ci, r.request_id)
        sub = self._subs.get(key)
        rid, index = r.request_id, r.index
        if sub is not None:
            rid, positions = sub[0], sub[1]
            if 0 <= r.index < len(positions):
                index = positions[r.index]
            if release:
                sub[2] -= 1
                if sub[2] <= 0:
                    del self._subs[key]
        fid = self._back.get((ci, r.env_id), 0)
        return replace(r, env_id=fid, request_id=rid, index=index)

    def _groups(self, env_ids: Sequence[int]) -> dict[int, list[int]]:
        """Client index -> positions in ``env_ids``."""
        groups: dict[int, list[int]] = {}
        for pos, fid in enumerate(env_ids):
            if fid not in self._route:
                raise KeyError(f"env {fid} is not part of this fleet")
            groups.setdefault(self._route[fid][0], []).append(pos)
        return groups

    def _fanout(self, method: str, env_ids: Sequence[int], values: Sequence, collect: bool,
                **kw) -> list[tuple[int, list[int], PendingBatch]]:
        if len(values) != len(env_ids):
            raise ValueError(f"{len(env_ids)} env ids but {len(values)} values")
        fleet_rid = next(self._rids)
        out = []
        with self._cond:
            for ci, positions in self._groups(env_ids).items():
                sids = [self._route[env_ids[p]][1] for p in positions]
                vals = [values[p] for p in positions]
                batch = getattr(self.clients[ci], method)(sids, vals, collect=collect, **kw)
                self._subs[(ci, batch.request_id)] = [fleet_rid, positions, len(positions)]
                out.append((ci, positions, batch))
        return out

    def _gather(self, n: int, parts: list[tuple[int, list[int], PendingBatch]]) -> list[StepResult]:
        results: list[StepResult | None] = [None] * n
        for ci, _positions, batch in parts:
            for r in batch.result():
                t = self._translate(ci, r)
                results[t.index] = t
            self._subs.pop((ci, batch.request_id), None)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ API
    def create(self, n: int, timeout: float | None = None) -> list[int]:
        """Create ``n`` envs spread over the servers by weight; returns fleet env ids."""
        plan = [0] * len(self.clients)
        for _ in range(n):
            ci = min(range(len(self.clients)),
                     key=lambda i: (self._count[i] + plan[i]) / self.weights[i])
            plan[ci] += 1
        batches = [(ci, self.clients[ci].create_async(k, timeout)) for ci, k in enumerate(plan) if k]
        ids = []
        for ci, batch in batches:
            for r in check(batch.result()):
                fid = next(self._ids)
                self._route[fid] = (ci, r.env_id)
                self._back[(ci, r.env_id)] = fid
                self._count[ci] += 1
                ids.append(fid)
        return ids

    def reset(self, env_ids: Sequence[int], tasks: Sequence[TaskLike], **kw) -> list[StepResult]:
        return self._gather(len(env_ids), self._fanout("reset_async", env_ids, tasks, True, **kw))

    def step(self, env_ids: Sequence[int], actions: Sequence[str], **kw) -> list[StepResult]:
        return self._gather(len(env_ids), self._fanout("step_async", env_ids, actions, True, **kw))

    def send(self, env_ids: Sequence[int], actions: Sequence[str], **kw) -> None:
        self._fanout("step_async", env_ids, actions, False, **kw)

    def send_reset(self, env_ids: Sequence[int], tasks: Sequence[TaskLike], **kw) -> None:
        self._fanout("reset_async", env_ids, tasks, False, **kw)

    def recv(self, min_results: int = 1, *, max_results: int | None = None,
             timeout: float | None = None) -> list[StepResult]:
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._ready) < min_results:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            n = len(self._ready) if max_results is None else min(max_results, len(self._ready))
            return [self._ready.popleft() for _ in range(n)]

    def close(self, env_ids: Sequence[int] | None = None) -> list[StepResult]:
        env_ids = list(self._route) if env_ids is None else list(env_ids)
        parts = []
        with self._cond:
            for ci, positions in self._groups(env_ids).items():
                sids = [self._route[env_ids[p]][1] for p in positions]
                batch = self.clients[ci].close_async(sids)
                self._subs[(ci, batch.request_id)] = [0, positions, len(positions)]
                parts.append((ci, positions, batch))
        results = self._gather(len(env_ids), parts)
        for fid in env_ids:
            ci, sid = self._route.pop(fid)
            self._back.pop((ci, sid), None)
            self._count[ci] -= 1
        return results

    def server_of(self, env_id: int) -> str:
        return self.clients[self._route[env_id][0]].address

    def shutdown(self) -> None:
        for c in self.clients:
            c.shutdown()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
