"""Soak: 1,000 sim envs over gRPC from several client processes, with exact accounting.

    python bench/soak.py                      # 1000 envs, 4 clients, 80 steps per env (= tests/test_soak.py)
    python bench/soak.py --envs 200 --steps 20 --clients 2

Starts ``python -m env_server.serve`` (sim backend) on a free 127.0.0.1 port, runs the load
clients of ``env_server.loadgen`` (each proves that no transition was lost or duplicated), and
prints steps/s, the server's resident memory (start, after warm-up, end, peak; server + workers),
and per process the peak RSS of the middle (35-55 % of the steps) and end (85-100 %) windows, with
the verdict of the same flatness check as ``tests/test_soak.py``. Exits 1 on an accounting
problem or memory growth.
"""

from __future__ import annotations

import argparse

import psutil
from tqdm import tqdm

from env_server.loadgen import RssRecorder, ServerProcess, describe, flat, soak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steps", type=int, default=80, help="steps per env")
    parser.add_argument("--workers", type=int, default=psutil.cpu_count() or 2)
    parser.add_argument("--backend", default="sim")
    args = parser.parse_args()
    print(f"backend={args.backend} workers={args.workers} envs={args.envs} clients={args.clients} "
          f"steps/env={args.steps} cores={psutil.cpu_count()} load={psutil.getloadavg()[0]:.2f}")
    with ServerProcess("--max_envs", str(args.envs + 64), backend=args.backend,
                       workers=args.workers) as server:
        bar = tqdm(total=100, unit="%", desc="soak", leave=False)

        def progress(frac: float, rss: int) -> None:
            bar.n = int(frac * 100)
            bar.set_postfix(rss_mib=rss >> 20)
            bar.refresh()

        recorder = RssRecorder(server, on_progress=progress)
        result = soak(server.address, recorder, clients=args.clients, envs=args.envs,
                      steps=args.steps, on_progress=recorder.progress)
        bar.close()
    print(describe(result))
    ratio = result.rss_end / max(1, result.rss_warm)
    print(f"peak RSS {result.rss_peak / 2**20:.0f} MiB (server + workers); "
          f"end/warm-up RSS ratio {ratio:.3f}")
    try:
        growth = recorder.growth()
    except ValueError as err:  # a run too short to have samples in both windows
        print(f"memory: not judged ({err}; run more steps)")
        growth = {}
    if growth:
        print("peak RSS MiB, middle window (35-55 % of the steps) -> end window (85-100 %):")
    for name, (mid, end) in growth.items():
        print(f"  {name:<24} {mid / 2**20:7.1f} -> {end / 2**20:7.1f}  ({(end - mid) / 2**20:+.1f})")
    grew = flat(growth)
    if growth:
        print(f"memory: {'flat' if not grew else 'GREW: ' + '; '.join(grew)}")
    if result.problems:
        raise SystemExit(f"accounting problems: {result.problems[:10]}")
    if grew:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
