"""The training job end to end (tiny sizes): phases run in order with logged reasons, and a job killed
in the RL phase (SIGKILL) and again in the Entropulse phase (SIGTERM) resumes with metrics equal to
an uninterrupted run's. Also: config typos fail fast."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config.bc.episodes=48", "--config.bc.steps=12", "--config.bc.log_every=4", "--config.bc.batch_size=16",
    "--config.bc.copy_warmup_steps=4", "--config.bc.copy_prompt_tokens=24",
    "--config.rl.iters=3", "--config.rl.tasks_per_iter=4", "--config.rl.group_size=4", "--config.rl.minibatch=32",
    "--config.rl.kl_coef=0.05",
    "--config.entropulse.steps=6", "--config.entropulse.min_rl_iters=2", "--config.entropulse.batch_size=8",
    "--config.entropulse.entropy_threshold=0.0",
    "--config.eval.episodes=8", "--config.eval.train_episodes=8", "--config.eval.every=2",
    "--config.checkpoint.sft_every=2", "--config.checkpoint.rl_every=1", "--config.checkpoint.async_save=True",
    "--config.log.progress=False", "--config.log.measure_peak=False",
    "--config.model.hidden_size=64", "--config.model.num_layers=2", "--config.model.head_dim=16",
    "--config.model.intermediate_size=128", "--config.tokenizer.vocab_size=512",
    "--config.prompt.max_prompt_tokens=96", "--config.env.workers=1",
    # families where even an untrained policy sometimes succeeds, so Entropulse has rollouts to learn
    "--config.env.families=files.delete_missing,mail.reply_missing,settings.font_out_of_range,settings.set_volume",
]
# metrics that must be identical after a resume (not timings)
DETERMINISTIC = ("kind", "phase", "loss", "entropy", "grad_norm", "rollout_success", "return", "clip_frac",
                 "ratio", "kl", "invalid_rate", "informative_steps", "store", "heldout_success",
                 "train_success", "from", "to", "reason")


def _cmd(workdir):
    return [sys.executable, "-m", "jaxrl_desktop.train", f"--config.workdir={workdir}", *TINY]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    return env


def _records(workdir):
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        key = (r["step"], r.get("kind"), r.get("phase"))
        out[key] = {k: r[k] for k in DETERMINISTIC if k in r}
    return out


def _run_until(workdir, predicate, sig, timeout=600):
    log = Path(workdir).with_suffix(".stderr.log")
    with open(log, "a") as err:
        proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the job ended before it could be killed:\n{log.read_text()[-3000:]}")
            if predicate():
                proc.send_signal(sig)
                proc.wait(60)
                return
            time.sleep(0.2)
        raise AssertionError("the kill condition never happened")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ckpt_phase(workdir):
    """(phase label, step within the phase) of the newest finished checkpoint, or None."""
    ck = Path(workdir) / "checkpoints"
    names = [p.name for p in ck.iterdir() if p.is_dir()] if ck.exists() else []
    steps = sorted((int(n) for n in names if n.isdigit()), reverse=True)
    for s in steps:
        meta = ck / str(s) / "meta" / "metadata"
        if meta.exists():
            try:
                p = json.loads(meta.read_text())["progress"]
                return p["phase_label"], p["phase_step"]
            except (json.JSONDecodeError, KeyError):
                continue
    return None


@pytest.mark.slow
def test_kill_and_resume_gives_identical_metrics(tmp_path):
    ref, broken = tmp_path / "ref", tmp_path / "broken"
    done = subprocess.run(_cmd(ref), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    want = _records(ref)
    kinds = [r.get("kind") for r in want.values()]
    assert kinds.count("phase_change") == 5  # copy->bc->rl1->entropulse1->rl2->done
    reasons = [r["reason"] for r in want.values() if r.get("kind") == "phase_change"]
    assert any("RL iterations" in r or "entropy" in r for r in reasons)
    summary = json.loads((ref / "summary.json").read_text())
    assert {"random", "bc", "rl1", "entropulse1", "rl2"} <= summary.keys()
    assert (ref / "training.png").stat().st_size > 1000

    # the trained checkpoint evaluates on the families it was trained on, next to the random baseline
    out = tmp_path / "eval"
    ev = subprocess.run([sys.executable, "-m", "eval.desktop", f"--checkpoint={ref}", "--seeds=1",
                         "--policies=model,random", f"--out={out}"], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())["results"]
    model = next(v for k, v in res.items() if k.startswith("model@"))
    trained = set(json.loads((ref / "config.json").read_text())["env"]["families"].split(","))
    assert set(model["by_family"]) == trained == set(res["random"]["by_family"])

    # a kill in every phase once it has checkpointed (async saves: the next save may be in flight):
    # SIGKILL in BC, in RL1 and in RL2, SIGTERM in Entropulse; then the same command finishes the job
    for phase, at, sig in (("bc", 2, signal.SIGKILL), ("rl1", 1, signal.SIGKILL),
                           ("entropulse1", 2, signal.SIGTERM), ("rl2", 1, signal.SIGKILL)):
        _run_until(broken, lambda p=phase, a=at: (_ckpt_phase(broken) or ("", 0))[0] == p
                   and _ckpt_phase(broken)[1] >= a, sig)
    done = subprocess.run(_cmd(broken), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from checkpoint" in done.stderr and "(phase rl2)" in done.stderr
    got = _records(broken)
    assert got.keys() == want.keys()
    for key in want:
        for k, v in want[key].items():
            if isinstance(v, float):
                assert got[key][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (key, k)
            else:
                assert got[key][k] == v, (key, k)


def test_config_typos_fail_fast(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jaxrl_desktop.train", f"--config.workdir={tmp_path}",
                        "--config.rl.gropu_size=3"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "gropu_size" in r.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override, needle", [
    ("--config.env.backend_kwargs=[1", "env.backend_kwargs is not JSON"),
    ("--config.env.backend_kwargs=[1]", "must be a JSON object"),
    ("--config.env.families=filez", "unknown family or app ['filez']"),
    ("--config.rl.group_size=1", "rl.group_size must be at least 2"),
    ("--config.rl.split=heldout", "rl.split must be 'train' or 'novel'"),
    ("--config.rl.family_floor=0", "rl.family_floor must be in (0, 1]"),
    ("--config.rl.family_decay=2", "rl.family_decay must be in [0, 1]"),
])
def test_unusable_config_values_are_one_line_usage_errors(tmp_path, override, needle):
    r = subprocess.run([sys.executable, "-m", "jaxrl_desktop.train", f"--config.workdir={tmp_path}", override],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "checkpoints").exists()
