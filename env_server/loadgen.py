"""Load generation with exact accounting (used by ``bench/soak.py`` and ``tests/test_soak.py``).

Several client processes each drive many envs EnvPool-style (``send``/``recv``, every env always
busy) for a fixed number of steps per env. Every item sent is tracked by (request id, index) and
every result by (env id, episode id, step index), so a client proves that nothing was lost (each
item answered, step indices contiguous) or duplicated (no item answered twice, no transition
seen twice). Meanwhile the parent samples the server's resident memory.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    """``python -m env_server.serve`` on a free 127.0.0.1 port, in a subprocess."""

    def __init__(self, *extra: str, backend: str = "sim", workers: int = 2, port: int = 0):
        self.extra = list(extra)
        self.backend = backend
        self.workers = workers
        self.port = port
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="envsrv-")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, port_file: Path) -> list[str]:
        return [sys.executable, "-m", "env_server.serve", "--port", str(self.port),
                "--port_file", str(port_file), "--backend", self.backend, "--workers",
                str(self.workers), "--grace_s", "1", *self.extra]

    def start(self, timeout: float = 120.0) -> ServerProcess:
        port_file = Path(self._dir.name) / "port"
        port_file.unlink(missing_ok=True)
        log = open(Path(self._dir.name) / "server.log", "w")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(self.command(port_file), cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"the env server did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self

    def log(self) -> str:
        path = Path(self._dir.name) / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tree(self) -> list[psutil.Process]:
        """The server process and its descendants (forkserver, workers, resource tracker)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident bytes of the whole server tree."""
        return sum(self.rss_by_process().values())

    def rss_by_process(self) -> dict[str, int]:
        """Resident bytes of each process of the server tree, by ``"<role> <pid>"`` (role: server,
        forkserver, resource-tracker or worker)."""
        out = {}
        for p in self.tree():
            try:
                out[f"{self._role(p)} {p.pid}"] = p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def _role(self, p: psutil.Process) -> str:
        if p.pid == self.proc.pid:
            return "server"
        if p.ppid() == self.proc.pid:  # helpers the server started; workers are their children
            cmd = " ".join(p.cmdline())
            return ("forkserver" if "forkserver" in cmd else
                    "resource-tracker" if "resource_tracker" in cmd else "worker")
        return "worker"

    def kill(self) -> None:
        """SIGKILL the server and its workers (like a machine crash)."""
        procs = self.tree()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            procs = self.tree()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
            psutil.wait_procs(procs, timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._dir.cleanup()


@dataclass
class ClientReport:
    """What one load client saw; ``problems`` lists every accounting violation (empty = exact)."""

    client: int
    envs: int
    steps: int = 0  # step results received (all OK)
    resets: int = 0
    results: int = 0
    items_sent: int = 0
    outstanding: int = 0  # items never answered
    episodes_finished: int = 0
    invalid_actions: int = 0  # observations with an error text (bad actions are part of the load)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def policy(env_id: int, step: int, a11y: str) -> str:
    """A deterministic action stream: mostly valid GUI actions, some malformed ones."""
    k = (env_id * 31 + step * 7) % 23
    if k == 0:
        return "click("  # malformed: costs a step, returns an error text
    if k < 4:
        return "scroll(1)"
    if k == 4:
        return 'type("soak")'
    return f"click(#{(env_id + step) % (a11y.count(chr(10)) + 1)})"


def run_client(index: int, address: str, envs: int, steps: int, progress=None,
               timeout: float = 120.0) -> ClientReport:
    """Drive ``envs`` envs until each made ``steps`` steps; account for every item and result."""
    from env_server.client import BatchedClient  # imported in the client process

    report = ClientReport(index, envs)
    problems = report.problems
    t0 = time.perf_counter()
    with BatchedClient(address, timeout=timeout) as client:
        ids = client.create(envs)
        done_steps = dict.fromkeys(ids, 0)
        last: dict[int, tuple[int, int]] = dict.fromkeys(ids, (0, 0))
        seen: set[tuple[int, int, int]] = set()
        outstanding: dict[tuple[int, int], tuple[str, int]] = {}  # (rid, index) -> (kind, env)
        seeds = iter(range(index * 1_000_000, (index + 1) * 1_000_000))

        def send(kind: str, env_ids: list[int], a11y: dict[int, str]) -> None:
            if not env_ids:
                return
            if kind == "reset":
                rid = client.send_reset(env_ids, [next(seeds) for _ in env_ids])
            else:
                rid = client.send(env_ids, [policy(e, done_steps[e], a11y.get(e, "")) for e in env_ids])
            for i, e in enumerate(env_ids):
                outstanding[(rid, i)] = (kind, e)
            report.items_sent += len(env_ids)

        send("reset", ids, {})
        finished = 0
        while outstanding:
            results = client.recv(1, timeout=timeout)
            if not results:
                problems.append(f"no result for {timeout}s with {len(outstanding)} items outstanding")
                break
            steps_next, resets_next, a11y = [], [], {}
            for r in results:
                report.results += 1
                sent = outstanding.pop((r.request_id, r.index), None)
                if sent is None:
                    problems.append(f"unexpected or duplicate result {r.request_id}/{r.index}")
                    continue
                kind, env = sent
                if r.env_id != env or r.kind != kind:
                    problems.append(f"result {r.request_id}/{r.index} is {r.kind} of env {r.env_id}, "
                                    f"expected {kind} of env {env}")
                    continue
                if not r.ok:
                    problems.append(f"{kind} of env {env}: {r.code.name}: {r.message}")
                    continue
                key = (env, r.episode_id, r.step_index)
                if key in seen:
                    problems.append(f"duplicate transition {key}")
                seen.add(key)
                ep, st = last[env]
                if kind == "reset":
                    report.resets += 1
                    if r.episode_id != ep + 1 or r.step_index != 0:
                        problems.append(f"env {env}: reset gave {key[1:]} after {(ep, st)}")
                else:
                    report.steps += 1
                    done_steps[env] += 1
                    if (r.episode_id, r.step_index) != (ep, st + 1):
                        problems.append(f"env {env}: step gave {key[1:]} after {(ep, st)}")
                    report.invalid_actions += bool(r.observation.error)
                last[env] = (r.episode_id, r.step_index)
                if done_steps[env] >= steps:
                    finished += 1
                    continue
                if kind == "step" and r.done:
                    report.episodes_finished += 1
                    resets_next.append(env)
                else:
                    steps_next.append(env)
                    a11y[env] = r.observation.a11y
            send("step", steps_next, a11y)
            send("reset", resets_next, a11y)
            if progress is not None:
                progress[index] = report.steps
        report.outstanding = len(outstanding)
        if report.outstanding:
            problems.append(f"{report.outstanding} items never answered")
        if finished != envs:
            problems.append(f"only {finished}/{envs} envs reached {steps} steps")
        client.close(ids)
    report.seconds = time.perf_counter() - t0
    del problems[50:]  # keep the report small
    return report


def _client_main(index, address, envs, steps, progress, out, timeout):
    try:
        out.put(asdict(run_client(index, address, envs, steps, progress, timeout)))
    except BaseException:
        out.put({"client": index, "crash": traceback.format_exc()})


@dataclass
class SoakResult:
    clients: list[ClientReport]
    seconds: float  # wall time of the stepping phase (all clients)
    steps: int
    rss_start: int  # server tree RSS before the clients connect
    rss_warm: int  # RSS once every client passed the warm-up fraction of its steps
    rss_end: int  # RSS when the last client finished stepping (envs still alive)
    rss_peak: int
    samples: list[tuple[float, int]]  # (fraction of steps done, RSS)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    @property
    def problems(self) -> list[str]:
        return [f"client {c.client}: {p}" for c in self.clients for p in c.problems]


def soak(address: str, rss, *, clients: int = 4, envs: int = 1000, steps: int = 30,
         warmup: float = 0.3, timeout: float = 120.0, poll_s: float = 0.25,
         on_progress=None) -> SoakResult:
    """Run ``clients`` processes sharing ``envs`` envs for ``steps`` steps each; sample ``rss()``."""
    ctx = mp.get_context("spawn")
    progress = ctx.Array("q", clients, lock=False)
    out = ctx.Queue()
    share = [envs // clients + (i < envs % clients) for i in range(clients)]
    total = sum(share) * steps
    rss_start = rss()
    procs = [ctx.Process(target=_client_main, args=(i, address, share[i], steps, progress, out,
                                                    timeout), daemon=True, name=f"soak-client-{i}")
             for i in range(clients)]
    for p in procs:
        p.start()
    reports: dict[int, dict] = {}
    samples: list[tuple[float, int]] = []
    rss_warm = rss_end = 0
    t_first = t_last = None
    hard_end = time.monotonic() + timeout * 4 + steps * 2

    def drain() -> None:
        while not out.empty():
            rep = out.get()
            reports[rep["client"]] = rep

    while len(reports) < clients and time.monotonic() < hard_end:
        drain()
        if all(not p.is_alive() for p in procs):
            time.sleep(0.2)
            drain()
            break
        counts = progress[:]
        if t_first is None and sum(counts) > 0:
            t_first = time.perf_counter()
        done = [counts[i] / max(1, share[i] * steps) for i in range(clients)]
        value = rss()
        samples.append((sum(counts) / total, value))
        if not rss_warm and min(done) >= warmup:
            rss_warm = value
        if not rss_end and min(done) >= 1.0:
            t_last, rss_end = time.perf_counter(), value
        if on_progress is not None:
            on_progress(sum(counts) / total, value)
        time.sleep(poll_s)
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    client_reports = []
    for i in range(clients):
        rep = reports.get(i)
        if rep is None:
            client_reports.append(ClientReport(i, share[i], problems=["client process died"]))
        elif "crash" in rep:
            client_reports.append(ClientReport(i, share[i], problems=[f"crashed: {rep['crash']}"]))
        else:
            client_reports.append(ClientReport(**rep))
    t_last = t_last or time.perf_counter()
    steps_done = sum(c.steps for c in client_reports)
    return SoakResult(client_reports, t_last - (t_first or t_last), steps_done, rss_start,
                      rss_warm or (samples[-1][1] if samples else 0),
                      rss_end or (samples[-1][1] if samples else 0),
                      max((s[1] for s in samples), default=0), samples)


class RssRecorder:
    """Samples a server's RSS per process; pass it as ``soak(rss=...)`` and its ``progress`` as
    ``on_progress`` to get ``samples``: (fraction of steps done, {process: RSS bytes})."""

    def __init__(self, server: ServerProcess, on_progress=None):
        self.server = server
        self.on_progress = on_progress
        self.last: dict[str, int] = {}
        self.samples: list[tuple[float, dict[str, int]]] = []

    def __call__(self) -> int:
        self.last = self.server.rss_by_process()
        return sum(self.last.values())

    def progress(self, fraction: float, rss: int) -> None:
        self.samples.append((fraction, self.last))
        if self.on_progress is not None:
            self.on_progress(fraction, rss)

    def window(self, lo: float, hi: float) -> dict[str, int]:
        """Per process (and ``"total"``), the peak RSS over the samples taken between fractions
        ``lo`` and ``hi`` of the steps (processes seen in every such sample)."""
        rows = [d for f, d in self.samples if lo <= f <= hi]
        if not rows:
            raise ValueError(f"no RSS sample between {lo:.0%} and {hi:.0%} of the steps")
        keys = set.intersection(*(set(d) for d in rows))
        out = {k: max(d[k] for d in rows) for k in sorted(keys)}
        out["total"] = max(sum(d.values()) for d in rows)
        return out

    def growth(self, mid=(0.35, 0.55), end=(0.85, 1.0)) -> dict[str, tuple[int, int]]:
        """(peak RSS in the middle window, peak RSS in the end window) per process and total."""
        a, b = self.window(*mid), self.window(*end)
        return {k: (a[k], b[k]) for k in a if k in b}


def flat(growth: dict[str, tuple[int, int]], rel: float = 0.03, abs_mib: float = 3.0) -> list[str]:
    """Processes whose end-window peak exceeds the middle-window peak by more than
    ``max(abs_mib MiB, rel * middle)`` (twice that for the total); empty = memory stayed flat."""
    bad = []
    for name, (mid, end) in growth.items():
        k = 2 if name == "total" else 1
        allowed = k * max(abs_mib * 2**20, rel * mid)
        if end - mid > allowed:
            bad.append(f"{name}: {mid / 2**20:.1f} -> {end / 2**20:.1f} MiB "
                       f"(+{(end - mid) / 2**20:.1f} > {allowed / 2**20:.1f} allowed)")
    return bad


def describe(result: SoakResult) -> str:
    mib = 1 << 20
    lines = [
        f"steps: {result.steps} in {result.seconds:.1f}s = {result.steps_per_s:.0f} steps/s "
        f"over {sum(c.envs for c in result.clients)} envs from {len(result.clients)} clients",
        f"results: {sum(c.results for c in result.clients)} for "
        f"{sum(c.items_sent for c in result.clients)} items sent; resets "
        f"{sum(c.resets for c in result.clients)}; episodes finished "
        f"{sum(c.episodes_finished for c in result.clients)}; steps with an error text "
        f"{sum(c.invalid_actions for c in result.clients)}",
        f"server RSS MiB: start {result.rss_start / mib:.0f}, after warm-up {result.rss_warm / mib:.0f}, "
        f"end {result.rss_end / mib:.0f}, peak {result.rss_peak / mib:.0f}",
        f"accounting: {'exact (nothing lost or duplicated)' if not result.problems else result.problems[:5]}",
    ]
    return "\n".join(lines)
