"""Learner pieces: GRPO advantages and loss, example packing vs the sampler, checkpoints (resharding,
corrupt steps), metrics rewind, rollouts over a real server."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from env_server.server import ServerConfig, ServerThread
from env_server.tasks.registry import make_task
from env_server.types import TaskRef
from jaxrl_desktop.batches import pack_examples, per_token
from jaxrl_desktop.checkpoint import Checkpointer, CheckpointError
from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.metrics import MetricsLogger, plot_training, read_metrics
from jaxrl_desktop.model_configs import get_config
from jaxrl_desktop.models.decoder import Decoder
from jaxrl_desktop.rl_losses import group_advantages, make_grpo_loss, make_logprob_fn, make_sft_loss
from jaxrl_desktop.rollout import ExpertPolicy, RandomPolicy, run_episodes, success_rate
from jaxrl_desktop.sampling import SamplingConfig, sample
from jaxrl_desktop.sharding import abstract_train_state, create_train_state, param_shardings


def test_group_advantages_normalise_over_steps_of_a_group():
    # group 0: a 2-step success and a 1-step failure; group 1: all equal -> no signal
    adv = group_advantages([1, 1, 0, 1, 1], [0, 0, 0, 1, 1])
    r = np.array([1, 1, 0.0])
    np.testing.assert_allclose(adv[:3], (r - r.mean()) / r.std(), rtol=1e-5)
    assert np.all(adv[3:] == 0)
    assert abs(adv[:3].sum()) < 1e-5


def _tiny(vocab=64):
    cfg = get_config("tiny", vocab_size=vocab)
    return cfg, Decoder(cfg, rngs=nnx.Rngs(0))


def _batch(rng, n=4, p=10, a=5, vocab=64):
    prompts = [list(rng.integers(3, vocab, rng.integers(2, p + 1))) for _ in range(n)]
    actions = [list(rng.integers(3, vocab, rng.integers(1, a + 1))) for _ in range(n)]
    return prompts, actions, pack_examples(prompts, actions, p, a, pad_id=0, rows=n + 2)


def test_packing_matches_sampler_logprobs():
    """The training layout reproduces, token for token, the log-probs the KV-cache sampler reported."""
    _, model = _tiny()
    rng = np.random.default_rng(0)
    p_len, a_len = 12, 6
    prompts = [list(rng.integers(3, 64, k)) for k in (3, 12, 7)]
    toks = np.zeros((3, p_len), np.int32)
    mask = np.zeros((3, p_len), bool)
    for i, p in enumerate(prompts):
        toks[i, p_len - len(p):], mask[i, p_len - len(p):] = p, True
    out = sample(model, jnp.asarray(toks), jnp.asarray(mask), jax.random.key(1),
                 SamplingConfig(max_new_tokens=a_len, eos_id=2, pad_id=0))
    gen = np.asarray(out.tokens)
    gmask = np.asarray(out.mask)
    actions = [[int(t) for t, m in zip(gen[i], gmask[i], strict=True) if m] for i in range(3)]
    b = pack_examples(prompts, actions, p_len, a_len, pad_id=0)
    old = per_token([np.asarray(out.model_logprobs)[i, : len(a)] for i, a in enumerate(actions)], p_len, a_len, 3)
    loss_fn = make_grpo_loss(nnx.split(model)[0], 0.2, 0.28)
    batch = {k: jnp.asarray(v) for k, v in b.items()}
    batch.update(old_logprobs=jnp.asarray(old), advantages=jnp.ones(3))
    loss, m = loss_fn(nnx.split(model)[1], batch)
    assert abs(float(m["ratio"]) - 1.0) < 1e-4  # new == old log-probs on every action token
    assert float(m["clip_frac"]) == 0.0
    assert abs(float(loss) + 1.0) < 1e-4  # -mean(ratio * A) with A = 1


def _policy_batch(seed: int):
    """A tiny policy, a packed batch and the policy's own token log-probs on it."""
    _, model = _tiny()
    gd, params = nnx.split(model)
    _, _, b = _batch(np.random.default_rng(seed))
    batch = {k: jnp.asarray(v) for k, v in b.items()}
    return gd, params, batch, make_logprob_fn(gd)(params, batch), b["tokens"].shape[0]


def test_grpo_clipping_is_asymmetric():
    gd, params, batch, cur, rows = _policy_batch(seed=1)
    for shift, adv, eps_low, eps_high, clipped in ((-0.22, 1.0, 0.2, 0.28, False), (-0.22, 1.0, 0.2, 0.2, True), (-0.3, 1.0, 0.2, 0.28, True),
                                                    (0.25, -1.0, 0.2, 0.28, True), (0.15, -1.0, 0.2, 0.28, False)):
        # ratio = exp(-shift)
        batch2 = dict(batch, old_logprobs=cur + shift, advantages=jnp.full((rows,), adv))
        _, m = make_grpo_loss(gd, eps_low, eps_high)(params, batch2)
        assert (float(m["clip_frac"]) > 0.99) == clipped, (shift, adv, float(m["clip_frac"]))


def test_grpo_kl_metrics_match_their_closed_form():
    """A uniform log-prob shift of the sampling (and reference) policy gives known k3 values; the KL
    term adds ``kl_coef * kl`` to the loss, and both are 0 for the policy itself."""
    gd, params, batch, cur, rows = _policy_batch(seed=3)
    zero_adv = jnp.zeros((rows,))
    for shift in (0.0, 0.1, -0.3):
        r = np.exp(-shift)
        b2 = dict(batch, old_logprobs=cur + shift, ref_logprobs=cur + shift, advantages=zero_adv)
        loss0, m0 = make_grpo_loss(gd, 0.2, 0.28)(params, b2)
        loss1, m1 = make_grpo_loss(gd, 0.2, 0.28, kl_coef=0.5)(params, b2)
        assert float(m0["kl_behaviour"]) == pytest.approx(r - 1 - np.log(r), abs=1e-5)
        assert float(m1["kl"]) == pytest.approx(np.exp(shift) - shift - 1, abs=1e-5)
        assert float(loss1) - float(loss0) == pytest.approx(0.5 * float(m1["kl"]), abs=1e-5)
        assert "kl" not in m0


def test_step_rewards_zero_malformed_steps_of_a_success():
    from jaxrl_desktop.rollout import Episode, Step, step_rewards

    ep = Episode(task=TaskRef("files.create_folder", 1), instruction="", reward=1.0)
    ep.steps = [Step(None, None, "", 1, parsed=True), Step(None, None, "bad", 2, parsed=False),
                Step(None, None, "", 3, parsed=True)]
    assert step_rewards(ep) == [1.0, 0.0, 1.0]
    ep.reward = 0.0
    assert step_rewards(ep) == [0.0, 0.0, 0.0]


def test_sft_loss_only_counts_action_tokens():
    _, model = _tiny()
    gd, params = nnx.split(model)
    _, actions, b = _batch(np.random.default_rng(2))
    batch = {k: jnp.asarray(v) for k, v in b.items()}
    loss, m = make_sft_loss(gd)(params, batch)
    assert int(m["tokens"]) == sum(len(a) for a in actions)
    # changing prompt padding rows / pad tokens does not change the loss
    b2 = dict(batch, tokens=jnp.where(batch["attention_mask"], batch["tokens"], 5))
    loss2, _ = make_sft_loss(gd)(params, b2)
    np.testing.assert_allclose(float(loss), float(loss2), rtol=1e-6)
    assert np.isfinite(float(loss))


def test_checkpoint_restores_onto_another_mesh_and_skips_corrupt_steps(tmp_path, caplog):
    cfg = get_config("tiny", vocab_size=64)
    opt = optax.adamw(1e-3)
    mesh_a = make_mesh(data=2, fsdp=2, tensor=2)
    _, state, _ = create_train_state(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), opt, mesh_a)
    ck = Checkpointer(tmp_path / "ck", keep=3, async_save=True)
    ck.save(1, {"train": state}, {"progress": {"step": 1}})
    state2 = state.replace(step=state.step + 1)
    ck.save(2, {"train": state2}, {"progress": {"step": 2, "phase": "rl"}})
    ck.save(2, {"train": state2}, {"progress": {"step": 2}})  # a phase change that trained nothing
    ck.wait()
    assert ck.steps() == [1, 2]
    mesh_b = make_mesh(data=1, fsdp=4, tensor=1)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params)
    from jaxrl_desktop.sharding import train_state_shardings

    sh_b = train_state_shardings(abstract_params, opt, mesh_b)
    target = {"train": abstract_train_state(abstract_params, opt, sh_b)}
    step, tree, meta = ck.restore_latest(target)
    assert step == 2 and meta["progress"]["step"] == 2 and int(tree["train"].step) == int(state2.step)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(tree["train"].params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want = param_shardings(abstract_params, mesh_b)
    for got, spec in zip(jax.tree.leaves(tree["train"].params), jax.tree.leaves(want), strict=True):
        assert got.sharding.is_equivalent_to(spec, got.ndim)
    # corrupt the newest step: every array file is truncated -> fall back to step 1 with a warning
    for f in (tmp_path / "ck" / "2").rglob("*"):
        if f.is_file() and "meta" not in str(f):
            f.write_bytes(b"\0garbage")
    with caplog.at_level(logging.WARNING):
        step, tree, meta = ck.restore_latest(target)
    assert step == 1 and meta["progress"]["step"] == 1
    assert "unreadable" in caplog.text
    # a different structure is a clear error, not a deep orbax traceback
    with pytest.raises(CheckpointError, match="different state structure"):
        ck.restore(1, {"train": target["train"], "extra": jax.ShapeDtypeStruct((2,), jnp.uint32)})
    ck.close()


def test_restore_falls_back_across_state_structures(tmp_path, caplog):
    """A BC step saved without a reference policy, then an RL step with one whose directory is partial
    (its array files gone): the newest good step is the BC one, restored into its own structure; a
    step matching no structure is a clear error, not a silent step back."""
    cfg = get_config("tiny", vocab_size=64)
    opt = optax.adamw(1e-3)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    _, state, sh = create_train_state(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), opt, mesh)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params)
    plain = {"train": abstract_train_state(abstract_params, opt, sh)}
    with_ref = {**plain, "ref": plain["train"].params}
    ck = Checkpointer(tmp_path / "ck", keep=3, async_save=False)
    ck.save(1, {"train": state}, {"progress": {"phase": "bc"}})
    ck.save(2, {"train": state, "ref": state.params}, {"progress": {"phase": "rl"}})
    assert ck.restore_latest(plain, with_ref)[0] == 2  # the second structure fits the RL step
    for f in (tmp_path / "ck" / "2").rglob("*"):
        if f.is_file() and "meta" not in str(f):
            f.unlink()
    with caplog.at_level(logging.WARNING):
        step, tree, meta = ck.restore_latest(plain, with_ref)
    assert step == 1 and meta["progress"]["phase"] == "bc" and "ref" not in tree
    assert "step 2" in caplog.text and "unreadable" in caplog.text
    with pytest.raises(CheckpointError, match="different state structure"):
        ck.restore_latest({**plain, "extra": jax.ShapeDtypeStruct((2,), jnp.uint32)})
    ck.close()


def test_metrics_rewind_keeps_discarded_records(tmp_path):
    m = MetricsLogger(tmp_path, tensorboard=True)
    for s in range(1, 6):
        m.log(s, {"kind": "train", "phase": "bc" if s < 3 else "rl1", "loss": 1.0 / s, "entropy": 0.5,
                  "rollout_success": s / 10})
    m.log(4, {"kind": "eval", "phase": "rl1", "heldout_success": 0.3, "train_success": 0.4})
    with open(m.path, "a") as f:
        f.write('{"step": 6, "trunc')  # a line cut by a kill
    assert m.rewind(3) == 4
    assert [r["step"] for r in read_metrics(m.path)] == [1, 2, 3]
    assert len((tmp_path / "metrics.discarded.jsonl").read_text().splitlines()) == 4
    png = plot_training(read_metrics(tmp_path / "metrics.discarded.jsonl") + read_metrics(m.path),
                        tmp_path / "p.png")
    assert png.stat().st_size > 1000
    m.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))
    json.loads(m.path.read_text().splitlines()[0])


@pytest.fixture(scope="module")
def server():
    with ServerThread(ServerConfig(workers=2)).start() as srv:
        yield srv


def test_rollouts_over_grpc_expert_and_random(server):
    from env_server.client import BatchedClient

    with BatchedClient(server.address) as client:
        ids = client.create(16)
        tasks = [TaskRef("", s, "train") for s in range(16)]
        eps = run_episodes(client, ids, tasks, ExpertPolicy("api"), max_steps=32)
        assert success_rate(eps) == 1.0
        for e in eps:
            assert [s.step_index for s in e.steps] == list(range(1, len(e.steps) + 1))
            assert e.instruction == make_task(e.task).instruction
        rnd = run_episodes(client, ids, tasks, RandomPolicy(0), max_steps=6)
        assert success_rate(rnd) < 0.5
        assert all(len(e.steps) <= 6 for e in rnd)


def test_family_selection_for_the_main_job():
    from env_server.tasks.registry import HELDOUT_FAMILIES
    from jaxrl_desktop.trainer import make_tasks, select_families

    files_train = select_families("files", "train")
    assert files_train and all(f.startswith("files.") for f in files_train)
    assert not set(files_train) & HELDOUT_FAMILIES
    held = select_families("files,settings.set_volume", "heldout")
    assert "settings.set_volume" in held and set(held) & HELDOUT_FAMILIES
    with pytest.raises(ValueError, match="unknown family or app"):
        select_families("filez", "train")
    tasks = make_tasks("settings", "heldout", [1, 2, 3])
    assert all(t.family.startswith("settings.") and t.split == "heldout" for t in tasks)
    assert make_tasks("", "train", [5]) == [TaskRef("", 5, "train")]
