"""Soak: 1,000 sim envs over gRPC from several client processes, with exact accounting.

The load (``env_server.loadgen``): 4 client processes, 250 envs each, every env kept busy
(EnvPool-style send/recv) until it made ``STEPS`` steps; episodes that end are reset. Every result
carries (env id, episode id, step index); each client checks that every item it sent was answered
exactly once, that no transition came twice and that step indices run on without a gap. The
server's resident memory (server process + workers, psutil) is sampled against the fraction of
steps done -- not against time -- and the peak of a middle window must match the peak of the end
window within a tolerance (a leak of ~100 bytes per request, like the one this test caught in the
pool's deadline heap, fails it).
"""

from __future__ import annotations

import time

import pytest
from fake_backend import PATH as FAKE_PATH

from env_server import loadgen
from env_server.client import BatchedClient
from env_server.loadgen import RssRecorder, ServerProcess, describe, flat, run_client, soak

ENVS, CLIENTS, STEPS = 1000, 4, 80


@pytest.mark.slow
def test_soak_1000_envs_nothing_lost_or_duplicated_and_memory_flat():
    with ServerProcess("--max_envs", str(ENVS + 100), workers=2) as server:
        recorder = RssRecorder(server)
        result = soak(server.address, recorder, clients=CLIENTS, envs=ENVS, steps=STEPS,
                      timeout=120.0, on_progress=recorder.progress)
        report = describe(result)
        # the clients closed their envs (and their streams ended): nothing is left behind
        with BatchedClient(server.address, timeout=30) as probe:
            end = time.monotonic() + 30
            while probe.info().envs and time.monotonic() < end:
                time.sleep(0.1)
            assert probe.info().envs == 0, report
    print(report)

    # exact accounting, per client process and in total
    assert not result.problems, report
    assert len(result.clients) == CLIENTS and sum(c.envs for c in result.clients) == ENVS
    for c in result.clients:
        assert c.steps == c.envs * STEPS, c
        assert c.results == c.items_sent == c.steps + c.resets and c.outstanding == 0, c
        assert c.resets == c.envs + c.episodes_finished, c  # one reset per env + one per episode end
    assert result.steps == ENVS * STEPS
    assert sum(c.episodes_finished for c in result.clients) > 0  # episodes really cycled
    assert sum(c.invalid_actions for c in result.clients) > 0  # and bad actions were in the mix

    # memory: flat from the middle of the run to its end, per process and in total
    growth = recorder.growth(mid=(0.35, 0.55), end=(0.85, 1.0))
    assert len(growth) >= 4, growth  # server, 2 workers (+ forkserver helpers), total
    problems = flat(growth, rel=0.03, abs_mib=3.0)
    assert not problems, f"server memory grew: {problems}\n{report}"


class _Tamper:
    """Wraps ``BatchedClient.recv`` to lose, duplicate or renumber one result."""

    def __init__(self, mode: str, after: int = 30):
        self.mode, self.after, self.count, self.done = mode, after, 0, False
        self.original = BatchedClient.recv

    def __call__(self, client, *args, **kwargs):
        results = self.original(client, *args, **kwargs)
        self.count += len(results)
        if self.done or self.count < self.after or not results:
            return results
        r = results[-1]
        if r.kind != "step":
            return results
        self.done = True
        if self.mode == "lose":
            return results[:-1]
        if self.mode == "duplicate":
            return [*results, r]
        r.step_index += 1  # a skipped transition
        return results


@pytest.fixture(scope="module")
def fake_server():
    with ServerProcess("--backend_module", FAKE_PATH, backend="fake", workers=2) as server:
        yield server


@pytest.mark.parametrize("mode, problem", [
    ("lose", "items never answered"),
    ("duplicate", "unexpected or duplicate result"),
    ("skip", "step gave"),
])
def test_the_soak_accounting_catches_lost_duplicated_and_skipped_transitions(
        fake_server, monkeypatch, mode, problem):
    """The checker the soak relies on is not vacuous: one tampered result is reported."""
    clean = run_client(0, fake_server.address, envs=8, steps=10, timeout=5.0)
    assert not clean.problems and clean.steps == 80
    tamper = _Tamper(mode)
    monkeypatch.setattr(BatchedClient, "recv", lambda self, *a, **kw: tamper(self, *a, **kw))
    report = run_client(1, fake_server.address, envs=8, steps=10, timeout=1.0)
    assert tamper.done and any(problem in p for p in report.problems), report.problems


def test_flatness_check():
    mib = 2**20
    assert not flat({"server 1": (64 * mib, 65 * mib), "total": (250 * mib, 254 * mib)})
    assert flat({"server 1": (64 * mib, 71 * mib)}) == [
        "server 1: 64.0 -> 71.0 MiB (+7.0 > 3.0 allowed)"]
    assert flat({"total": (250 * mib, 270 * mib)})  # 2 x max(3 MiB, 3 %) = 15 MiB allowed
    assert loadgen.flat({"w 2": (400 * mib, 411 * mib)}) == []  # 3 % of 400 MiB = 12 MiB


def test_server_tree_rss_is_reported_per_process(fake_server):
    by = fake_server.rss_by_process()
    # the server, the forkserver and the 2 workers (its children) at least
    assert sum(k.startswith("server ") for k in by) == 1 and len(by) >= 4, by
    assert all(v > 1 << 20 for v in by.values())
    assert fake_server.rss() == pytest.approx(sum(by.values()), rel=0.2)


def test_deadline_heap_is_pruned_of_answered_items():
    """The pool's deadline heap does not keep answered requests until their deadline (the leak the
    soak found: ~100 bytes per request for as long as the request timeout)."""
    from fake_backend import fake_config

    from env_server.client import check
    from env_server.pool import _COMPACT_MIN
    from env_server.server import ServerThread

    cfg = fake_config(workers=1, backend_kwargs={"max_steps": 10**6})
    with ServerThread(cfg) as st, BatchedClient(st.address, timeout=60) as c:
        ids = c.create(8)
        check(c.reset(ids, list(range(8))))
        requests = _COMPACT_MIN + 1500
        for i in range(requests):  # one-item requests, all answered long before the 60 s deadline
            c.send([ids[i % 8]], ["x"])
            if i % 500 == 499:
                got = 0
                while got < 500:
                    got += len(check(c.recv(500 - got, timeout=30)))
        heap = st.server.pool._deadlines
        assert len(heap) <= _COMPACT_MIN, f"{len(heap)} deadline entries for {requests} answered requests"
