"""Faults: killed and hung workers, lost servers (fleet failover, restart + reconnect), vanished clients.

Every server binds 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import crashing_backend
import grpc
import numpy as np
import psutil
import pytest
from fake_backend import PATH as FAKE_PATH
from fake_backend import fake_config
from server_proc import REPO, ServerProc

from env_server.client import Backoff, BatchedClient, check
from env_server.fleet import FleetClient, FleetUnavailable
from env_server.proto import desktop_pb2 as pb
from env_server.proto import desktop_pb2_grpc as pb_grpc
from env_server.server import ServerConfig, ServerThread
from env_server.types import TaskRef
from jaxrl_desktop.rollout import ExpertPolicy, run_episodes

ABORTED, DEADLINE = grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED


def _wait(cond, timeout: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _pid(st: ServerThread, env_id: int) -> int:
    return st.server.pool.env_worker[env_id].process.pid


def _by_worker(st: ServerThread, ids: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for e in ids:
        out.setdefault(_pid(st, e), []).append(e)
    return out


class Ledger:
    """Every (env, episode, step) a client saw, to prove none is duplicated or skipped."""

    def __init__(self):
        self.seen: set[tuple[int, int, int]] = set()
        self.last: dict[int, tuple[int, int]] = {}

    def add(self, r) -> None:
        if not (r.ok or r.truncated) or r.kind not in ("step", "reset"):
            return
        key = (r.env_id, r.episode_id, r.step_index)
        assert key not in self.seen, f"duplicate transition {key}"
        ep, st = self.last.get(r.env_id, (0, 0))
        if r.kind == "reset" and r.ok:
            assert r.episode_id > ep and r.step_index == 0, (self.last.get(r.env_id), r)
        else:
            assert (r.episode_id, r.step_index) == (ep, st + 1), (self.last.get(r.env_id), r)
        self.seen.add(key)
        self.last[r.env_id] = (r.episode_id, r.step_index)

    def add_all(self, results) -> list:
        for r in results:
            self.add(r)
        return results


# ---------------------------------------------------------------- 1. worker killed mid-episode
def test_killed_worker_is_restarted_and_its_episodes_come_back_truncated():
    with ServerThread(fake_config(workers=2)) as st, BatchedClient(st.address, timeout=20) as c:
        ledger = Ledger()
        ids = c.create(6)
        ledger.add_all(check(c.reset(ids, list(range(6)))))
        ledger.add_all(check(c.step(ids, ["x"] * 6)))
        groups = _by_worker(st, ids)
        assert len(groups) == 2
        victim_pid, victims = next(iter(groups.items()))
        others = [e for e in ids if e not in victims]
        busy, idle = victims[0], victims[1:]
        # a step in flight on the victim worker when it is SIGKILLed
        pending = c.step_async([busy], ["hang(3)"])
        time.sleep(0.3)
        os.kill(victim_pid, signal.SIGKILL)
        [r] = ledger.add_all(pending.result(10))
        assert r.code == ABORTED and r.truncated and r.done
        assert "killed by SIGKILL" in r.message and "reset it to continue" in r.message
        assert (r.episode_id, r.step_index) == (1, 2)
        _wait(lambda: c.info().worker_restarts == 1 and c.info().live_workers == 2, what="restart")
        assert _pid(st, busy) != victim_pid  # same env id, new worker process
        # envs of the other worker were untouched; idle envs of the victim are truncated once
        ledger.add_all(check(c.step(others, ["y"] * len(others))))
        results = ledger.add_all(c.step(idle, ["y"] * len(idle)))
        assert all(r.code == ABORTED and r.truncated and r.step_index == 2 for r in results)
        results = c.step(idle, ["y"] * len(idle))
        assert all(r.code == grpc.StatusCode.FAILED_PRECONDITION for r in results)
        # the client keeps going: resets work and episode ids continue
        results = ledger.add_all(check(c.reset(victims, [7] * len(victims))))
        assert all(r.episode_id == 2 for r in results)
        ledger.add_all(check(c.step(ids, ["z"] * 6)))
        assert c.info().envs == 6


def test_reset_in_flight_on_a_killed_worker_is_rerun():
    with ServerThread(fake_config(workers=1)) as st, BatchedClient(st.address, timeout=20) as c:
        [e] = c.create(1)
        check(c.reset([e], [1]))
        pid = _pid(st, e)
        pending = c.reset_async([e], [TaskRef("hang", seed=1500)])  # a 1.5 s reset
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        [r] = pending.result(15)
        assert r.ok and r.episode_id == 2 and r.step_index == 0  # re-run on the new worker
        assert _pid(st, e) != pid
        assert check(c.step([e], ["x"]))[0].step_index == 1


def test_without_restart_the_envs_are_reported_lost():
    with ServerThread(fake_config(workers=2, restart_workers=False)) as st, \
            BatchedClient(st.address, timeout=20) as c:
        ids = c.create(2)
        check(c.reset(ids, [1, 2]))
        os.kill(_pid(st, ids[0]), signal.SIGKILL)
        _wait(lambda: c.info().live_workers == 1, what="worker death")
        [r] = c.step([ids[0]], ["x"])
        assert r.code == grpc.StatusCode.NOT_FOUND and "was lost" in r.message


def test_reset_that_kills_its_worker_is_not_retried_forever():
    """A poison task (its reset kills the worker) is re-run once, then answered INTERNAL; the
    resets queued with it on that worker run after their envs are recreated (all OK), and nothing
    waits for a deadline (before the fix: a crash loop, then DEADLINE_EXCEEDED for the whole
    worker, or NOT_FOUND because re-queued resets overtook the recreations)."""
    cfg = fake_config(workers=1, backend="crashy", restart_workers=True,
                      backend_modules=(FAKE_PATH, crashing_backend.PATH))
    with ServerThread(cfg) as st, BatchedClient(st.address, timeout=30) as c:
        ledger = Ledger()
        ids = c.create(4)
        ledger.add_all(check(c.reset(ids, [1, 2, 3, 4])))
        ledger.add_all(check(c.step(ids, ["x"] * 4)))
        t0 = time.monotonic()
        results = ledger.add_all(c.reset(ids, [5, TaskRef("crash", 6), 7, 8]))
        assert time.monotonic() - t0 < 20.0  # two restarts, no deadline (30 s) reached
        poison = results[1]
        assert poison.code == grpc.StatusCode.INTERNAL, poison
        assert "family='crash', seed=6" in poison.message and "not retried" in poison.message
        assert f"exit code {crashing_backend.EXIT_CODE}" in poison.message
        others = [r for i, r in enumerate(results) if i != 1]
        assert all(r.ok and r.episode_id == 2 and r.step_index == 0 for r in others), others
        assert st.server.pool.restarts == 2 and c.info().envs == 4
        # env 0 was reset (and answered) on the first worker just before the poison killed it:
        # that new episode is truncated; the poisoned env has no episode; 2 and 3 run on
        results = ledger.add_all(c.step(ids, ["y"] * 4))
        assert results[0].code == ABORTED and results[0].truncated and results[0].step_index == 1
        assert results[1].code == grpc.StatusCode.FAILED_PRECONDITION
        assert results[2].ok and results[3].ok
        # the poisoned env is still there and takes a good task; everyone keeps stepping
        ledger.add_all(check(c.reset(ids[:2], [9, 10])))
        for _ in range(3):
            ledger.add_all(check(c.step(ids, ["z"] * 4)))
        assert st.server.pool.restarts == 2


def test_expert_collection_like_the_learner():
    """The learner's expert-demonstration pass: 96 envs, 1,024 tasks, expert actions, lockstep
    episodes through the batched client on an embedded 2-worker sim server. Every reset and step
    must come back OK (an aborted episode is no success); a stall would hit the 30 s deadline."""
    seeds = np.random.default_rng([0, 0]).integers(0, 2**31 - 1, 1024)
    tasks = [TaskRef("", int(s), "train") for s in seeds]
    policy = ExpertPolicy("api")
    with ServerThread(ServerConfig(workers=2)) as st, BatchedClient(st.address, timeout=30) as c:
        ids = c.create(96)
        episodes = []
        for lo in range(0, len(tasks), len(ids)):
            episodes += run_episodes(c, ids, tasks[lo:lo + len(ids)], policy, max_steps=64)
        assert len(episodes) == 1024 and all(e.success for e in episodes)
        keys = {(e.env_id, e.episode_id) for e in episodes}
        assert len(keys) == 1024  # every episode got its own (env, episode) id
        assert all([s.step_index for s in e.steps] == list(range(1, len(e.steps) + 1))
                   for e in episodes)
        assert st.server.pool.restarts == 0 and c.info().envs == 96


def test_rollouts_leave_faulted_episodes_out_and_keep_going():
    """What the learner sees: a worker killed mid-episode and a step hung past its deadline cut only
    the episodes on those workers (marked ``aborted``); the third worker's envs finish, and the same
    env ids run the next episodes normally."""
    from jaxrl_desktop.rollout import completed, success_rate

    cfg = ServerConfig(workers=3, backend="faulty_sim", backend_modules=(crashing_backend.PATH,),
                       backend_kwargs={"kill_every": 5, "hang_every": 7, "hang_s": 30.0})
    with ServerThread(cfg) as st, BatchedClient(st.address, timeout=3) as c:
        ids = c.create(9)
        killed, hung, healthy = _by_worker(st, ids).values()
        seed = {killed[0]: 5, hung[0]: 8}  # 5 % 5 == 0 kills its worker; 8 % 7 == 1 hangs for 30 s
        safe = iter((2, 3, 4, 6, 9, 11, 12, 13))  # neither kills nor hangs
        tasks = [TaskRef("files.create_folder", seed.get(e) or next(safe)) for e in ids]
        episodes = dict(zip(ids, run_episodes(c, ids, tasks, ExpertPolicy("api"), max_steps=16), strict=True))
        assert episodes[killed[0]].abort_code == "ABORTED" and "SIGKILL" in episodes[killed[0]].aborted
        assert episodes[hung[0]].abort_code == "DEADLINE_EXCEEDED"
        assert all(episodes[e].success and not episodes[e].aborted for e in healthy)
        done = completed(episodes.values())
        assert all(e.success for e in done) and success_rate(list(episodes.values())) == 1.0
        _wait(lambda: c.info().live_workers == 3 and c.info().worker_restarts >= 1, what="killed worker replaced")
        again = run_episodes(c, ids, [TaskRef("files.create_folder", s) for s in (2, 3, 4, 6, 9, 11, 12, 13, 16)],
                             ExpertPolicy("api"), max_steps=16)
        assert all(e.success and not e.aborted for e in again)


# ---------------------------------------------------------------- 2. hung backend calls
def test_hanging_step_is_cancelled_in_the_worker_at_its_deadline():
    with ServerThread(fake_config(workers=1)) as st, BatchedClient(st.address, timeout=20) as c:
        ids = c.create(2)
        check(c.reset(ids, [1, 2]))
        pid = _pid(st, ids[0])
        t0 = time.monotonic()
        pending = c.step_async([ids[0]], ["hang(30)"], timeout=0.5)
        later = c.step_async([ids[1]], ["x"], timeout=10)  # queued behind the hang, same worker
        [r] = pending.result(10)
        assert r.code == DEADLINE and r.truncated and "cancelled" in r.message
        assert time.monotonic() - t0 < 3.0
        assert later.result(10)[0].ok
        assert _pid(st, ids[0]) == pid and c.info().worker_restarts == 0  # no restart needed
        [r] = c.step([ids[0]], ["x"])
        assert r.code == grpc.StatusCode.FAILED_PRECONDITION and "cancelled" in r.message
        assert check(c.reset([ids[0]], [1]))[0].episode_id == 2


def test_hanging_reset_is_cancelled():
    with ServerThread(fake_config(workers=1)) as st, BatchedClient(st.address, timeout=20) as c:
        [e] = c.create(1)
        t0 = time.monotonic()
        [r] = c.reset([e], [TaskRef("hang", seed=30_000)], timeout=0.4)
        assert r.code == DEADLINE and "cancelled" in r.message and time.monotonic() - t0 < 3.0
        assert check(c.reset([e], [TaskRef("count", 1)]))[0].ok
        assert st.server.pool.restarts == 0


def test_worker_stuck_where_it_cannot_be_interrupted_is_killed_and_replaced():
    cfg = fake_config(workers=1, hung_worker_s=0.5)
    with ServerThread(cfg) as st, BatchedClient(st.address, timeout=20) as c:
        ids = c.create(2)
        check(c.reset(ids, [1, 2]))
        pid = _pid(st, ids[0])
        t0 = time.monotonic()
        [r] = c.step([ids[0]], ["stall(20)"], timeout=0.5)  # SIGALRM blocked: only a kill helps
        assert r.code == DEADLINE and time.monotonic() - t0 < 3.0
        _wait(lambda: st.server.pool.restarts == 1 and st.server.pool.live_workers == 1,
              timeout=10, what="the hung worker to be replaced")
        assert time.monotonic() - t0 < 8.0  # never waited for the 20 s stall
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        [r] = c.step([ids[1]], ["x"])  # the other env of the killed worker: truncated
        assert r.code == ABORTED and r.truncated and "hung" in r.message
        assert all(r.ok for r in c.reset(ids, [3, 4]))
        assert all(r.ok for r in c.step(ids, ["x", "y"]))


# ---------------------------------------------------------------- 3. fleet failover
def test_fleet_moves_the_envs_of_a_killed_server():
    servers = [ServerProc(workers=1).start() for _ in range(3)]
    try:
        with FleetClient([s.address for s in servers], timeout=20) as fleet:
            ledger = Ledger()
            ids = fleet.create(9)
            assert {fleet.server_of(e) for e in ids} == {s.address for s in servers}
            ledger.add_all(check(fleet.reset(ids, list(range(9)))))
            ledger.add_all(check(fleet.step(ids, ["x"] * 9)))
            dead = servers[1]
            on_dead = [e for e in ids if fleet.server_of(e) == dead.address]
            fleet.send(on_dead, ["hang(5)"] * len(on_dead))  # outstanding when the server dies
            time.sleep(0.3)
            dead.kill()
            got = []
            while len(got) < len(on_dead):
                batch = fleet.recv(1, timeout=15)
                assert batch, "no results after the server died"
                got += batch
            ledger.add_all(got)
            assert sorted(r.env_id for r in got) == sorted(on_dead)
            assert all(r.code == ABORTED and r.truncated and "lost" in r.message for r in got)
            # the fleet keeps going: envs of the dead server are recreated on the others
            results = ledger.add_all(check(fleet.reset(ids, list(range(9)))))
            assert all(r.episode_id == 2 for r in results)
            assert dead.address not in {fleet.server_of(e) for e in ids}
            for _ in range(3):
                ledger.add_all(check(fleet.step(ids, ["y"] * 9)))
            assert list(fleet.down) == [1] and dead.address in fleet.down[1]
            check(fleet.close())
    finally:
        for s in servers:
            s.stop()


def test_killed_server_leaves_no_orphan_workers():
    with ServerProc(workers=2) as server:
        with BatchedClient(server.address) as c:
            check(c.reset(c.create(4), [1, 2, 3, 4]))
        children = server.tree()[1:]
        assert len(children) >= 2
        server.proc.send_signal(signal.SIGKILL)  # only the server; its workers must notice
        server.proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"orphans left behind: {alive}"


# ---------------------------------------------------------------- 4. vanished clients
def test_envs_of_a_killed_client_process_are_freed():
    with ServerThread(fake_config()) as st, BatchedClient(st.address) as probe:
        script = textwrap.dedent(f"""
            import sys, time
            from env_server.client import BatchedClient
            c = BatchedClient("{st.address}")
            ids = c.create(20)
            c.reset(ids, list(range(20)))
            print("ready", flush=True)
            time.sleep(60)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            assert probe.info().envs == 20
            proc.kill()
            proc.wait(10)
            _wait(lambda: probe.info().envs == 0, what="the server to free the envs")
        finally:
            if proc.poll() is None:
                proc.kill()


def test_cancelled_stream_frees_its_envs():
    with ServerThread(fake_config()) as st, BatchedClient(st.address) as probe:
        c = BatchedClient(st.address)
        c.create(7)
        assert probe.info().envs == 7
        c._call.cancel()  # as a crashing client's library would
        _wait(lambda: probe.info().envs == 0, what="the envs of the cancelled stream")
        c.shutdown()


def test_unary_clients_envs_are_reaped_after_their_lease():
    with ServerThread(fake_config(unary_lease_s=0.6)) as st, BatchedClient(st.address) as probe:
        channel = grpc.insecure_channel(st.address)
        stub = pb_grpc.DesktopEnvStub(channel)
        ids = [r.env_id for r in stub.Batch(pb.Request(create=pb.CreateRequest(count=3)),
                                            timeout=10).results]
        keep = ids[0]
        stub.Batch(pb.Request(reset=pb.ResetRequest(items=[pb.ResetItem(env_id=keep)])), timeout=10)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:  # steps renew the lease of `keep` only
            step = pb.Request(step=pb.StepRequest(items=[pb.StepItem(env_id=keep, action="x")]))
            assert stub.Batch(step, timeout=10).results[0].status.code == pb.OK
            time.sleep(0.1)
        assert probe.info().envs == 1 and probe.info().envs_reaped == 2
        _wait(lambda: probe.info().envs == 0, timeout=10, what="the idle unary env to be reaped")
        assert probe.info().envs_reaped == 3
        channel.close()


# ---------------------------------------------------------------- 5. server restart
def test_client_reconnects_with_backoff_after_a_server_restart():
    server = ServerProc(workers=1).start()
    try:
        schedule = Backoff(attempts=12, initial_s=0.1, multiplier=2.0, max_s=1.0,
                           connect_timeout_s=0.5)
        with FleetClient([server.address], reconnect=schedule, timeout=20) as client:
            ledger = Ledger()
            ids = client.create(4)
            ledger.add_all(check(client.reset(ids, [1, 2, 3, 4])))
            ledger.add_all(check(client.step(ids, ["x"] * 4)))
            server.kill()
            restarter = threading.Timer(1.5, server.start)  # comes back on the same port
            restarter.start()
            # running episodes come back truncated ...
            results = ledger.add_all(client.step(ids, ["y"] * 4))
            assert all(r.code == ABORTED and r.truncated for r in results)
            # ... and the next reset waits (with back-off) for the server, recreating the envs
            t0 = time.monotonic()
            results = ledger.add_all(check(client.reset(ids, [5, 6, 7, 8])))
            assert time.monotonic() - t0 > 0.5  # it had to wait for the restart
            restarter.join()
            assert all(r.episode_id == 2 for r in results) and client.env_ids == ids
            ledger.add_all(check(client.step(ids, ["z"] * 4)))
            # bounded: with the server gone for good, the client gives up with a clear error
            server.kill()
            short = Backoff(attempts=3, initial_s=0.1, max_s=0.2, connect_timeout_s=0.3)
            client.reconnect = short
            _wait(lambda: client.down, what="the client to notice the lost server")
            t0 = time.monotonic()
            with pytest.raises(FleetUnavailable, match="no env server reachable after 3"):
                client.reset(ids, [1, 2, 3, 4])
            assert time.monotonic() - t0 < 10.0
    finally:
        server.stop()


def test_graceful_server_restart_is_survived_too():
    server = ServerProc(workers=1).start()
    try:
        with FleetClient([server.address], timeout=20,
                         reconnect=Backoff(attempts=20, initial_s=0.1, max_s=0.5)) as client:
            ids = client.create(2)
            check(client.reset(ids, [1, 2]))
            server.stop()  # SIGTERM: drain, then exit
            server.start()
            _wait(lambda: client.down, what="the client to notice the restart")
            results = check(client.reset(ids, [3, 4]))
            assert [r.episode_id for r in results] == [2, 2]
            assert all(r.ok for r in client.step(ids, ["x", "y"]))
    finally:
        server.stop()
