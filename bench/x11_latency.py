"""x11 vs sim: reset and step latency on the same kinds of tasks, and how many x11 envs fit this machine.

    python bench/x11_latency.py                 # ~3 minutes on 2 cores
    python bench/x11_latency.py --episodes 1 --envs 2

Both backends run the scripted expert (API style and GUI style) on comparable task families in this
process, so every ratio printed is measured within one run. Then ``--envs`` x11 desktops are started at
once and their processes (Xvfb, bus, window manager, apps, helper) are measured: proportional memory (PSS)
per env, idle CPU per env, and CPU seconds per step; the machine's capacity is extrapolated from those.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import psutil
from tqdm import tqdm

from env_server.backend import make_backend
from env_server.tasks.expert import Expert
from env_server.tasks.registry import make_task as sim_make_task
from env_server.types import TaskRef

# comparable families: (sim, x11)
PAIRS = [("files.create_folder", "x11.files.create_folder"), ("files.rename_file", "x11.files.rename_file"),
         ("files.move_file", "x11.files.move_file"), ("editor.replace_word", "x11.editor.replace_word")]


def run_episodes(backend, families: list[str], make, episodes: int, style: str, desc: str,
                 cpu=None) -> dict:
    """Median reset/step latency of expert episodes (screenshot on every observation, as a VLM would);
    with ``cpu`` (a CPU-seconds counter), also the CPU spent per reset and per step."""
    resets, steps, solved, total = [], [], 0, 0
    cpu_reset = cpu_step = 0.0
    for fam in tqdm(families, desc=desc, leave=False):
        for seed in range(episodes):
            task = make(TaskRef(fam, seed=seed))
            expert = Expert(task, style=style)
            c0 = cpu() if cpu else 0.0
            t0 = time.perf_counter()
            obs = backend.reset(task, screenshot=True)
            resets.append(time.perf_counter() - t0)
            c1 = cpu() if cpu else 0.0
            cpu_reset += c1 - c0
            while not obs.last:
                action = expert.act(obs)
                t0 = time.perf_counter()
                obs = backend.step(action, screenshot=True)
                steps.append(time.perf_counter() - t0)
            cpu_step += (cpu() if cpu else 0.0) - c1
            solved += obs.reward == 1.0
            total += 1
    return {"reset": statistics.median(resets), "step": statistics.median(steps), "n_steps": len(steps),
            "solved": solved, "total": total, "cpu_reset": cpu_reset / total,
            "cpu_step": cpu_step / len(steps), "steps_per_episode": len(steps) / total}


def session_procs(backend) -> list[psutil.Process]:
    out = []
    for pid in backend.session.pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(psutil.Process(pid))
    return out


def mem_mib(procs: list[psutil.Process]) -> tuple[float, float]:
    """(PSS, USS) in MiB: proportional share of shared pages, and pages no other process shares."""
    pss = uss = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            pss += info.pss
            uss += info.uss
    return pss / 2**20, uss / 2**20


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def own_cpu_s() -> float:
    """CPU seconds of this process and of its reaped children (apps killed at each reset)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """CPU seconds of a backend's desktop processes plus this process (and its reaped children), minus
    what the meter itself spends scanning processes."""

    def __init__(self, backend):
        self.backend = backend
        self.overhead = 0.0

    def __call__(self) -> float:
        own = own_cpu_s()
        value = own - self.overhead + cpu_s(session_procs(self.backend))
        self.overhead += own_cpu_s() - own
        return value


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2, help="episodes per family and style")
    ap.add_argument("--envs", type=int, default=4, help="x11 envs started at once for the memory measurement")
    ap.add_argument("--idle_s", type=float, default=5.0, help="seconds to measure idle CPU")
    args = ap.parse_args(argv)

    from env_server.x11.tasks import make_task as x11_make_task

    sim = make_backend("sim")
    x11 = make_backend("x11")
    t0 = time.perf_counter()
    x11.reset(x11_make_task(TaskRef(PAIRS[0][1], seed=99)))
    cold = time.perf_counter() - t0
    results = {}
    for style in ("api", "gui"):
        results["sim", style] = run_episodes(sim, [s for s, _ in PAIRS], sim_make_task, args.episodes, style,
                                             f"sim {style}")
        # CPU of the desktop processes, of this process (helper calls, settling, screenshots) and of the
        # apps killed at each reset (reaped children)
        results["x11", style] = run_episodes(x11, [x for _, x in PAIRS], x11_make_task, args.episodes, style,
                                             f"x11 {style}", cpu=CpuMeter(x11))
    # observation pieces on x11
    snaps, shots = [], []
    for _ in range(10):
        t0 = time.perf_counter()
        x11._snapshot()
        snaps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        x11.screenshot()
        shots.append(time.perf_counter() - t0)
    x11.close()

    print("\n== latency (median, screenshot with every observation) ==")
    print(f"{'backend':8} {'style':5} {'reset ms':>10} {'step ms':>10} {'solved':>8}")
    for (b, style), r in results.items():
        print(f"{b:8} {style:5} {r['reset'] * 1e3:10.1f} {r['step'] * 1e3:10.1f} {r['solved']:>4}/{r['total']:<3}")
    for style in ("api", "gui"):
        x, s = results["x11", style], results["sim", style]
        print(f"x11/sim ratio ({style}): reset {x['reset'] / s['reset']:.0f}x, step {x['step'] / s['step']:.0f}x")
    print(f"x11 cold first reset (starts Xvfb, bus, openbox, helper, apps): {cold * 1e3:.0f} ms")
    print(f"x11 observation parts: window list + AT-SPI walk {statistics.median(snaps) * 1e3:.1f} ms, "
          f"screenshot from the framebuffer {statistics.median(shots) * 1e3:.2f} ms")

    print(f"\n== capacity: {args.envs} x11 envs at once ==")
    envs = []
    try:
        for i in tqdm(range(args.envs), desc="starting envs", leave=False):
            env = make_backend("x11")
            envs.append(env)
            env.reset(x11_make_task(TaskRef(PAIRS[i % len(PAIRS)][1], seed=i)))
        mems = [mem_mib(session_procs(e)) for e in envs]
        per_env = [m[0] for m in mems]
        uss = statistics.mean(m[1] for m in mems)
        procs = [p for e in envs for p in session_procs(e)]
        c0 = cpu_s(procs)
        time.sleep(args.idle_s)
        idle_cores = (cpu_s(procs) - c0) / args.idle_s / len(envs)
        n_procs = len(procs) / len(envs)
    finally:
        for env in envs:
            env.close()
    mem = psutil.virtual_memory().total / 2**20
    cores = psutil.cpu_count() or 1
    mib = statistics.mean(per_env)
    x_all = [results["x11", st] for st in ("api", "gui")]
    cpu_step = statistics.mean(r["cpu_step"] for r in x_all)
    cpu_reset = statistics.mean(r["cpu_reset"] for r in x_all)
    ep_len = statistics.mean(r["steps_per_episode"] for r in x_all)
    by_mem = int(0.8 * mem / mib)  # PSS at a few envs: conservative, shared pages split fewer ways
    print(f"memory per env ({n_procs:.0f} processes): PSS {mib:.0f} MiB (min {min(per_env):.0f}, "
          f"max {max(per_env):.0f}), USS {uss:.0f} MiB; machine {mem / 1024:.1f} GiB, {cores} cores")
    print(f"CPU: idle {idle_cores * 100:.2f}% of a core per env; {cpu_step * 1e3:.0f} ms per step, "
          f"{cpu_reset * 1e3:.0f} ms per reset (all processes); {ep_len:.1f} steps per expert episode")
    print(f"memory bound (80% of RAM): ~{by_mem} envs")
    for pace in (1.0, 10.0):
        per_env_cores = (cpu_step + cpu_reset / ep_len) / pace + idle_cores
        print(f"CPU bound, each env taking one step every {pace:g} s (resets amortised over "
              f"{ep_len:.1f}-step episodes): ~{int(cores / per_env_cores)} envs")
    print(f"x11 envs actually started together here: {len(envs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
