"""Import Hugging Face decoder checkpoints (Llama / Qwen2) into the NNX :class:`Decoder`, sharded on load.

A checkpoint folder holds ``config.json``, ``model.safetensors`` (or ``model.safetensors.index.json``
plus shards) and ``tokenizer.json``. ``import_hf(dir, mesh)`` maps every tensor onto the matching
parameter (HF ``Linear`` weights are ``[out, in]``; ours are ``[in, heads, head_dim]`` etc.), builds each
array directly with its ``NamedSharding`` from the logical-axis rules (one tensor in host memory at a
time) and returns the model with its tokenizer. HF's ``rotate_half`` RoPE pairs feature ``i`` with
``i + head_dim/2``, which is the decoder's non-interleaved RoPE, so q/k weights are used unpermuted.
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

from jaxrl_desktop.mesh import LOGICAL_AXIS_RULES
from jaxrl_desktop.model_configs import DecoderConfig
from jaxrl_desktop.models.decoder import Decoder
from jaxrl_desktop.sharding import abstract_model
from jaxrl_desktop.tokenizer import Tokenizer

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "qwen2")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
Transform = Callable[[np.ndarray], np.ndarray]


class CheckpointError(ValueError):
    """An HF checkpoint this importer cannot use; the message names the file and field/tensor."""


# -------------------------------------------------------------------------------- config
def config_from_hf(
    hf: dict[str, Any], *, dtype: str = "float32", param_dtype: str = "float32", where: str = "config.json"
) -> DecoderConfig:
    """A :class:`DecoderConfig` from an HF ``config.json`` dict (Llama or Qwen2)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{where}: model_type {model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})")

    def need(key: str) -> Any:
        if key not in hf:
            raise CheckpointError(f"{where}: required field {key!r} is missing")
        return hf[key]

    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act {hf['hidden_act']!r} unsupported (only silu / SwiGLU)")
    if hf.get("rope_scaling") not in (None, {}) and (hf["rope_scaling"] or {}).get("rope_type", "default") != "default":
        raise CheckpointError(f"{where}: rope_scaling {hf['rope_scaling']!r} is not supported")
    if hf.get("mlp_bias"):
        raise CheckpointError(f"{where}: mlp_bias=true is not supported")
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        raise CheckpointError(f"{where}: use_sliding_window=true is not supported")
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    qkv_bias = True if model_type == "qwen2" else bool(hf.get("attention_bias", False))
    return DecoderConfig(
        name=str(hf.get("_name_or_path") or model_type),
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        intermediate_size=int(need("intermediate_size")),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        rope_theta=float(hf.get("rope_theta", 10_000.0)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=qkv_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dtype=dtype,
        param_dtype=param_dtype,
    )


# ------------------------------------------------------------------------------- weights
def hf_weight_map(cfg: DecoderConfig) -> dict[tuple[str | int, ...], tuple[str, Transform]]:
    """Our parameter path -> (HF tensor name, transform from the HF layout)."""
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def same(w: np.ndarray) -> np.ndarray:
        return w

    def t(w: np.ndarray) -> np.ndarray:
        return w.T

    def proj(n: int) -> Transform:
        return lambda w: w.T.reshape(d, n, hd)

    def bias(n: int) -> Transform:
        return lambda b: b.reshape(n, hd)

    m: dict[tuple[str | int, ...], tuple[str, Transform]] = {
        ("embed",): ("model.embed_tokens.weight", same),
        ("final_norm", "scale"): ("model.norm.weight", same),
    }
    if not cfg.tie_embeddings:
        m[("lm_head",)] = ("lm_head.weight", t)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        layer: dict[tuple[str, ...], tuple[str, Transform]] = {
            ("attn_norm", "scale"): ("input_layernorm.weight", same),
            ("mlp_norm", "scale"): ("post_attention_layernorm.weight", same),
            ("attn", "q"): ("self_attn.q_proj.weight", proj(h)),
            ("attn", "k"): ("self_attn.k_proj.weight", proj(kv)),
            ("attn", "v"): ("self_attn.v_proj.weight", proj(kv)),
            ("attn", "o"): ("self_attn.o_proj.weight", lambda w: w.T.reshape(h, hd, d)),
            ("mlp", "gate"): ("mlp.gate_proj.weight", t),
            ("mlp", "up"): ("mlp.up_proj.weight", t),
            ("mlp", "down"): ("mlp.down_proj.weight", t),
        }
        if cfg.qkv_bias:
            layer[("attn", "q_bias")] = ("self_attn.q_proj.bias", bias(h))
            layer[("attn", "k_bias")] = ("self_attn.k_proj.bias", bias(kv))
            layer[("attn", "v_bias")] = ("self_attn.v_proj.bias", bias(kv))
        for path, (name, fn) in layer.items():
            m[("layers", i, *path)] = (p + name, fn)
    return m


class SafetensorsReader:
    """Tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""

    def __init__(self, ckpt_dir: Path):
        from safetensors import safe_open

        index = ckpt_dir / "model.safetensors.index.json"
        single = ckpt_dir / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
            files = {name: ckpt_dir / f for name, f in weight_map.items()}
        elif single.exists():
            files = {}
            with safe_open(str(single), framework="numpy") as f:
                files = dict.fromkeys(f.keys(), single)
        else:
            raise CheckpointError(f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json")
        missing = sorted({str(p) for p in files.values() if not p.exists()})
        if missing:
            raise CheckpointError(f"{ckpt_dir}: shard files listed in the index are missing: {missing}")
        self.files = files
        self._open: dict[Path, Any] = {}
        self._safe_open = safe_open

    def names(self) -> set[str]:
        return set(self.files)

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise CheckpointError(f"tensor {name!r} not found in the checkpoint")
        path = self.files[name]
        if path not in self._open:
            self._open[path] = self._safe_open(str(path), framework="numpy")
        return self._open[path].get_tensor(name)


@dataclasses.dataclass
class HFModel:
    """An imported checkpoint: the sharded model, its tokenizer and whether prompts start with BOS."""

    model: Decoder
    tokenizer: Tokenizer
    config: DecoderConfig
    hf_config: dict[str, Any]
    add_bos: bool


def load_params(
    ckpt_dir: str | Path,
    cfg: DecoderConfig,
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> Decoder:
    """Build the Decoder for ``cfg`` with weights read from ``ckpt_dir`` (sharded on ``mesh`` if given)."""
    ckpt_dir = Path(ckpt_dir)
    reader = SafetensorsReader(ckpt_dir)

    def factory() -> Decoder:
        return Decoder(cfg, rngs=nnx.Rngs(0))

    if mesh is None:
        graphdef, state = nnx.split(nnx.eval_shape(factory))
    else:
        graphdef, state = abstract_model(factory, mesh, rules)
    names = hf_weight_map(cfg)
    used: set[str] = set()

    def fill(path: tuple, var: nnx.Variable) -> nnx.Variable:
        key = tuple(p if isinstance(p, int) else str(p) for p in path)
        if key not in names:
            raise CheckpointError(f"no HF tensor mapping for parameter {'.'.join(map(str, path))}")
        hf_name, fn = names[key]
        value = fn(np.asarray(reader.get(hf_name)))
        abstract = var.get_value()
        if value.shape != abstract.shape:
            raise CheckpointError(
                f"{ckpt_dir}: tensor {hf_name} has shape {reader.get(hf_name).shape}, which does not fit "
                f"parameter {'.'.join(map(str, path))} {tuple(abstract.shape)} (check config.json)"
            )
        host = np.ascontiguousarray(value.astype(abstract.dtype))
        used.add(hf_name)
        sharding = getattr(abstract, "sharding", None)
        if sharding is None:
            return var.replace(jnp.asarray(host))
        return var.replace(jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx]))

    state = nnx.map_state(fill, state)
    extra = sorted(n for n in reader.names() - used if not n.endswith(_IGNORED_SUFFIXES))
    if cfg.tie_embeddings:
        extra = [n for n in extra if n != "lm_head.weight"]  # some tied checkpoints still store it
    if extra:
        raise CheckpointError(f"{ckpt_dir}: tensors the model has no place for: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    return nnx.merge(graphdef, state)


def _token_for(hf_tok: Any, token_id: Any) -> str | None:
    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    if token_id is None:
        return None
    return hf_tok.id_to_token(int(token_id))


def load_tokenizer(ckpt_dir: Path, hf: dict[str, Any]) -> tuple[Tokenizer, bool]:
    """The checkpoint's ``tokenizer.json`` and whether its post-processor starts sequences with BOS."""
    import tokenizers

    path = ckpt_dir / "tokenizer.json"
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir}: tokenizer.json is missing")
    raw = tokenizers.Tokenizer.from_file(str(path))
    bos = _token_for(raw, hf.get("bos_token_id"))
    eos = _token_for(raw, hf.get("eos_token_id"))
    tok = Tokenizer(raw, bos_token=bos, eos_token=eos)
    ids = raw.encode("a", add_special_tokens=True).ids
    add_bos = tok.bos_id is not None and bool(ids) and ids[0] == tok.bos_id
    return tok, add_bos


def read_hf_config(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir}: config.json is missing (not an HF checkpoint folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def import_hf(
    ckpt_dir: str | Path,
    mesh: Mesh | None = None,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> HFModel:
    """Load an HF Llama/Qwen2 checkpoint folder as a (sharded) :class:`Decoder` plus tokenizer."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: not a directory")
    hf = read_hf_config(ckpt_dir)
    cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, where=str(ckpt_dir / "config.json"))
    model = load_params(ckpt_dir, cfg, mesh, rules)
    tok, add_bos = load_tokenizer(ckpt_dir, hf)
    return HFModel(model, tok, cfg, hf, add_bos)
