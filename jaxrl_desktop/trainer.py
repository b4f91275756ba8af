"""The training job: behaviour cloning -> step-level GRPO -> Entropulse -> GRPO, with checkpoints.

Phases and their order::

    bc -> rl1 -> entropulse1 -> rl2 [-> entropulse2 -> rl3 ...]   (``rl.phases`` RL phases)

An RL phase ends when the policy's action-token entropy falls below
``entropulse.entropy_threshold`` (after ``entropulse.min_rl_iters`` iterations) or after
``rl.iters`` iterations; the Entropulse phase in between is SFT on the policy's own successful
rollouts. Every phase change is logged with its reason.

Determinism: every random choice (task seeds, sampling keys, batch order) is a function of
``cfg.seed`` and the phase / step counters, and the env server is deterministic given a task seed,
so a run resumed from a checkpoint logs the same next metrics as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict
from tqdm import tqdm

from env_server.sim import SIM_SCHEMA
from env_server.types import TaskRef
from jaxrl_desktop.batches import pack_examples, per_token
from jaxrl_desktop.checkpoint import Checkpointer
from jaxrl_desktop.curriculum import family_weights, sample_families, update_stats
from jaxrl_desktop.flops import flops_per_token, measure_mesh_matmul_peak
from jaxrl_desktop.grammar_mask import build_action_grammar
from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.metrics import MetricsLogger, plot_training, read_metrics
from jaxrl_desktop.model_configs import DecoderConfig, get_config
from jaxrl_desktop.models.decoder import Decoder
from jaxrl_desktop.policy import ModelPolicy, bucket
from jaxrl_desktop.prompt import PromptConfig, PromptEncoder
from jaxrl_desktop.rl_losses import group_advantages, make_grpo_loss, make_logprob_fn, make_sft_loss
from jaxrl_desktop.rollout import (
    Episode,
    ExpertPolicy,
    RandomPolicy,
    completed,
    invalid_rate,
    run_episodes,
    step_rewards,
    success_rate,
)
from jaxrl_desktop.sampling import SamplingConfig
from jaxrl_desktop.sharding import (
    TrainState,
    abstract_train_state,
    batch_sharding,
    create_train_state,
    make_train_step,
    shard_batch,
)
from jaxrl_desktop.tokenizer import Tokenizer

log = logging.getLogger("jaxrl_desktop.train")

EVAL_SEED_BASE = 1_000_000  # eval task seeds never collide with training seeds
Example = tuple[list[int], list[int]]


# ------------------------------------------------------------------------------ helpers
def model_config(cfg: ConfigDict, vocab_size: int) -> DecoderConfig:
    m = cfg.model
    if m.preset:
        return get_config(m.preset, vocab_size=vocab_size)
    return DecoderConfig(
        vocab_size=vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, intermediate_size=m.intermediate_size,
        max_seq_len=m.max_seq_len, tie_embeddings=m.tie_embeddings, name="policy",
    )


def make_optimizer(cfg: ConfigDict) -> optax.GradientTransformation:
    o = cfg.optim
    return optax.chain(
        optax.clip_by_global_norm(o.clip_norm),
        optax.inject_hyperparams(optax.adamw)(learning_rate=cfg.bc.lr, b2=o.b2, weight_decay=o.weight_decay),
    )


def set_learning_rate(state: TrainState, lr: float) -> TrainState:
    clip_state, inject = state.opt_state
    old = inject.hyperparams["learning_rate"]
    new = jax.device_put(jnp.asarray(lr, old.dtype), old.sharding)
    inject = inject._replace(hyperparams={**inject.hyperparams, "learning_rate": new})
    return state.replace(opt_state=(clip_state, inject))


def task_seeds(*key: int, n: int) -> list[int]:
    return [int(s) for s in np.random.default_rng(list(key)).integers(0, 2**31 - 1, n)]


def select_families(spec: str, split: str, backend: str = "sim") -> list[str]:
    """Families of ``split`` named by ``spec``: "" = all, else comma-separated family names or app
    names (``files`` selects every ``files.*`` family). ``backend="x11"`` selects among the
    real-desktop families (``x11.*``; ``x11.files`` or ``files`` select their file tasks)."""
    if backend == "x11":
        from env_server.x11.tasks import FAMILIES, families
    elif backend == "sim":
        from env_server.tasks.registry import FAMILIES, families
    else:
        raise ValueError(f"unknown backend {backend!r}; task families exist for 'sim' and 'x11'")

    names = families(split)
    if not spec.strip():
        return names

    def matches(name: str, want: str) -> bool:
        return name == want or name.startswith(want + ".") or name.removeprefix("x11.").startswith(want + ".")

    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(matches(n, w) for n in FAMILIES)]
    if unknown:
        raise ValueError(f"env.families: unknown family or app {unknown} for the {backend} backend; "
                         "see `python -m env_server.tasks`")
    return [n for n in names if any(matches(n, w) for w in wanted)]


def validate_config(cfg: ConfigDict) -> None:
    """Raise ValueError naming the first config value the job cannot run with (before any work)."""
    e = cfg.env
    try:
        kwargs = json.loads(e.backend_kwargs)
    except json.JSONDecodeError as err:
        raise ValueError(f"env.backend_kwargs is not JSON ({err}): {e.backend_kwargs!r}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"env.backend_kwargs must be a JSON object, got {e.backend_kwargs!r}")
    select_families(e.families, "train")
    select_families(e.families, "heldout")
    if cfg.rl.split not in ("train", "novel"):
        raise ValueError(f"rl.split must be 'train' or 'novel' (never the evaluation split), got {cfg.rl.split!r}")
    if not 0 < cfg.rl.family_floor <= 1:
        raise ValueError(f"rl.family_floor must be in (0, 1] (1 = uniform family sampling), got {cfg.rl.family_floor}")
    if not 0 <= cfg.rl.family_decay <= 1:
        raise ValueError(f"rl.family_decay must be in [0, 1] (the share of past counts kept), got {cfg.rl.family_decay}")
    if cfg.rl.group_size < 2:
        raise ValueError(f"rl.group_size must be at least 2 (GRPO compares rollouts), got {cfg.rl.group_size}")


def make_tasks(spec: str, split: str, seeds: Sequence[int]) -> list[TaskRef]:
    """One task per seed; the family is drawn from the selection by the seed (all families if ``spec``
    is empty, which leaves the choice to the server)."""
    if not spec.strip():
        return [TaskRef("", s, split) for s in seeds]
    fams = select_families(spec, split)
    return [TaskRef(fams[s % len(fams)], s, split) for s in seeds]


def episode_text(episodes: Sequence[Episode]) -> Iterator[str]:
    """Everything a policy reads and writes, for training the tokenizer."""
    for ep in episodes:
        yield ep.instruction
        for st in ep.steps:
            yield st.view.a11y
            yield st.view.feedback
            yield st.choice.text


def abstract_tree(params: nnx.State, optimizer: optax.GradientTransformation, shardings: TrainState,
                  with_ref: bool) -> dict:
    """The structure a training checkpoint holds (see :meth:`Trainer.save`), as sharded abstract arrays."""
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    tree = {"train": abstract_train_state(abstract_params, optimizer, shardings),
            "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    if with_ref:
        tree["ref"] = tree["train"].params
    return tree


def restore_training(ckpt: Checkpointer, params: nnx.State, optimizer: optax.GradientTransformation,
                     shardings: TrainState) -> tuple[int, dict, dict] | None:
    """The newest good training checkpoint (with or without a frozen reference policy)."""
    return ckpt.restore_latest(abstract_tree(params, optimizer, shardings, with_ref=False),
                               abstract_tree(params, optimizer, shardings, with_ref=True))


def by_family(episodes: Sequence[Episode]) -> dict[str, float]:
    """Success rate per family (episodes no env fault cut)."""
    fam: dict[str, list[bool]] = {}
    for e in completed(episodes):
        fam.setdefault(e.family, []).append(e.success)
    return {k: round(mean(v), 3) for k, v in sorted(fam.items())}


def mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


# ------------------------------------------------------------------------------ trainer
class Trainer:
    """Owns the mesh, the env connection, the model state and the phase machine. Use as a context
    manager (it may start an embedded env server and must stop it)."""

    def __init__(self, cfg: ConfigDict):
        self.cfg = cfg
        self.workdir = Path(cfg.workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mesh = make_mesh(**dict(cfg.mesh))
        self._stack = ExitStack()
        self.client = None
        self.env_ids: list[int] = []
        self.base_key = jax.random.key(cfg.seed)

    # ------------------------------------------------------------------ env connection
    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def connect(self) -> None:
        from env_server.client import BatchedClient
        from env_server.fleet import FleetClient

        e = self.cfg.env
        servers = [s.strip() for s in e.servers.split(",") if s.strip()]
        kw = dict(token=e.token or None, timeout=e.timeout_s)
        if not servers:
            from env_server.server import ServerConfig, ServerThread

            modules = tuple(m.strip() for m in e.backend_modules.split(",") if m.strip())
            server = ServerThread(ServerConfig(
                workers=e.workers, token=e.token or None, backend=e.backend,
                backend_kwargs=json.loads(e.backend_kwargs), backend_modules=modules)).start()
            self._stack.callback(server.stop)
            servers = [server.address]
            log.info("started an embedded env server at %s with %d workers", server.address, e.workers)
            self.client = BatchedClient(servers[0], **kw)
        else:  # remote servers may die or restart: the fleet client fails over and reconnects
            self.client = FleetClient(servers, **kw)
        self._stack.enter_context(self.client)
        n = max(self.cfg.rl.tasks_per_iter * self.cfg.rl.group_size, self.cfg.eval.episodes,
                self.cfg.eval.train_episodes, 64)
        self.env_ids = self.client.create(n)
        log.info("created %d envs on %s", n, ", ".join(servers))

    def episodes(self, tasks: Sequence[TaskRef], policy, max_steps: int | None = None) -> list[Episode]:
        """One episode per task. Env faults do not stop training: an episode cut by one comes back
        with ``aborted`` set (callers leave it out), and an env the server no longer has is
        replaced by a new one."""
        out: list[Episode] = []
        n = len(self.env_ids)
        for lo in range(0, len(tasks), n):
            eps = run_episodes(self.client, self.env_ids, tasks[lo:lo + n], policy,
                               max_steps or self.cfg.env.max_episode_steps)
            out += eps
            gone = [e.env_id for e in eps if e.abort_code == "NOT_FOUND"]
            if gone:
                fresh = iter(self.client.create(len(gone)))
                self.env_ids = [next(fresh) if i in gone else i for i in self.env_ids]
                log.warning("replaced %d envs the server no longer had", len(gone))
        aborted = [e for e in out if e.aborted]
        if aborted:
            log.warning("%d of %d episodes were cut by env faults and are left out; first: %s",
                        len(aborted), len(out), aborted[0].aborted)
        return out

    # ------------------------------------------------------------------ data + model
    def expert_episodes(self) -> list[Episode]:
        n = self.cfg.bc.episodes
        tasks = make_tasks(self.cfg.env.families, "train", task_seeds(self.cfg.seed, 0, n=n))
        eps = self.episodes(tasks, ExpertPolicy("api"), max_steps=64)
        solved = success_rate(eps)
        log.info("expert: %d episodes over the train split, %.1f%% solved", n, 100 * solved)
        return [e for e in eps if e.success]

    def load_or_train_tokenizer(self, episodes: Sequence[Episode] | None) -> Tokenizer:
        path = Path(self.cfg.tokenizer.path) if self.cfg.tokenizer.path else self.workdir / "tokenizer.json"
        if path.exists():
            return Tokenizer.load(path)
        if episodes is None:
            raise RuntimeError(f"no tokenizer at {path} and no episodes to train one on")
        tok = Tokenizer.train(episode_text(episodes), vocab_size=self.cfg.tokenizer.vocab_size)
        tok.save(path)
        log.info("trained a %d-token BPE on env text -> %s", tok.vocab_size, path)
        return tok

    def build(self, tokenizer: Tokenizer) -> None:
        cfg = self.cfg
        self.tok = tokenizer
        p = cfg.prompt
        self.pcfg = PromptConfig(p.max_prompt_tokens, p.max_action_tokens, p.max_rows, p.history)
        self.encoder = PromptEncoder(tokenizer, self.pcfg)
        vocab = bucket(tokenizer.vocab_size, 128)  # pad the embedding table to a friendly size
        self.model_cfg = model_config(cfg, vocab)
        self.optimizer = make_optimizer(cfg)
        factory = lambda: Decoder(self.model_cfg, rngs=nnx.Rngs(cfg.seed))  # noqa: E731
        self.graphdef, self.state, self.state_shardings = create_train_state(factory, self.optimizer, self.mesh)
        self.ref_params = None
        n_params = sum(x.size for x in jax.tree.leaves(self.state.params))
        log.info("policy: %s, %.2fM parameters, mesh %s", self.model_cfg.name, n_params / 1e6, dict(self.mesh.shape))

        seq = self.pcfg.max_prompt_tokens + self.pcfg.max_action_tokens
        self.seq_len = seq
        b2, b1 = batch_sharding(self.mesh, 2), batch_sharding(self.mesh, 1)
        sft_sh = {"tokens": b2, "attention_mask": b2, "loss_mask": b2}
        grpo_sh = {**sft_sh, "old_logprobs": b2, "advantages": b1}
        if cfg.rl.kl_coef > 0:
            grpo_sh["ref_logprobs"] = b2
        self.sft_step = make_train_step(make_sft_loss(self.graphdef), self.optimizer, self.mesh,
                                        self.state_shardings, sft_sh)
        self.grpo_step = make_train_step(
            make_grpo_loss(self.graphdef, cfg.rl.eps_low, cfg.rl.eps_high, cfg.rl.kl_coef),
            self.optimizer, self.mesh, self.state_shardings, grpo_sh)
        self.ref_logprobs = jax.jit(make_logprob_fn(self.graphdef))

        grammar = None
        if cfg.rl.grammar_mask or cfg.eval.grammar_mask:
            t0 = time.perf_counter()
            grammar = build_action_grammar(SIM_SCHEMA, tokenizer.token_bytes(), tokenizer.eos_id, vocab)
            log.info("action grammar: %d token-automaton states (%.1fs)", grammar.table.shape[0],
                     time.perf_counter() - t0)
        self.grammar = grammar
        base = dict(max_new_tokens=self.pcfg.max_action_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        self.sample_policy = ModelPolicy(
            self.graphdef, self.state.params, self.encoder, self.mesh,
            SamplingConfig(**base, temperature=cfg.rl.temperature, top_p=cfg.rl.top_p),
            grammar if cfg.rl.grammar_mask else None)
        self.greedy_policy = ModelPolicy(self.graphdef, self.state.params, self.encoder, self.mesh,
                                         SamplingConfig(**base, greedy=True),
                                         grammar if cfg.eval.grammar_mask else None)
        self.flops_per_token = flops_per_token(self.model_cfg, seq, training=True)
        self.peak = None
        if cfg.log.measure_peak:
            self.peak = measure_mesh_matmul_peak(self.mesh, n=512)
            log.info("measured matmul peak: %.1f GFLOP/s over the mesh", self.peak / 1e9)

    def copy_examples(self, n: int, max_prompt: int | None = None, stream: int = 21) -> list[Example]:
        """Synthetic copy drills: ``<|user|> noise " x1..xk " noise <|action|>`` -> ``x1..xk <|eos|>``
        over random ordinary tokens. They teach the small policy to copy a delimited span it has never
        seen (file names, subjects, held-out values) instead of recalling frequent training values."""
        max_prompt = max_prompt or self.pcfg.max_prompt_tokens
        rng = np.random.default_rng([self.cfg.seed, stream])
        quote = self.tok.encode('"')[-1]
        specials = self.tok.special_ids | {quote}
        ordinary = np.array([i for i in range(self.tok.vocab_size) if i not in specials])
        out = []
        for _ in range(n):
            k = int(rng.integers(1, min(self.pcfg.max_action_tokens - 1, 16)))
            span = [int(t) for t in rng.choice(ordinary, k)]
            room = max(0, max_prompt - k - 5)
            before = [int(t) for t in rng.choice(ordinary, int(rng.integers(0, min(12, room) + 1)))]
            after = [int(t) for t in rng.choice(ordinary, int(rng.integers(0, min(6, room - len(before)) + 1)))]
            prompt = [self.tok.bos_id, self.encoder.user, *before, quote, *span, quote, *after, self.encoder.act]
            out.append((prompt[-max_prompt:], [*span, self.tok.eos_id]))
        return out

    def encode_examples(self, episodes: Sequence[Episode]) -> list[Example]:
        out, skipped = [], 0
        for ep in episodes:
            for st in ep.steps:
                v = st.view
                action = self.encoder.action(st.choice.text)
                if action is None:
                    skipped += 1
                    continue
                out.append((self.encoder.prompt(v.instruction, v.history, v.feedback, v.a11y), action))
        if skipped:
            log.warning("%d expert actions longer than %d tokens were left out", skipped,
                        self.pcfg.max_action_tokens)
        return out

    # ------------------------------------------------------------------ state plumbing
    def _sync_policies(self) -> None:
        self.sample_policy.set_params(self.state.params)
        self.greedy_policy.set_params(self.state.params)

    def _tree(self) -> dict:
        tree = {"train": self.state, "rng": jax.random.key_data(self.base_key)}
        if self.ref_params is not None:
            tree["ref"] = self.ref_params
        return tree

    def save(self, progress: dict, store: list[Example]) -> None:
        meta = {"progress": progress, "store": [[p, a] for p, a in store]}
        self.ckpt.save(progress["step"], self._tree(), meta)

    def restore(self) -> tuple[dict, list[Example]] | None:
        found = restore_training(self.ckpt, self.state.params, self.optimizer, self.state_shardings)
        if found is None:
            return None
        step, tree, meta = found
        self.state = tree["train"]
        # via host memory: an uncommitted key works under any mesh (a restored array sits on one device)
        self.base_key = jax.random.wrap_key_data(np.asarray(tree["rng"]))
        self.ref_params = tree.get("ref")
        progress = meta["progress"]
        store = [(list(p), list(a)) for p, a in meta["store"]]
        log.info("resumed from checkpoint step %d (phase %s)", step, progress["phase_label"])
        return progress, store

    # ------------------------------------------------------------------ evaluation
    def eval_tasks(self, split: str, n: int) -> list[TaskRef]:
        return make_tasks(self.cfg.env.families, split, [EVAL_SEED_BASE + j for j in range(n)])

    def evaluate(self, policy, label: str, step: int) -> dict:
        out = {"kind": "eval", "phase": label}
        for split, n in (("heldout", self.cfg.eval.episodes), ("train", self.cfg.eval.train_episodes)):
            if isinstance(policy, ModelPolicy):
                policy.seed(jax.random.fold_in(self.base_key, 7))
            eps = self.episodes(self.eval_tasks(split, n), policy)
            out[f"{split}_success"] = success_rate(eps)
            out[f"{split}_invalid"] = invalid_rate(eps)
            out[f"{split}_aborted"] = sum(bool(e.aborted) for e in eps)
            if split == "heldout":
                out["heldout_by_family"] = by_family(eps)
        self.metrics.log(step, out)
        log.info("eval [%s] held-out success %.3f (invalid actions %.3f), train success %.3f", label,
                 out["heldout_success"], out["heldout_invalid"], out["train_success"])
        return out

    # ------------------------------------------------------------------ phases
    def _throughput(self, tokens: int, seconds: float) -> dict:
        tps = tokens / max(seconds, 1e-9)
        rec = {"tokens_per_s": tps}
        if self.peak:
            rec["mfu"] = tps * self.flops_per_token / self.peak
        return rec

    def sft_batches(self, examples: Sequence[Example], batch: int, key: tuple[int, ...],
                    prompt_len: int | None = None) -> Iterator[dict]:
        """Endless shuffled fixed-size batches; epoch e's order is a function of ``key`` and e."""
        prompt_len = prompt_len or self.pcfg.max_prompt_tokens
        epoch = 0
        while True:
            order = np.random.default_rng([*key, epoch]).permutation(len(examples))
            for lo in range(0, len(order) - batch + 1 if len(order) >= batch else 1, batch):
                idx = order[lo:lo + batch]
                yield pack_examples([examples[i][0] for i in idx], [examples[i][1] for i in idx],
                                    prompt_len, self.pcfg.max_action_tokens, self.tok.pad_id, rows=batch)
            epoch += 1

    def run_sft(self, progress: dict, store: list[Example], examples: Sequence[Example], total: int,
                batch: int, lr_fn, key: tuple[int, ...], bar, prompt_len: int | None = None) -> None:
        it = self.sft_batches(examples, batch, key, prompt_len)
        for _ in range(progress["phase_step"]):  # skip what the restored run already did
            next(it)
        log_every = self.cfg.bc.log_every
        t0, tokens = time.perf_counter(), 0
        while progress["phase_step"] < total:
            s = progress["phase_step"]
            self.state = set_learning_rate(self.state, lr_fn(s))
            b = next(it)
            tokens += int(b["attention_mask"].sum())
            self.state, m = self.sft_step(self.state, shard_batch(b, self.mesh))
            progress["phase_step"] += 1
            progress["step"] += 1
            bar.update(1)
            if progress["phase_step"] % log_every == 0 or progress["phase_step"] == total:
                m = jax.device_get(m)
                dt = time.perf_counter() - t0
                rec = self.metrics.log(progress["step"], {
                    "kind": "train", "phase": progress["phase_label"], "loss": m["loss"],
                    "entropy": m["entropy"], "grad_norm": m["grad_norm"], "lr": lr_fn(s),
                    **self._throughput(tokens, dt)})
                bar.set_postfix(phase=progress["phase_label"], loss=f"{rec['loss']:.3f}")
                t0, tokens = time.perf_counter(), 0
            if progress["phase_step"] % self.cfg.checkpoint.sft_every == 0 and progress["phase_step"] < total:
                self.save(progress, store)
        self._sync_policies()

    def rl_tasks(self, stats: dict, seeds: Sequence[int], phase_n: int, i: int) -> list[TaskRef]:
        """One task per seed on ``rl.split``; with named families, each drawn by
        :func:`~jaxrl_desktop.curriculum.family_weights` (favouring families whose groups will disagree)."""
        cfg, spec = self.cfg.rl, self.cfg.env.families
        fams = select_families(spec, cfg.split) if spec.strip() else []
        if cfg.family_floor >= 1.0 or len(fams) < 2:
            return make_tasks(spec, cfg.split, seeds)
        weights = family_weights(stats, fams, cfg.group_size, cfg.family_floor)
        chosen = sample_families(np.random.default_rng([self.cfg.seed, 17, phase_n, i]), fams, weights, len(seeds))
        return [TaskRef(f, s, cfg.split) for f, s in zip(chosen, seeds, strict=True)]

    def rl_iteration(self, progress: dict, store: list[Example]) -> dict:
        cfg = self.cfg.rl
        phase_n, i = progress["rl_phase"], progress["phase_step"]
        seeds = task_seeds(self.cfg.seed, 1 + phase_n, i, n=cfg.tasks_per_iter)
        stats = progress.setdefault("family_stats", {})
        tasks = [t for t in self.rl_tasks(stats, seeds, phase_n, i) for _ in range(cfg.group_size)]
        groups = [j for j in range(len(seeds)) for _ in range(cfg.group_size)]
        self.sample_policy.seed(jax.random.fold_in(jax.random.fold_in(self.base_key, 100 + phase_n), i))
        t0 = time.perf_counter()
        episodes = self.episodes(tasks, self.sample_policy)
        t_roll = time.perf_counter() - t0
        n_aborted = sum(bool(e.aborted) for e in episodes)
        groups = [g for g, e in zip(groups, episodes, strict=True) if not e.aborted]
        episodes = completed(episodes)
        env_steps = sum(len(e.steps) for e in episodes)
        progress["family_stats"] = update_stats(stats, [(e.family, e.success) for e in episodes], cfg.family_decay)

        # the store of successful rollouts feeds Entropulse
        seen = {(tuple(p), tuple(a)) for p, a in store}
        for e in episodes:
            if e.success:
                for st in e.steps:
                    k = (tuple(st.choice.prompt_ids), tuple(st.choice.action_ids))
                    if k not in seen and st.choice.action_ids and st.choice.action_ids[-1] == self.tok.eos_id:
                        seen.add(k)
                        store.append((list(k[0]), list(k[1])))
        del store[: max(0, len(store) - cfg.store_size)]

        steps = [(g, e, st) for g, e in zip(groups, episodes, strict=True) for st in e.steps]
        rewards = [r for e in episodes for r in step_rewards(e)]
        adv = group_advantages(rewards, [g for g, _, _ in steps])
        keep = [k for k in range(len(steps)) if adv[k] != 0.0]
        ent = np.concatenate([st.choice.entropy for _, _, st in steps]) if steps else np.zeros(1)
        rec = {"kind": "train", "phase": progress["phase_label"], "rollout_success": success_rate(episodes),
               "return": mean([e.reward for e in episodes]), "entropy": float(ent.mean()),
               "invalid_rate": invalid_rate(episodes), "env_steps_per_s": env_steps / max(t_roll, 1e-9),
               "informative_steps": len(keep), "store": len(store), "aborted_episodes": n_aborted,
               "rollout_by_family": by_family(episodes)}
        if keep:
            self.state = set_learning_rate(self.state, cfg.lr)
            order = np.random.default_rng([self.cfg.seed, 7, phase_n, i]).permutation(keep)
            mb = cfg.minibatch
            ms, tokens, t1 = [], 0, time.perf_counter()
            for _ in range(cfg.epochs):
                for lo in range(0, len(order), mb):
                    idx = order[lo:lo + mb]
                    rows = bucket(len(idx), max(16, self.mesh.shape["data"]))
                    chosen = [steps[k][2].choice for k in idx]
                    b = pack_examples([c.prompt_ids for c in chosen], [c.action_ids for c in chosen],
                                      self.pcfg.max_prompt_tokens, self.pcfg.max_action_tokens,
                                      self.tok.pad_id, rows=rows)
                    b["old_logprobs"] = per_token([c.logprobs for c in chosen], self.pcfg.max_prompt_tokens,
                                                  self.pcfg.max_action_tokens, rows)
                    b["advantages"] = np.zeros(rows, np.float32)
                    b["advantages"][: len(idx)] = adv[idx]
                    tokens += int(b["attention_mask"].sum())
                    batch = shard_batch(b, self.mesh)
                    if self.cfg.rl.kl_coef > 0:
                        with jax.set_mesh(self.mesh):
                            batch["ref_logprobs"] = self.ref_logprobs(self.ref_params, batch)
                    self.state, m = self.grpo_step(self.state, batch)
                    ms.append(m)
            ms = jax.device_get(ms)
            for k in ("loss", "clip_frac", "ratio", "grad_norm", "kl", "kl_behaviour"):
                if k in ms[0]:
                    rec[k] = mean([float(x[k]) for x in ms])
            rec.update(self._throughput(tokens, time.perf_counter() - t1))
            self._sync_policies()
        progress["phase_step"] += 1
        progress["step"] += 1
        return self.metrics.log(progress["step"], rec)

    # ------------------------------------------------------------------ the job
    def run(self) -> dict:
        cfg = self.cfg
        (self.workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
        self.connect()
        self.ckpt = Checkpointer(self.workdir / "checkpoints", keep=cfg.checkpoint.keep,
                                 async_save=cfg.checkpoint.async_save)
        self._stack.callback(self.ckpt.close)
        self.metrics = MetricsLogger(self.workdir, tensorboard=cfg.log.tensorboard)
        self._stack.callback(self.metrics.close)

        fresh = not self.ckpt.steps()
        expert = None
        tok_path = Path(cfg.tokenizer.path) if cfg.tokenizer.path else self.workdir / "tokenizer.json"
        if fresh or not tok_path.exists():
            expert = self.expert_episodes()
        self.build(self.load_or_train_tokenizer(expert))
        restored = None if fresh else self.restore()
        if restored is None:
            first = "copy" if cfg.bc.copy_warmup_steps > 0 else "bc"
            progress = {"phase": first, "phase_label": first, "phase_step": 0, "step": 0, "rl_phase": 0,
                        "phase_log": []}
            store: list[Example] = []
            self.metrics.rewind(-1)
        else:
            progress, store = restored
            moved = self.metrics.rewind(progress["step"])
            if moved:
                log.info("moved %d metric records logged after the checkpoint to metrics.discarded.jsonl", moved)
            if cfg.rl.kl_coef > 0 and self.ref_params is None and progress["phase"] not in ("copy", "bc"):
                log.warning("rl.kl_coef > 0 but the checkpoint holds no frozen reference (it was written with "
                            "kl_coef = 0): the restored policy becomes the reference")
                self.ref_params = jax.tree.map(jnp.copy, self.state.params)
        self._sync_policies()

        bc_examples: list[Example] = []
        if progress["phase"] in ("copy", "bc"):
            expert = expert if expert is not None else self.expert_episodes()
            bc_examples = self.encode_examples(expert)
            n_copy = int(len(bc_examples) * cfg.bc.copy_fraction / max(1e-9, 1 - cfg.bc.copy_fraction))
            log.info("behaviour cloning on %d (observation, action) pairs + %d copy drills", len(bc_examples), n_copy)
            bc_examples += self.copy_examples(n_copy)
        total = cfg.bc.copy_warmup_steps + cfg.bc.steps + cfg.rl.phases * cfg.rl.iters + (cfg.rl.phases - 1) * cfg.entropulse.steps
        bar = tqdm(total=total, initial=min(progress["step"], total), disable=not cfg.log.progress,
                   desc="train", dynamic_ncols=True)
        self._stack.callback(bar.close)

        if progress["step"] == 0 and progress["phase"] in ("copy", "bc"):
            self.evaluate(RandomPolicy(cfg.seed), "random", 0)
            self.evaluate(self.greedy_policy, "init", 0)

        def change(to: str, label: str, why: str) -> None:
            entry = {"step": progress["step"], "from": progress["phase_label"], "to": label, "reason": why}
            progress["phase_log"].append(entry)
            self.metrics.log(progress["step"], {"kind": "phase_change", **entry})
            log.info("phase %s -> %s at step %d: %s", progress["phase_label"], label, progress["step"], why)
            progress.update(phase=to, phase_label=label, phase_step=0)

        while progress["phase"] != "done":
            phase = progress["phase"]
            if phase == "copy":
                n, plen = cfg.bc.copy_warmup_steps, cfg.bc.copy_prompt_tokens
                drills = self.copy_examples(n * cfg.bc.batch_size, plen, stream=22)
                warm, peak = min(cfg.bc.warmup, n // 4), cfg.bc.lr
                sched = optax.warmup_constant_schedule(0.0, peak, warm)
                self.run_sft(progress, store, drills, n, cfg.bc.batch_size, lambda s, f=sched: float(f(s)),
                             (cfg.seed, 10), bar, prompt_len=plen)
                change("bc", "bc", f"copy warm-up finished its {n} steps")
                self.save(progress, store)
            elif phase == "bc":
                warm, peak = min(cfg.bc.warmup, cfg.bc.steps // 4), cfg.bc.lr
                sched = optax.warmup_cosine_decay_schedule(0.0, peak, warm, cfg.bc.steps, peak * 0.05)
                self.run_sft(progress, store, bc_examples, cfg.bc.steps, cfg.bc.batch_size,
                             lambda s, f=sched: float(f(s)), (cfg.seed, 11), bar)
                self.evaluate(self.greedy_policy, "bc", progress["step"])
                if cfg.rl.kl_coef > 0:
                    self.ref_params = jax.tree.map(jnp.copy, self.state.params)
                progress["rl_phase"] = 1
                change("rl", "rl1", f"behaviour cloning finished its {cfg.bc.steps} steps")
                self.save(progress, store)
            elif phase == "rl":
                rec = self.rl_iteration(progress, store)
                n = progress["phase_step"]
                bar.update(1)
                bar.set_postfix(phase=progress["phase_label"], success=f"{rec['rollout_success']:.2f}",
                                entropy=f"{rec['entropy']:.3f}")
                why = None
                if n >= cfg.entropulse.min_rl_iters and rec["entropy"] < cfg.entropulse.entropy_threshold:
                    why = (f"action entropy {rec['entropy']:.4f} fell below the threshold "
                           f"{cfg.entropulse.entropy_threshold}")
                elif n >= cfg.rl.iters:
                    why = f"scheduled: {cfg.rl.iters} RL iterations done"
                if why is None and n % cfg.eval.every == 0:
                    self.evaluate(self.greedy_policy, progress["phase_label"], progress["step"])
                if why is not None:
                    self.evaluate(self.greedy_policy, progress["phase_label"], progress["step"])
                    bar.update(max(0, cfg.rl.iters - n))  # keep the bar's total honest
                    k = progress["rl_phase"]
                    if k < cfg.rl.phases:
                        change("entropulse", f"entropulse{k}", why)
                    else:
                        change("done", "done", why)
                    self.save(progress, store)
                elif n % cfg.checkpoint.rl_every == 0:
                    self.save(progress, store)
            elif phase == "entropulse":
                e = cfg.entropulse
                if store:
                    self.run_sft(progress, store, list(store), e.steps, e.batch_size, lambda _, lr=e.lr: lr,
                                 (cfg.seed, 13, progress["rl_phase"]), bar)
                else:
                    log.warning("the successful-rollout store is empty; Entropulse has nothing to learn")
                    bar.update(e.steps)
                self.evaluate(self.greedy_policy, progress["phase_label"], progress["step"])
                progress["rl_phase"] += 1
                change("rl", f"rl{progress['rl_phase']}", f"Entropulse SFT on {len(store)} stored successful steps done")
                self.save(progress, store)
        self.ckpt.wait()
        self.metrics.flush()
        summary = self.summary()
        if cfg.log.plot:
            png = plot_training(read_metrics(self.metrics.path), self.workdir / "training.png")
            log.info("wrote %s", png)
        return summary

    def summary(self) -> dict:
        """Held-out success per phase (the last eval of each phase label)."""
        evals = {}
        for r in read_metrics(self.metrics.path):
            if r.get("kind") == "eval":
                evals[r["phase"]] = {k: r[k] for k in ("step", "heldout_success", "train_success", "heldout_invalid")}
        return evals
