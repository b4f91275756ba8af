"""The order-matters experiment (SYNTHETIC task, see ranking/synthetic_order.py): on held-out
questions the trained ranker's ordering beats random order and pre-ranking order."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxrl_desktop.mesh import make_mesh
from ranking import experiment_order as eo
from ranking import synthetic_order as so
from ranking.train import default_train_config


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
    rk = r["ranker"]
    for base in ("random", "prerank", "prerank_reversed"):
        assert rk["accuracy"] >= r[base]["accuracy"] + 0.2, (base, r)
        assert rk["logp_gold"] >= r[base]["logp_gold"] + 0.5, (base, r)
    agg = r["aggregate_prerank_orderings"]
    assert 0.0 <= agg["pairwise_agreement"] <= agg["agreement"] <= 1.0
    assert (tmp_path / "results.json").exists() and (tmp_path / "ranker.json").exists()
