"""Env throughput: in-process vs gRPC, reset latency, memory of 1,000 envs.

    python bench/env_throughput.py               # sim backend, best of 3 runs, ~2 minutes
    python bench/env_throughput.py --quick       # single short runs

Prints in-process steps/s on one core (a11y only, and with RAW screenshots), reset latency,
batched gRPC steps/s at 1/16/64/256 envs (server in a separate process with ``--workers``
worker processes, client here, EnvPool-style send/recv keeping every env busy) with its ratio to
in-process steps/s per core (the issue's ratio) and per worker process (the stricter one: the
workers use up to ``--workers`` cores, shared with the server and client), and the resident
memory (server + workers) holding 1,000 envs.
Actions are a deterministic stream of valid GUI actions (``click(#k)`` on existing a11y rows,
``scroll(1)``); the same policy drives both paths, and episodes reset when they end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from env_server.backend import make_backend
from env_server.client import BatchedClient, check
from env_server.types import TaskRef

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"inproc": 2000.0, "reset_ms": 2.0, "ratio64": 0.7, "mem_gib": 2.0}


def policy(i: int, a11y: str) -> str:
    """A valid action that depends on the observation (so both paths pay for reading it)."""
    if i % 3 == 2:
        return "scroll(1)"
    return f"click(#{(i * 7) % (a11y.count(chr(10)) + 1)})"


def bench_inprocess(backend: str, seconds: float, screenshot: bool) -> tuple[float, list[float]]:
    env = make_backend(backend)
    obs = env.reset(TaskRef(seed=0), screenshot=screenshot)
    steps, resets, seed = 0, [], 1
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        obs = env.step(policy(steps, obs.a11y), screenshot=screenshot)
        steps += 1
        if obs.last:
            t0 = time.perf_counter()
            obs = env.reset(TaskRef(seed=seed), screenshot=screenshot)
            resets.append(time.perf_counter() - t0)
            seed += 1
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate, resets


def reset_latency(backend: str, n: int) -> list[float]:
    env = make_backend(backend)
    out = []
    for seed in range(n):
        t0 = time.perf_counter()
        env.reset(TaskRef(seed=seed))
        out.append(time.perf_counter() - t0)
    env.close()
    return out


class Server:
    """``python -m env_server.serve`` in a subprocess on a free loopback port."""

    def __init__(self, backend: str, workers: int, max_envs: int = 4096, *extra: str):
        self._dir = tempfile.TemporaryDirectory()
        port_file = Path(self._dir.name) / "port"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "env_server.serve", "--port", "0", "--port_file", str(port_file),
             "--backend", backend, "--workers", str(workers), "--max_envs", str(max_envs),
             "--grace_s", "2", *extra],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text()}"

    def rss_bytes(self) -> tuple[int, int]:
        """(RSS, USS) summed over the server and all its descendants."""
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        rss = uss = 0
        for p in procs:
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue
            rss, uss = rss + info.rss, uss + info.uss
        return rss, uss

    def cpu_seconds(self) -> tuple[float, float]:
        """(server process, all descendants) user+system CPU seconds so far."""
        root = psutil.Process(self.proc.pid)
        own = sum(root.cpu_times()[:2])
        kids = 0.0
        for p in root.children(recursive=True):
            try:
                kids += sum(p.cpu_times()[:2])
            except psutil.Error:
                continue
        return own, kids

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._dir.cleanup()


def _cpu(server: Server) -> tuple[float, float, float]:
    own, kids = server.cpu_seconds()
    return sum(psutil.Process().cpu_times()[:2]), own, kids


def bench_grpc(client: BatchedClient, server: Server, n: int, seconds: float,
               batch: int | None = None) -> tuple[float, list[float]]:
    """Steps/s with ``n`` envs always in flight, and CPU us/step of (client, server, workers).

    ``recv`` waits for ``batch`` results (EnvPool's ``batch_size``; default ``n // 4``) and the
    policy acts on those while the other envs keep running.
    """
    batch = batch or max(1, n // 4)
    ids = client.create(n)
    resets = check(client.reset(ids, list(range(n))))
    counts = dict.fromkeys(ids, 0)
    seed = n
    client.send(ids, [policy(0, r.observation.a11y) for r in resets])
    inflight, steps = n, 0
    warmup = min(1.0, seconds / 4)
    start = time.perf_counter()
    measuring = False
    while True:
        now = time.perf_counter()
        if not measuring and now - start >= warmup:
            measuring, steps, start = True, 0, now
            cpu0 = _cpu(server)
        elif measuring and now - start >= seconds:
            cpu1 = _cpu(server)
            break
        results = client.recv(min(batch, inflight), timeout=30)
        inflight -= len(results)
        step_ids, actions, reset_ids = [], [], []
        for r in results:
            if not r.ok:
                raise RuntimeError(f"env {r.env_id}: {r.code.name}: {r.message}")
            steps += r.kind == "step"
            if r.done:
                reset_ids.append(r.env_id)
            else:
                counts[r.env_id] += 1
                step_ids.append(r.env_id)
                actions.append(policy(counts[r.env_id], r.observation.a11y))
        if step_ids:
            client.send(step_ids, actions)
        if reset_ids:
            client.send_reset(reset_ids, list(range(seed, seed + len(reset_ids))))
            seed += len(reset_ids)
        inflight += len(step_ids) + len(reset_ids)
    rate = steps / (time.perf_counter() - start)
    while inflight > 0:
        inflight -= len(client.recv(inflight, timeout=30))
    check(client.close(ids))
    return rate, [(b - a) / max(steps, 1) * 1e6 for a, b in zip(cpu0, cpu1, strict=True)]


def bench_memory(server: Server, client: BatchedClient, n: int) -> tuple[float, float, float, int]:
    """(idle RSS, RSS and USS with ``n`` live envs after a reset and a step, live env count); MiB."""
    base_rss, _ = server.rss_bytes()
    ids = []
    for _ in range(n // 250):
        ids += client.create(250)
    ids += client.create(n - len(ids)) if n > len(ids) else []
    for k in range(0, n, 250):
        check(client.reset(ids[k:k + 250], list(range(k, k + 250))))
    check(client.step(ids, ["scroll(1)"] * len(ids)))
    live = client.info().envs
    rss, uss = server.rss_bytes()
    check(client.close(ids))
    return base_rss / 2**20, rss / 2**20, uss / 2**20, live


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in psutil.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="sim")
    parser.add_argument("--workers", type=int, default=psutil.cpu_count() or 2)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    parser.add_argument("--repeats", type=int, default=3, help="report the best of this many runs")
    parser.add_argument("--sizes", default="1,16,64,256")
    parser.add_argument("--mem_envs", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="short single runs (smoke test)")
    args = parser.parse_args()
    secs, reps = (1.5, 1) if args.quick else (args.seconds, max(1, args.repeats))
    print(f"backend={args.backend} cores={psutil.cpu_count()} workers={args.workers} "
          f"{secs:g}s x best of {reps} per measurement; load average {_load()}")

    runs = [bench_inprocess(args.backend, secs, screenshot=False)[0] for _ in range(reps)]
    inproc = max(runs)
    shots = bench_inprocess(args.backend, min(secs, 3.0), screenshot=True)[0]
    lat = sorted(reset_latency(args.backend, 200 if args.quick else 1000))
    p50, p95 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.95)] * 1e3
    print(f"in-process steps/s/core (a11y only):       {inproc:8.0f}  (median {statistics.median(runs):.0f})"
          f"   target >= {TARGETS['inproc']:.0f}")
    print(f"in-process steps/s/core (RAW screenshots): {shots:8.0f}")
    print(f"reset latency ms: mean {statistics.mean(lat) * 1e3:.3f}  p50 {p50:.3f}  p95 {p95:.3f}"
          f"   target <= {TARGETS['reset_ms']:g}")

    server = Server(args.backend, args.workers, max_envs=max(4096, args.mem_envs))
    ratio64, rss = None, 0.0
    try:
        with BatchedClient(server.address, timeout=60) as client:
            [e] = client.create(1)
            rtts = []
            for seed in range(50):
                t0 = time.perf_counter()
                check(client.reset([e], [seed]))
                rtts.append(time.perf_counter() - t0)
            client.close([e])
            print(f"gRPC reset round trip ms (1 env): p50 {sorted(rtts)[25] * 1e3:.3f}")
            print(f"in-process CPU us/step: {1e6 / inproc:.0f}")
            for n in (int(s) for s in args.sizes.split(",")):
                runs = [bench_grpc(client, server, n, secs) for _ in range(reps)]
                rate, (c_us, s_us, w_us) = max(runs, key=lambda r: r[0])
                ratio = rate / inproc
                if n == 64:
                    ratio64 = ratio
                note = f"   target >= {TARGETS['ratio64']}" if n == 64 else ""
                print(f"gRPC batched steps/s @ {n:4d} envs: {rate:7.0f} (median "
                      f"{statistics.median(r[0] for r in runs):5.0f})  ratio to in-process/core "
                      f"{ratio:4.2f}{note}, per worker process {ratio / args.workers:4.2f}"
                      f"   [CPU us/step client {c_us:.0f} server {s_us:.0f} "
                      f"workers {w_us:.0f}]")
            base, rss, uss, live = bench_memory(server, client, args.mem_envs)
            print(f"memory with {live} live envs (server + workers + forkserver): RSS {rss:.0f} MiB "
                  f"(before: {base:.0f} MiB), USS {uss:.0f} MiB   target <= "
                  f"{TARGETS['mem_gib'] * 1024:.0f} MiB RSS")
    finally:
        server.stop()
    print(f"load average at the end {_load()} (other processes on this machine skew the gRPC rows)")
    checks = {
        "in-process steps/s": inproc >= TARGETS["inproc"],
        "reset latency": p50 <= TARGETS["reset_ms"],
        "gRPC ratio @64": ratio64 is None or ratio64 >= TARGETS["ratio64"],
        "memory": rss <= TARGETS["mem_gib"] * 1024,
    }
    missed = [k for k, ok in checks.items() if not ok]
    print("all targets met" if not missed else f"targets missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
