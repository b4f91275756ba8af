"""Train the list-aware ranker on LLM labels and list-wide user feedback.

    python -m ranking.train --config=configs/ranker.py [--config.train.steps=500 ...]

Data (``config.data``): listwise ``.npz`` files (``lists``, comma-separated; e.g. written by
:func:`ranking.llm_labels.label_candidates`), a feedback JSONL log (``feedback``; featurised with
the cascade over the index folder ``index``), or, when neither is given, the synthetic order-matters
task of :mod:`ranking.experiment_order` (trains the tiny decoder and labels lists with it).

Objective per candidate list (``ranking.losses`` wraps rax; masks are bool):
  * imitation: ListMLE (or softmax) towards each shown ordering's position labels
    (:func:`ranking.ranker.position_labels`), weighted by ``softmax(reward / temperature)`` over the
    query's LLM-labelled orderings (reward = log p(gold)), plus copied lists (feedback) with weight 1;
  * feedback: ``list_feedback_loss`` on the shown items' scores for every list with feedback;
  * list head: BCE of the list logit against p(gold) under the best labelled ordering / copy rate.

Writes into ``config.workdir``: ``train/`` (orbax, whole train state: resumes), ``params/`` +
``ranker.json`` (the ranker for :class:`ranking.cascade.PistisCascade`), ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.sharding import (
    TrainState,
    abstract_train_state,
    batch_sharding,
    init_train_state,
    make_train_step,
    shard_batch,
    train_state_shardings,
)
from ranking import losses
from ranking.listwise import SOURCE_FEEDBACK, SOURCE_LLM, ListwiseData, concat
from ranking.ranker import Ranker, RankerConfig, position_labels, save_ranker

log = logging.getLogger(__name__)
BATCH_KEYS = ("query_emb", "item_emb", "dense", "prerank", "where", "orders", "rewards", "list_mask",
              "source")


def default_train_config() -> ml_collections.ConfigDict:
    """The ``train`` block of ``configs/ranker.py`` (also used by the experiment and the bench)."""
    return ml_collections.ConfigDict(dict(
        steps=300, batch_lists=32, learning_rate=3e-3, warmup=20, weight_decay=1e-4, grad_clip=1.0,
        loss="listmle", temperature=1.0, llm_weight=1.0, feedback_weight=1.0, list_weight=0.1,
        log_every=10, checkpoint_every=100, keep=2,
    ))


def default_model_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(d_model=64, num_layers=2, num_heads=4, mlp_dim=128,
                                          init_std=0.02))


# ------------------------------------------------------------------------------ loss
def ranker_loss(
    model: Ranker, batch: dict[str, jax.Array], tcfg: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training objective on a batch of candidate lists (see the module docstring)."""
    where = batch["where"].astype(bool)
    scores, list_logit = model(batch["query_emb"], batch["item_emb"], batch["dense"], batch["prerank"], where)
    orders, rewards = batch["orders"], batch["rewards"].astype(jnp.float32)
    lmask, source = batch["list_mask"].astype(bool), batch["source"]
    b, m, k = orders.shape
    n_items = scores.shape[1]
    llm = lmask & (source == SOURCE_LLM)
    fb = lmask & (source == SOURCE_FEEDBACK)
    has_llm, has_fb = llm.any(-1), fb.any(-1)

    # imitation of good orderings
    w_llm = jax.nn.softmax(jnp.where(llm, rewards / tcfg.temperature, -jnp.inf), axis=-1)
    w_llm = jnp.where(llm & has_llm[:, None], w_llm, 0.0)
    copied = fb & (rewards > 0)
    w_fb = copied / jnp.maximum(copied.sum(-1, keepdims=True), 1)
    w = tcfg.llm_weight * w_llm + tcfg.feedback_weight * w_fb  # [B, M]
    labels = position_labels(orders, n_items)  # [B, M, L]
    s = jnp.broadcast_to(scores[:, None, :], labels.shape)
    wh = jnp.broadcast_to(where[:, None, :], labels.shape)
    if tcfg.loss == "listmle":
        key = jax.random.key(batch["seed"])
        per = losses.listmle_loss(s, labels, wh, key=key, reduce_fn=None)
    elif tcfg.loss == "softmax":
        gains = jnp.where(labels > 0, 2.0 ** labels - 1.0, 0.0)
        per = losses.softmax_loss(s, gains, wh, normalize_labels=True, reduce_fn=None)
    else:  # validated in fit_ranker
        raise ValueError(tcfg.loss)
    active = (has_llm | copied.any(-1)).astype(jnp.float32)
    imitation = jnp.sum(jnp.where(w > 0, w * per, 0.0)) / jnp.maximum(active.sum(), 1.0)

    # list-wide feedback on the shown items (position 0 = nearest to the question)
    shown = jnp.take_along_axis(scores[:, None, :], jnp.maximum(orders, 0).reshape(b, 1, m * k), axis=-1)
    shown = shown.reshape(b, m, k)
    shown_mask = (orders >= 0) & fb[..., None]
    n_shown = shown_mask.sum(-1, keepdims=True)
    positions = jnp.maximum(n_shown - 1 - jnp.arange(k), 0)
    feedback = jnp.where(fb, rewards, 0.0)
    fb_loss = losses.list_feedback_loss(shown, feedback, shown_mask, positions=positions)

    # list head: probability that this candidate list leads to a good answer
    best = jnp.max(jnp.where(llm, rewards, -jnp.inf), axis=-1)
    p_llm = jnp.clip(jnp.exp(jnp.minimum(best, 0.0)), 0.0, 1.0)
    p_fb = jnp.sum(copied, -1) / jnp.maximum(fb.sum(-1), 1)
    target = jnp.where(has_llm, p_llm, p_fb)
    listed = has_llm | has_fb
    bce = optax.sigmoid_binary_cross_entropy(list_logit, jax.lax.stop_gradient(target))
    list_loss = jnp.sum(jnp.where(listed, bce, 0.0)) / jnp.maximum(listed.sum(), 1)

    total = imitation + tcfg.feedback_weight * fb_loss + tcfg.list_weight * list_loss
    return total, {"imitation": imitation, "feedback": fb_loss, "list": list_loss}


# --------------------------------------------------------------------------- training
@dataclasses.dataclass
class FitResult:
    model: Ranker
    config: RankerConfig
    history: list[dict[str, float]]
    step: int
    seconds: float
    resumed_from: int | None = None


def make_optimizer(tcfg: Any) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(0.0, tcfg.learning_rate, max(1, tcfg.warmup),
                                               max(tcfg.steps, tcfg.warmup + 1), end_value=0.1 * tcfg.learning_rate)
    return optax.chain(optax.clip_by_global_norm(tcfg.grad_clip),
                       optax.adamw(sched, weight_decay=tcfg.weight_decay))


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
    nd = {"query_emb": 2, "item_emb": 3, "dense": 2, "prerank": 2, "where": 2, "orders": 3,
          "rewards": 2, "list_mask": 2, "source": 2}
    out = {k: batch_sharding(mesh, n) for k, n in nd.items()}
    out["seed"] = NamedSharding(mesh, PartitionSpec())
    return out


@functools.lru_cache(maxsize=8)
def _programs(rcfg: RankerConfig, tcfg_json: str, mesh: Mesh, seed: int):
    """Jitted init and train step for one (model, train config, mesh, seed), compiled once per process."""
    tcfg = ml_collections.FrozenConfigDict(json.loads(tcfg_json))
    optimizer = make_optimizer(tcfg)
    factory = lambda: Ranker(rcfg, rngs=nnx.Rngs(seed))  # noqa: E731
    graphdef, abstract = nnx.split(nnx.eval_shape(factory))
    shardings = train_state_shardings(abstract, optimizer, mesh)
    init = jax.jit(lambda: init_train_state(nnx.split(factory())[1], optimizer), out_shardings=shardings)

    def loss_fn(params, batch):
        return ranker_loss(nnx.merge(graphdef, params), batch, tcfg)

    step = make_train_step(loss_fn, optimizer, mesh, shardings, batch_shardings(mesh))
    return graphdef, init, shardings, step, optimizer


def validate_train_config(tcfg: Any) -> None:
    """Raise ``ValueError`` naming the first bad ``config.train`` field."""
    if tcfg.loss not in ("listmle", "softmax"):
        raise ValueError(f"config.train.loss must be 'listmle' or 'softmax', got {tcfg.loss!r}")
    if tcfg.temperature <= 0:
        raise ValueError(f"config.train.temperature must be > 0, got {tcfg.temperature}")
    for name in ("steps", "batch_lists", "log_every", "checkpoint_every", "keep"):
        if int(tcfg[name]) < 1:
            raise ValueError(f"config.train.{name} must be >= 1, got {tcfg[name]}")
    if tcfg.learning_rate <= 0:
        raise ValueError(f"config.train.learning_rate must be > 0, got {tcfg.learning_rate}")


class RankerTrainer:
    """Sharded train step + batching for the ranker (used by :func:`fit_ranker` and the bench)."""

    def __init__(self, rcfg: RankerConfig, tcfg: Any, mesh: Mesh, seed: int = 0):
        validate_train_config(tcfg)
        self.rcfg, self.tcfg, self.mesh, self.seed = rcfg, tcfg, mesh, seed
        key = json.dumps(dict(tcfg), sort_keys=True)
        self.graphdef, init, self.shardings, self.step_fn, self.optimizer = _programs(rcfg, key, mesh, seed)
        with jax.set_mesh(mesh):
            self.state = init()
        self.shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
        self.batch_lists = max(self.shards, -(-tcfg.batch_lists // self.shards) * self.shards)

    def sample_batch(self, data: ListwiseData, step: int) -> dict[str, np.ndarray]:
        """A deterministic (seed, step) batch of lists, so a resumed run sees the same batches."""
        rng = np.random.default_rng([self.seed, step])
        rows = rng.choice(len(data), self.batch_lists, replace=len(data) < self.batch_lists)
        batch = data.batch(rows)
        batch["seed"] = np.asarray(rng.integers(2**31 - 1), np.int32)
        return batch

    def place(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        seed = batch.pop("seed")
        placed = shard_batch(batch, self.mesh)
        placed["seed"] = jax.device_put(seed, NamedSharding(self.mesh, PartitionSpec()))
        return placed

    def step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        self.state, metrics = self.step_fn(self.state, self.place(dict(batch)))
        return {k: float(v) for k, v in metrics.items()}

    def model(self) -> Ranker:
        return nnx.merge(self.graphdef, self.state.params)

    def abstract_state(self) -> TrainState:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.state.params)
        return abstract_train_state(abstract, self.optimizer, self.shardings)


def fit_ranker(
    data: ListwiseData,
    tcfg: Any | None = None,
    model_cfg: Any | None = None,
    mesh: Mesh | None = None,
    workdir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    preranker_path: str | Path | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train a ranker on ``data``; with ``workdir`` checkpoint, resume, log metrics and save the ranker.

    ``stop_after``: run at most this many steps now (checkpointing at the stop), e.g. to split a run
    over several time-limited jobs; the next call with the same ``workdir`` resumes.
    """
    tcfg = tcfg if tcfg is not None else default_train_config()
    model_cfg = model_cfg if model_cfg is not None else default_model_config()
    if len(data) == 0:
        raise ValueError("no training lists")
    if not data.list_mask.any():
        raise ValueError("the training data holds no labelled lists")
    mesh = mesh if mesh is not None else make_mesh(data=1, fsdp=-1, tensor=1)
    mc = dict(model_cfg)
    rcfg = RankerConfig(embed_dim=int(data.query_emb.shape[-1]), **mc)
    trainer = RankerTrainer(rcfg, tcfg, mesh, seed)
    start, ckpt, metrics_log, resumed = 0, None, None, None
    if workdir is not None:
        from jaxrl_desktop.checkpoint import Checkpointer
        from jaxrl_desktop.metrics import MetricsLogger

        workdir = Path(workdir)
        ckpt = Checkpointer(workdir / "train", keep=tcfg.keep, async_save=False)
        got = ckpt.restore_latest(trainer.abstract_state())
        if got is not None:
            start, trainer.state, _ = got
            resumed = start
            log.info("resumed ranker training from step %d in %s", start, workdir)
        metrics_log = MetricsLogger(workdir, tensorboard=False)
        metrics_log.rewind(start)
    history: list[dict[str, float]] = []
    bar = None
    if progress and start < tcfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=tcfg.steps, initial=start, desc="train ranker", unit="step")
    t0 = time.perf_counter()
    end = tcfg.steps if stop_after is None else min(tcfg.steps, start + stop_after)
    try:
        for step in range(start, end):
            rec = trainer.step(trainer.sample_batch(data, step))
            history.append(rec)
            done = step + 1
            if metrics_log is not None and (done % tcfg.log_every == 0 or done == end):
                metrics_log.log(done, {**rec, "lists": len(data)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if ckpt is not None and (done % tcfg.checkpoint_every == 0 or done == end):
                ckpt.save(done, trainer.state, {"lists": len(data)})
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
        if metrics_log is not None:
            metrics_log.close()
    model = trainer.model()
    final = max(start, end)
    if workdir is not None:
        save_ranker(workdir, model, rcfg, final, meta={"train": tcfg.to_dict() if hasattr(tcfg, "to_dict") else dict(tcfg)})
        if preranker_path is not None and Path(preranker_path).resolve() != (workdir / "preranker.npz").resolve():
            shutil.copyfile(preranker_path, workdir / "preranker.npz")
    return FitResult(model, rcfg, history, final, time.perf_counter() - t0, resumed)


# -------------------------------------------------------------------------------- CLI
def load_training_data(config: ml_collections.ConfigDict, mesh: Mesh, workdir: Path) -> tuple[ListwiseData, str | None]:
    """Listwise data named by ``config.data`` (+ the pre-ranker to ship with the ranker)."""
    parts: list[ListwiseData] = []
    preranker = config.data.preranker or None
    for path in [p.strip() for p in config.data.lists.split(",") if p.strip()]:
        if not Path(path).exists():
            raise FileNotFoundError(f"config.data.lists: no file {path}")
        parts.append(ListwiseData.load(path))
    if config.data.feedback:
        parts.append(_feedback_data(config, mesh, preranker))
    if not parts:
        if not config.data.synthetic:
            raise ValueError("no training data: set config.data.lists and/or config.data.feedback, "
                             "or config.data.synthetic=True")
        parts.append(_synthetic_data(config, mesh, workdir))
        preranker = str(workdir / "preranker.npz")
    return concat(parts), preranker


def _synthetic_data(config: ml_collections.ConfigDict, mesh: Mesh, workdir: Path) -> ListwiseData:
    """LLM-labelled lists of the synthetic task, cached in ``workdir`` (rebuilt if its config changed)."""
    from ranking import experiment_order

    cache, meta = workdir / "synthetic_lists.npz", workdir / "synthetic_config.json"
    want = config.synthetic.to_dict()
    ready = cache.exists() and meta.exists() and (workdir / "preranker.npz").exists()
    if ready and json.loads(meta.read_text()) == want:
        log.info("using cached synthetic lists %s", cache)
        return ListwiseData.load(cache)
    prepared = experiment_order.prepare(config.synthetic, mesh=mesh, workdir=workdir, progress=True)
    prepared.train_data.save(cache)
    meta.write_text(json.dumps(want, indent=2))
    return prepared.train_data


def _feedback_data(config: ml_collections.ConfigDict, mesh: Mesh, preranker: str | None) -> ListwiseData:
    from ranking.candidates import load_preranker
    from ranking.cascade import PistisCascade
    from ranking.feedback import FeedbackStore, feedback_lists

    if not config.data.index:
        raise ValueError("config.data.feedback needs config.data.index (the index folder the shown ids come from)")
    mode = config.data.get("feedback_errors", "skip")
    if mode not in ("skip", "raise"):
        raise ValueError(f"config.data.feedback_errors must be 'skip' or 'raise', got {mode!r}")
    store = FeedbackStore(Path(config.workdir) / "feedback_store.json")
    report = store.ingest(config.data.feedback, errors=mode)
    for err in report.errors:
        log.warning("feedback: %s (skipped)", err)
    if report.errors:
        print(f"feedback: skipped {len(report.errors)} malformed line(s), first: {report.errors[0]}",
              file=sys.stderr)
    log.info("feedback: %d new events (%d duplicates), %d stored", report.added, report.duplicates, len(store))
    cascade = PistisCascade.from_index(
        config.data.index, mesh=mesh, n_match=config.data.n_match, n_prerank=config.data.n_prerank,
        preranker=load_preranker(preranker) if preranker else None,
    )
    id_to_index = {d: i for i, d in enumerate(cascade.index.ids)}
    def featurise(queries, include):
        return cascade.candidates(queries, include, progress=len(queries) > 50)

    data, notes = feedback_lists(store.events, id_to_index, featurise)
    for note in notes:
        log.warning("%s", note)
    if data is None:
        raise ValueError(f"{config.data.feedback}: no usable feedback events")
    return data


def main(argv: list[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    del argv
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from ranking.cli import user_errors

    config = flags.FLAGS.config
    workdir = Path(config.workdir)
    with user_errors():
        validate_train_config(config.train)
        RankerConfig(embed_dim=384, **dict(config.model))  # shape checks before any data work
        if workdir.exists() and not workdir.is_dir():
            raise ValueError(f"config.workdir {workdir} exists and is not a folder")
        mesh = make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    with user_errors():
        data, preranker = load_training_data(config, mesh, workdir)
    print(f"training the ranker on {len(data)} candidate lists "
          f"({int(data.list_mask.sum())} labelled orderings) on a {dict(mesh.shape)} mesh")
    res = fit_ranker(data, config.train, config.model, mesh, workdir, config.seed, progress=True,
                     preranker_path=preranker)
    first = np.mean([h["loss"] for h in res.history[:10]]) if res.history else float("nan")
    last = np.mean([h["loss"] for h in res.history[-10:]]) if res.history else float("nan")
    note = f" (resumed from step {res.resumed_from})" if res.resumed_from else ""
    print(f"ranker saved to {workdir} at step {res.step}{note}; loss {first:.4f} -> {last:.4f} "
          f"in {res.seconds:.1f}s")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with a one-line error (not a traceback) for a misspelt config override."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nPass --helpfull to see all flags.", file=sys.stderr)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        msg: object = e
        while isinstance(msg, BaseException) and msg.args:
            msg = msg.args[0]
        text = str(msg).replace("\n", "; ")
        print(f"error: bad config override: unknown or invalid field {text}", file=sys.stderr)
    sys.exit(2)


def _run() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Ranker config file, e.g. configs/ranker.py.",
                                    lock_config=True)
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    _run()
