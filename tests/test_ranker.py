"""The list-aware ranker: shapes, sharding, equivariance, masking, training, checkpoints, resume."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.sharding import logical_axes_of
from ranking.listwise import SOURCE_FEEDBACK, SOURCE_LLM, ListwiseData
from ranking.ranker import (
    Ranker,
    RankerConfig,
    RankerScorer,
    create_ranker,
    load_ranker,
    order_from_scores,
    position_labels,
    save_ranker,
)
from ranking.train import default_train_config, fit_ranker

E = 16
CFG = RankerConfig(embed_dim=E, d_model=32, num_layers=2, num_heads=4, mlp_dim=64)


def _inputs(b: int = 3, n: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    where = np.ones((b, n), bool)
    where[0, 5:] = False
    where[2, 1] = False  # a hole in the middle
    return {
        "query_emb": rng.standard_normal((b, E)).astype(np.float32),
        "item_emb": rng.standard_normal((b, n, E)).astype(np.float32),
        "dense": rng.standard_normal((b, n)).astype(np.float32),
        "prerank": rng.standard_normal((b, n)).astype(np.float32),
        "where": where,
    }


@pytest.fixture(scope="module")
def sharded():
    mesh = make_mesh(2, 2, 2)
    model = create_ranker(CFG, mesh)
    return model, mesh, RankerScorer(model, mesh)


def test_shapes_and_sharding(sharded):
    model, _, scorer = sharded
    scores, prob = scorer(_inputs())
    assert scores.shape == (3, 7) and prob.shape == (3,)
    assert np.isfinite(scores).all() and ((prob > 0) & (prob < 1)).all()
    state = nnx.state(model, nnx.Param)
    for path, var in jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
        assert var.get_metadata().get("out_sharding") is not None or var.get_value().ndim <= 1, path
    assert logical_axes_of(model.item_proj) == (None, "embed")
    assert model.item_proj.get_value().sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert model.blocks[0].attn.q.get_value().sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    # the sharded, jitted scorer equals a plain eager forward pass
    inp = _inputs()
    plain = Ranker(CFG, rngs=nnx.Rngs(0))
    ref_scores, ref_logit = plain(*(jax.numpy.asarray(inp[k]) for k in
                                    ("query_emb", "item_emb", "dense", "prerank", "where")))
    np.testing.assert_allclose(scores, np.asarray(ref_scores), atol=2e-5)
    np.testing.assert_allclose(prob, jax.nn.sigmoid(np.asarray(ref_logit)), atol=2e-6)


def test_item_scores_are_permutation_equivariant(sharded):
    _, _, scorer = sharded
    inp = _inputs(seed=1)
    scores, prob = scorer(inp)
    rng = np.random.default_rng(3)
    for _ in range(3):
        perm = rng.permutation(inp["dense"].shape[1])
        permuted = {k: (v[:, perm] if v.ndim >= 2 and k != "query_emb" else v) for k, v in inp.items()}
        s2, p2 = scorer(permuted)
        valid = inp["where"][:, perm]
        np.testing.assert_allclose(s2[valid], scores[:, perm][valid], atol=1e-5)
        np.testing.assert_allclose(p2, prob, atol=1e-6)


def test_padded_items_have_no_effect(sharded):
    _, _, scorer = sharded
    inp = _inputs(seed=2)
    scores, prob = scorer(inp)
    junk = {k: v.copy() for k, v in inp.items()}
    pad = ~inp["where"]
    junk["item_emb"][pad] = np.nan
    junk["dense"][pad] = 1e6
    junk["prerank"][pad] = -np.inf
    s2, p2 = scorer(junk)
    np.testing.assert_allclose(s2[inp["where"]], scores[inp["where"]], atol=1e-6)
    np.testing.assert_allclose(p2, prob, atol=1e-7)
    # extra padding columns do not change anything either
    wide = {k: (np.concatenate([v, np.zeros_like(v[:, :3])], axis=1) if k != "query_emb" else v)
            for k, v in inp.items()}
    s3, _ = scorer(wide)
    np.testing.assert_allclose(s3[:, :7][inp["where"]], scores[inp["where"]], atol=1e-6)
    for row, where in zip(scores, inp["where"], strict=True):
        chosen = order_from_scores(row + 100 * ~where, where, 10)
        assert where[chosen].all() and len(chosen) == where.sum()


def test_order_from_scores_and_position_labels_roundtrip():
    scores = np.array([0.3, 2.0, -1.0, 0.9, 5.0])
    where = np.array([True, True, True, True, False])
    order = order_from_scores(scores, where, 3)
    assert order.tolist() == [0, 3, 1]  # ascending score: the best item (1) is last
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(1, 6))
        orders = rng.choice(6, k, replace=False)
        labels = np.asarray(position_labels(jax.numpy.asarray(orders[None]), 6))[0]
        assert order_from_scores(labels, None, k).tolist() == orders.tolist()


# --------------------------------------------------------------- training
W = np.array([0.1, 0.3, 1.0])  # the synthetic "LLM" weighs the LAST of 3 demonstrations most


def _listwise(q: int, seed: int, n: int = 8, m: int = 12, feedback: bool = True):
    """Items have a hidden quality (a direction of their embedding); an ordering's reward is the
    recency-weighted quality of its items, so the best order puts the best items LAST."""
    rng = np.random.default_rng(seed)
    u = np.random.default_rng(99).standard_normal(E)
    u /= np.linalg.norm(u)
    emb = rng.standard_normal((q, n, E)).astype(np.float32)
    quality = emb @ u
    k = len(W)
    orders = np.full((q, m + 2, k), -1, np.int32)
    rewards = np.zeros((q, m + 2), np.float32)
    mask = np.zeros((q, m + 2), bool)
    source = np.zeros((q, m + 2), np.int8)
    for i in range(q):
        for j in range(m):
            o = rng.choice(n, k, replace=False)
            orders[i, j], rewards[i, j], mask[i, j] = o, quality[i, o] @ W, True
        if feedback:  # a copied list (good) and a disliked list (bad), both list-wide labels
            best, worst = np.argsort(-quality[i])[:k][::-1], np.argsort(quality[i])[:k]
            orders[i, m], rewards[i, m] = best, 1.0
            orders[i, m + 1], rewards[i, m + 1] = worst, -1.0
            mask[i, m:] = True
            source[i, m:] = SOURCE_FEEDBACK
    data = ListwiseData(
        query_emb=rng.standard_normal((q, E)).astype(np.float32), item_emb=emb,
        dense=rng.standard_normal((q, n)).astype(np.float32),
        prerank=rng.standard_normal((q, n)).astype(np.float32), where=np.ones((q, n), bool),
        orders=orders, rewards=rewards, list_mask=mask, source=source,
        item_ids=np.tile(np.arange(n), (q, 1)), queries=[f"q{i}" for i in range(q)],
    )
    return data, quality


def _reward(model, mesh, data, quality):
    scores, _ = RankerScorer(model, mesh)(data.inputs())
    got = [quality[i, order_from_scores(scores[i], None, len(W))] @ W for i in range(len(data))]
    best = [np.sort(quality[i])[-len(W):] @ W for i in range(len(data))]
    rng = np.random.default_rng(5)
    rand = [np.mean([quality[i, rng.choice(quality.shape[1], len(W), replace=False)] @ W
                     for _ in range(50)]) for i in range(len(data))]
    return float(np.mean(got)), float(np.mean(best)), float(np.mean(rand))


def _tcfg(steps: int):
    t = default_train_config()
    t.steps, t.batch_lists, t.learning_rate, t.warmup, t.checkpoint_every, t.log_every = steps, 16, 3e-3, 5, 10, 10
    return t


MODEL = dict(d_model=32, num_layers=2, num_heads=4, mlp_dim=64, init_std=0.02)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data, _ = _listwise(64, seed=0)
    mesh = make_mesh(1, 2, 1, devices=jax.devices()[:2])
    workdir = tmp_path_factory.mktemp("ranker_a")
    res = fit_ranker(data, _tcfg(80), MODEL, mesh, workdir, seed=0, progress=False)
    return res, data, mesh, workdir


def test_training_reduces_loss_and_learns_the_order(trained):
    res, _, mesh, workdir = trained
    losses = [h["loss"] for h in res.history]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3, (losses[:10], losses[-10:])
    held, quality = _listwise(32, seed=7)
    got, best, rand = _reward(res.model, mesh, held, quality)
    assert got > rand + 0.7 * (best - rand), (got, best, rand)
    assert (workdir / "metrics.jsonl").read_text().count("\n") == 8
    # the saved ranker restores onto another mesh with identical scores
    model2, info = load_ranker(workdir, make_mesh(2, 2, 2))
    assert info["step"] == 80 and model2.cfg == res.config
    a, _ = RankerScorer(res.model, mesh)(held.inputs())
    b, _ = RankerScorer(model2, make_mesh(2, 2, 2))(held.inputs())
    np.testing.assert_allclose(a, b, atol=1e-5)


def _feedback_only(q: int, seed: int, flip: bool = False, shown: int = 8):
    """Only list-wide feedback: users copy a shown list whose (hidden) recency-weighted quality is in
    the top third and dislike / regenerate the rest; ``flip`` inverts the users' taste (a control)."""
    data, quality = _listwise(q, seed, m=shown, feedback=False)
    values = np.einsum("qmk,k->qm", np.take_along_axis(quality[:, None, :], data.orders, -1), W)
    good = values > np.quantile(values, 2 / 3)
    good = ~good if flip else good
    rng = np.random.default_rng(seed + 1)
    data.rewards = np.where(good, 1.0, np.where(rng.random(values.shape) < 0.5, -0.5, -1.0)).astype(np.float32)
    data.source = np.full_like(data.source, SOURCE_FEEDBACK)
    return data, quality


def test_feedback_alone_teaches_the_order():
    """The copy / regenerate / dislike path on its own moves the ranker the users' way (and a
    ranker trained on inverted feedback goes the other way, so the check is not vacuous)."""
    mesh = make_mesh(1, 2, 1, devices=jax.devices()[:2])
    held, quality = _listwise(32, seed=7)
    out = {}
    for flip in (False, True):
        data, _ = _feedback_only(64, seed=3, flip=flip)
        res = fit_ranker(data, _tcfg(80), MODEL, mesh, seed=0, progress=False)
        out[flip] = _reward(res.model, mesh, held, quality)
    (got, best, rand), (flipped, _, _) = out[False], out[True]
    assert got > rand + 0.4 * (best - rand), out
    assert flipped < rand, out


def test_interrupted_training_resumes_to_the_same_result(trained, tmp_path):
    res, data, mesh, _ = trained
    first = fit_ranker(data, _tcfg(80), MODEL, mesh, tmp_path, seed=0, progress=False, stop_after=40)
    assert first.step == 40 and first.resumed_from is None
    second = fit_ranker(data, _tcfg(80), MODEL, mesh, tmp_path, seed=0, progress=False)
    assert second.resumed_from == 40 and second.step == 80 and len(second.history) == 40
    np.testing.assert_allclose([h["loss"] for h in second.history],
                               [h["loss"] for h in res.history[40:]], rtol=1e-4, atol=1e-5)
    for x, y in zip(jax.tree.leaves(nnx.state(second.model)), jax.tree.leaves(nnx.state(res.model)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_checkpoint_roundtrip_and_errors(sharded, tmp_path):
    model, _, scorer = sharded
    save_ranker(tmp_path / "r", model, CFG, step=3)
    restored, info = load_ranker(tmp_path / "r", make_mesh(1, -1, 1))
    assert info["config"] == CFG.to_dict()
    a, pa = scorer(_inputs())
    b, pb = RankerScorer(restored, make_mesh(1, -1, 1))(_inputs())
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(pa, pb, atol=1e-7)
    with pytest.raises(FileNotFoundError, match="not a ranker folder"):
        load_ranker(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ranker.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_ranker(tmp_path / "bad")


def test_bad_config_and_data_are_rejected():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        RankerConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown ranker config fields"):
        RankerConfig.from_dict({"d_modle": 3})
    data, _ = _listwise(2, seed=0, feedback=False)
    t = _tcfg(1)
    t.loss = "pairwise"
    with pytest.raises(ValueError, match=r"config\.train\.loss"):
        fit_ranker(data, t, MODEL, make_mesh(1, 1, 1, devices=jax.devices()[:1]), progress=False)
    bad = data.orders.copy()
    bad[0, 0, 0] = 99
    with pytest.raises(ValueError, match="outside"):
        ListwiseData(**{**data.__dict__, "orders": bad})
    assert SOURCE_LLM == 0
