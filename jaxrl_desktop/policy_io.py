"""Load a trained policy from a training workdir (``config.json`` + ``tokenizer.json`` + checkpoints)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ml_collections
from flax import nnx
from jax.sharding import Mesh

from jaxrl_desktop.checkpoint import Checkpointer
from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.model_configs import DecoderConfig
from jaxrl_desktop.models.decoder import Decoder
from jaxrl_desktop.policy import bucket
from jaxrl_desktop.prompt import PromptConfig, PromptEncoder
from jaxrl_desktop.sharding import create_train_state
from jaxrl_desktop.tokenizer import Tokenizer


@dataclass
class TrainedPolicy:
    config: ml_collections.ConfigDict
    model_config: DecoderConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Tokenizer
    encoder: PromptEncoder
    step: int
    phase: str

    def model(self) -> Decoder:
        return nnx.merge(self.graphdef, self.params)


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The training config a workdir was run with (its ``config.json``)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a training workdir: config.json is missing")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_trained_policy(workdir: str | Path, mesh: Mesh | None = None) -> TrainedPolicy:
    """The newest good checkpoint of a ``python -m jaxrl_desktop.train`` run, sharded onto ``mesh``."""
    from jaxrl_desktop.trainer import make_optimizer, model_config, restore_training

    workdir = Path(workdir)
    for need in ("config.json", "tokenizer.json", "checkpoints"):
        if not (workdir / need).exists():
            raise FileNotFoundError(f"{workdir} is not a training workdir: {need} is missing")
    cfg = load_config(workdir)
    tok = Tokenizer.load(workdir / "tokenizer.json")
    mesh = mesh or make_mesh(data=-1, fsdp=1, tensor=1)
    mcfg = model_config(cfg, bucket(tok.vocab_size, 128))
    optimizer = make_optimizer(cfg)
    graphdef, state, shardings = create_train_state(lambda: Decoder(mcfg, rngs=nnx.Rngs(0)), optimizer, mesh)
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    try:
        found = restore_training(ckpt, state.params, optimizer, shardings)
    finally:
        ckpt.close()
    if found is None:
        raise FileNotFoundError(f"no readable checkpoint in {workdir / 'checkpoints'}")
    step, tree, meta = found
    p = cfg.prompt
    encoder = PromptEncoder(tok, PromptConfig(p.max_prompt_tokens, p.max_action_tokens, p.max_rows, p.history))
    return TrainedPolicy(cfg, mcfg, graphdef, tree["train"].params, tok, encoder, step,
                         meta["progress"]["phase_label"])
