"""The order-matters experiment (SYNTHETIC task, see ranking/synthetic_order.py): on held-out
questions the trained ranker's ordering beats random order and pre-ranking order."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrl_desktop.mesh import make_mesh
from ranking import experiment_order as eo
from ranking import synthetic_order as so
from ranking.candidates import Candidates
from ranking.feedback import FeedbackStore
from ranking.train import default_train_config

REPO = Path(__file__).resolve().parents[1]


def test_world_and_rule():
    w = so.make_world(n_keys=20, seed=1)
    assert len(w.pool) == 80 and len(w.heldout_keys) == 6
    assert not set(w.train_keys) & set(w.heldout_keys)
    for d in w.pool:
        assert (d.code == w.truth[d.key]) == d.reliable
    p = so.rule_distribution(["3", "7", "3"], decay=0.5)
    np.testing.assert_allclose(p[3], (0.25 + 1.0) / 1.75)
    np.testing.assert_allclose(p[7], 0.5 / 1.75)
    tok = so.make_tokenizer()
    batch = so.sample_llm_batch(np.random.default_rng(0), tok, 8)
    for row, mask, target in zip(batch["tokens"], batch["attention_mask"], batch["loss_mask"], strict=True):
        text = tok.decode(row[mask])
        assert text.split()[-5:-1][:2] == ["what", "is"] and target.sum() == 1
        assert tok.encode(tok.decode(row[mask][1:-1]))[: 4] == row[1:5].tolist()


class _RecencyLLM:
    """A fake scorer that answers with the code of the LAST demonstration in the prompt."""

    def option_logprobs(self, prompts, options):
        out = np.full((len(prompts), len(options)), math.log(0.01))
        for i, prompt in enumerate(prompts):
            last = prompt.split(";")[-2].split()[-1]  # "... src key CODE ; what is key ?"
            out[i, options.index(last)] = math.log(0.9)
        return out


def test_simulated_feedback_log_follows_the_llm_answers(tmp_path):
    w = so.make_world(n_keys=12, seed=3)
    texts, ids = w.pool_texts, [f"doc-{i}" for i in range(len(w.pool))]
    keys = w.train_keys[:3]
    idx = np.array([[i for i, d in enumerate(w.pool) if d.key == key] + [-1] for key in keys])
    where = idx >= 0
    cands = Candidates(idx, np.zeros(idx.shape, np.float32), np.zeros(idx.shape, np.float32), where,
                       np.zeros((*idx.shape, 4), np.float32), np.zeros((3, 4), np.float32),
                       np.zeros((*idx.shape, 10), np.float32))
    qs, golds = [so.question_text(key) for key in keys], [w.truth[key] for key in keys]
    path = tmp_path / "fb.jsonl"
    stats = eo.simulate_feedback(_RecencyLLM(), cands, ids, texts, qs, golds, k=3, per_query=10, path=path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert stats["events"] == len(rows) == 30
    assert stats["copy_rate"] + stats["regenerate_rate"] + stats["dislike_rate"] == pytest.approx(1.0)
    by_id = dict(zip(ids, w.pool, strict=True))
    for row in rows:
        shown = [by_id[d] for d in row["shown"]]
        assert len(shown) == 3 and {d.key for d in shown} == {row["query"].split()[2]}
        right = shown[-1].code == w.truth[shown[-1].key]  # the fake LLM copies the last demo
        assert (row["feedback"] == "copy") == right and row["answer"] == shown[-1].code
    store = FeedbackStore()
    assert store.ingest(path).added == 30  # a valid log for the real reader
    assert 0.2 < stats["copy_rate"] < 0.8  # 2 of 4 demonstrations per key are reliable


def test_experiment_cli_rejects_bad_flags():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "ranking.experiment_order", "--n_keys=3"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error: --n_keys must be in [10," in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ranker_order_beats_random_and_prerank_on_heldout(tmp_path):
    scfg = eo.default_config()
    scfg.n_keys, scfg.llm_steps, scfg.orders_per_query = 100, 400, 16
    scfg.prerank_steps, scfg.random_orders, scfg.aggregate_orders = 100, 4, 4
    tcfg = default_train_config()
    tcfg.steps, tcfg.checkpoint_every = 150, 1000
    mesh = make_mesh(1, 2, 1, devices=jax.devices()[:2])
    r = eo.run(scfg, tcfg, mesh=mesh, workdir=tmp_path, progress=False)
    print(eo.format_results(r), r["seconds"])
    assert r["heldout_questions"] == 30
    assert r["llm_rule_fidelity"]["kl"] < 0.2  # the tiny decoder really learned its (biased) rule
    # both label sources went in: LLM log-likelihoods and the feedback JSONL read back
    assert r["train"]["llm_labelled_orderings"] == 70 * 16 and r["train"]["feedback_lists"] == 70 * 6
    assert r["feedback"]["events"] == 420 and (tmp_path / "feedback.jsonl").exists()
    rk = r["ranker"]
    for base in eo.BASELINES:  # random, the ranker's own set shuffled, pre-ranking (and reversed)
        assert rk["accuracy"] >= r[base]["accuracy"] + 0.2, (base, r)
        assert rk["logp_gold"] >= r[base]["logp_gold"] + 0.5, (base, r)
        assert r["paired"][base]["wins"] >= 0.7 * r["heldout_questions"], (base, r["paired"])
    for key in ("aggregate_prerank_orderings", "aggregate_ranker_orderings"):
        agg = r[key]
        assert 0.0 <= agg["pairwise_agreement"] <= agg["agreement"] <= 1.0, (key, agg)
    # the pre-ranking top-k holds 2 right and 2 wrong (differing) answers: combining orderings helps
    agg = r["aggregate_prerank_orderings"]
    assert agg["average_accuracy"] >= agg["single_prompt_accuracy"] + 0.1, agg
    assert (tmp_path / "results.json").exists() and (tmp_path / "ranker.json").exists()
