"""Learner benchmark: train-step MFU on a 4-device CPU mesh (vs the jit float32 matmul peak measured in
the same run), sampling tokens/s with the KV cache vs recomputation, and end-to-end rollout env-steps/s.

    python bench/learner.py [--model small] [--seq 256] [--batch 16]
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_num_cpu_devices", 4)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402


def timed(fn, repeats: int) -> float:
    out = fn()
    jax.block_until_ready(out)
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="small")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--envs", type=int, default=32)
    args = ap.parse_args()

    from jaxrl_desktop.flops import flops_per_token, measure_matmul_peak, measure_mesh_matmul_peak
    from jaxrl_desktop.mesh import make_mesh
    from jaxrl_desktop.model_configs import get_config
    from jaxrl_desktop.models.decoder import Decoder, make_lm_loss
    from jaxrl_desktop.sampling import SamplingConfig, sample, sample_no_cache
    from jaxrl_desktop.sharding import (
        batch_sharding,
        create_train_state,
        make_train_step,
        shard_batch,
    )

    cfg = get_config(args.model, vocab_size=args.vocab)
    mesh = make_mesh(data=2, fsdp=2, tensor=1)
    peak = measure_mesh_matmul_peak(mesh, n=1024)
    one = measure_matmul_peak(n=1024)
    print(f"devices: {len(jax.devices())} CPU (mesh {dict(mesh.shape)}); measured jit f32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s with every device multiplying at once (one device alone: {one / 1e9:.1f}; "
          f"simulated devices share the {__import__('os').cpu_count()} cores)")

    # ------------------------------------------------------------------ train step MFU
    opt = optax.adamw(1e-3)
    gd, state, sh = create_train_state(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), opt, mesh)
    b2 = batch_sharding(mesh, 2)
    step = make_train_step(make_lm_loss(gd), opt, mesh, sh, {"tokens": b2})
    rng = np.random.default_rng(0)
    batch = shard_batch({"tokens": rng.integers(3, args.vocab, (args.batch, args.seq)).astype(np.int32)}, mesh)
    holder = {"s": state}

    def one():
        holder["s"], m = step(holder["s"], batch)
        return m["loss"]

    dt = timed(one, args.steps)
    tps = args.batch * args.seq / dt
    fpt = flops_per_token(cfg, args.seq, training=True)
    print(f"train step ({args.model}, batch {args.batch} x {args.seq}): {dt * 1000:.0f} ms, {tps:,.0f} tokens/s, "
          f"MFU {tps * fpt / peak:.1%} of the measured peak (goal >= 30%)")

    # ------------------------------------------------------------------ sampling: cache vs recompute
    model = nnx.merge(gd, holder["s"].params)
    prompts = jnp.asarray(rng.integers(3, args.vocab, (8, 64)).astype(np.int32))
    mask = jnp.ones_like(prompts, bool)
    scfg = SamplingConfig(max_new_tokens=64, eos_id=-1, pad_id=0)
    with jax.set_mesh(mesh):
        t_cache = timed(lambda: sample(model, prompts, mask, jax.random.key(0), scfg).tokens, 2)
        t_full = timed(lambda: sample_no_cache(model, prompts, mask, jax.random.key(0), scfg).tokens, 1)
    n_tok = 8 * 64
    print(f"sampling 8 x 64 new tokens: KV cache {n_tok / t_cache:,.0f} tok/s, recompute {n_tok / t_full:,.0f} tok/s, "
          f"ratio {t_full / t_cache:.1f}x (goal >= 5x)")

    # ------------------------------------------------------------------ rollouts end to end
    from env_server.client import BatchedClient
    from env_server.server import ServerConfig, ServerThread
    from env_server.sim import SIM_SCHEMA
    from jaxrl_desktop.grammar_mask import build_action_grammar
    from jaxrl_desktop.policy import ModelPolicy
    from jaxrl_desktop.prompt import PromptConfig, PromptEncoder
    from jaxrl_desktop.rollout import ExpertPolicy, run_episodes
    from jaxrl_desktop.tokenizer import Tokenizer

    with ServerThread(ServerConfig(workers=2)).start() as srv, BatchedClient(srv.address) as client:
        from env_server.types import TaskRef

        ids = client.create(args.envs)
        tasks = [TaskRef("", s, "train") for s in range(args.envs)]
        expert = run_episodes(client, ids, tasks, ExpertPolicy("api"), max_steps=32)
        texts = [e.instruction for e in expert] + [s.choice.text for e in expert for s in e.steps]
        tok = Tokenizer.train(texts * 4, vocab_size=512)
        pcfg = PromptConfig(max_prompt_tokens=96, max_action_tokens=40, max_rows=6)
        enc = PromptEncoder(tok, pcfg)
        small = get_config(args.model, vocab_size=512)
        pgd, params = nnx.split(Decoder(small, rngs=nnx.Rngs(0)))
        grammar = build_action_grammar(SIM_SCHEMA, tok.token_bytes(), tok.eos_id, 512)
        policy = ModelPolicy(pgd, params, enc, mesh, SamplingConfig(max_new_tokens=40, eos_id=tok.eos_id,
                                                                     pad_id=tok.pad_id), grammar)
        policy.seed(jax.random.key(0))
        run_episodes(client, ids, tasks, policy, max_steps=2)  # compile
        t = time.perf_counter()
        eps = run_episodes(client, ids, tasks, policy, max_steps=4)
        dt = time.perf_counter() - t
        n = sum(len(e.steps) for e in eps)
        print(f"rollouts: {args.envs} envs, {n} env steps in {dt:.2f}s = {n / dt:.1f} env-steps/s end to end "
              f"(sampling + gRPC + sim, {args.model} policy with grammar mask)")
        free = ModelPolicy(pgd, params, enc, mesh, SamplingConfig(max_new_tokens=40, eos_id=tok.eos_id,
                                                                   pad_id=tok.pad_id), None)
        free.seed(jax.random.key(0))
        eps_free = run_episodes(client, ids, tasks, free, max_steps=4)
        rate = {name: sum(not s.parsed for e in es for s in e.steps) / max(1, sum(len(e.steps) for e in es))
                for name, es in (("mask", eps), ("no mask", eps_free))}
        print(f"invalid actions of the untrained policy: {rate['mask']:.1%} with the grammar mask, "
              f"{rate['no mask']:.1%} without (a trained policy: python -m eval.desktop --checkpoint <workdir> "
              f"[--nogrammar_mask])")


if __name__ == "__main__":
    main()
