"""Model specs for evaluation: ``hf:<dir>``, ``config:<preset>`` (random init) and ``ckpt:<dir>``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from jaxrl_desktop.model_configs import get_config
from jaxrl_desktop.models.decoder import Decoder
from jaxrl_desktop.sharding import create_sharded
from jaxrl_desktop.tokenizer import Tokenizer


@dataclasses.dataclass
class LoadedModel:
    model: Decoder
    tokenizer: Any  # jaxrl_desktop.tokenizer.Tokenizer (or anything with encode/encode_batch/bos_id/eos_id)
    add_bos: bool
    description: str


def load_policy_checkpoint(ckpt_dir: str | Path, mesh: Mesh | None = None) -> LoadedModel:
    """The newest good checkpoint of a learner run (``python -m jaxrl_desktop.train`` workdir)."""
    from jaxrl_desktop.policy_io import load_trained_policy

    tp = load_trained_policy(ckpt_dir, mesh)
    return LoadedModel(tp.model(), tp.tokenizer, True, f"ckpt:{ckpt_dir} (step {tp.step}, {tp.phase})")


def load_model(
    spec: str,
    mesh: Mesh | None = None,
    *,
    tokenizer_path: str | None = None,
    tokenizer_texts: Iterable[str] | None = None,
    dtype: str = "float32",
    seed: int = 0,
) -> LoadedModel:
    """Resolve ``--model``.

    * ``hf:<dir>``: an HF Llama/Qwen2 folder, imported and sharded (:mod:`jaxrl_desktop.hf_import`).
    * ``config:<preset>``: a randomly initialised preset (smoke tests); its tokenizer is
      ``tokenizer_path`` or a byte-level BPE trained on ``tokenizer_texts`` (vocab = the preset's).
    * ``ckpt:<dir>``: a learner checkpoint (:func:`load_policy_checkpoint`).
    """
    kind, sep, arg = spec.partition(":")
    if not sep or not arg:
        raise ValueError(f"--model {spec!r}: expected hf:<dir>, config:<preset> or ckpt:<dir>")
    if kind == "hf":
        from jaxrl_desktop.hf_import import import_hf

        hf = import_hf(arg, mesh, dtype=dtype)
        return LoadedModel(hf.model, hf.tokenizer, hf.add_bos, f"hf:{arg} ({hf.config.name})")
    if kind == "ckpt":
        return load_policy_checkpoint(arg, mesh)
    if kind == "config":
        base = get_config(arg)
        if tokenizer_path:
            tok = Tokenizer.load(tokenizer_path)
        else:
            if tokenizer_texts is None:
                raise ValueError("config:<preset> needs --tokenizer or texts to train a tokenizer on")
            tok = Tokenizer.train(tokenizer_texts, vocab_size=max(base.vocab_size, 512), min_frequency=1)
        cfg = base.replace(vocab_size=tok.vocab_size, dtype=dtype)

        def factory() -> Decoder:
            return Decoder(cfg, rngs=nnx.Rngs(seed))

        model = create_sharded(factory, mesh) if mesh is not None else factory()
        return LoadedModel(model, tok, False, f"config:{arg} (random init, vocab {tok.vocab_size})")
    raise ValueError(f"--model {spec!r}: unknown kind {kind!r}; expected hf:, config: or ckpt:")
