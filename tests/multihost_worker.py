"""One JAX process of the multi-host test (also imported by the test for the 1-process reference).

Run as ``python tests/multihost_worker.py --coordinator 127.0.0.1:PORT --num-processes 2
--process-id I --out result.json``: joins the cluster with 2 CPU devices, builds a global
(data=2, fsdp=2) mesh, runs a few sharded train steps on a deterministic batch fed per process and
writes the losses (process 0 only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STEPS = 4
GLOBAL_BATCH = 8
SEQ = 16


def global_batch(step: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(100 + step)
    tokens = rng.integers(3, 256, (GLOBAL_BATCH, SEQ)).astype(np.int32)
    mask = np.ones((GLOBAL_BATCH, SEQ), bool)
    mask[1::2, :4] = False
    return {"tokens": tokens, "attention_mask": mask}


def run_training(devices: list, steps: int = STEPS) -> list[float]:
    """Sharded AdamW steps of the tiny decoder on a (data=2, fsdp=2) mesh over ``devices``.
    Each process feeds only its own rows (``make_array_from_process_local_data``)."""
    import optax
    from flax import nnx

    from jaxrl_desktop.mesh import make_mesh
    from jaxrl_desktop.model_configs import get_config
    from jaxrl_desktop.models import Decoder, make_lm_loss
    from jaxrl_desktop.sharding import (
        batch_sharding,
        create_train_state,
        local_rows,
        make_train_step,
        shard_batch,
    )

    cfg = get_config("tiny")
    mesh = make_mesh(data=2, fsdp=2, tensor=1, devices=devices)
    optimizer = optax.adamw(3e-3)
    graphdef, state, shardings = create_train_state(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), optimizer, mesh)
    bshard = {"tokens": batch_sharding(mesh), "attention_mask": batch_sharding(mesh)}
    step_fn = make_train_step(make_lm_loss(graphdef), optimizer, mesh, shardings, bshard)
    rows = local_rows(bshard["tokens"], (GLOBAL_BATCH, SEQ))
    losses = []
    for i in range(steps):
        local = {k: v[rows] for k, v in global_batch(i % 2).items()}
        state, metrics = step_fn(state, shard_batch(local, mesh, global_batch=False))
        losses.append(float(metrics["loss"]))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--local-devices", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax

    jax.config.update("jax_num_cpu_devices", args.local_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
    )
    assert jax.process_count() == args.num_processes
    assert jax.local_device_count() == args.local_devices
    losses = run_training(jax.devices())
    if jax.process_index() == 0:
        Path(args.out).write_text(json.dumps({"losses": losses, "devices": jax.device_count()}))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
