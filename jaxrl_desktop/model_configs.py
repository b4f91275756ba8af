"""Decoder configurations: one frozen dataclass and named presets.

Presets: ``tiny`` (unit tests), ``small`` (the CPU training default), HF-importable small shapes
(``qwen2-0.5b``, ``smollm-135m``) and the exact shapes of ``glm4-9b`` and ``qwen2.5-14b`` (built only
abstractly here). ``to_config_dict`` / ``from_config_dict`` bridge to ml_collections configs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shapes and numerics of a pre-norm RMSNorm/RoPE/GQA/SwiGLU decoder (Llama/Qwen2/GLM-4 family)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_seq_len: int = 2048
    rope_theta: float = 10_000.0
    rope_fraction: float = 1.0  # share of head_dim that is rotated (GLM-4: 0.5)
    rope_interleaved: bool = False  # rotate (x0,x1),(x2,x3).. pairs (GLM) instead of halves (Llama)
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_embeddings: bool = True
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    init_std: float = 0.02
    remat: bool = False  # rematerialise each block in the backward pass
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} not a multiple of num_kv_heads={self.num_kv_heads}")
        rot = self.rotary_dim
        if rot % 2 or rot <= 0 or rot > self.head_dim:
            raise ValueError(f"rotary dim {rot} (head_dim * rope_fraction) must be even and in (0, head_dim]")

    @property
    def rotary_dim(self) -> int:
        return round(self.head_dim * self.rope_fraction)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **overrides: Any) -> DecoderConfig:
        return dataclasses.replace(self, **overrides)


def param_count(cfg: DecoderConfig) -> int:
    """Exact number of parameters of :class:`~jaxrl_desktop.models.Decoder` for ``cfg``."""
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if cfg.qkv_bias:
        attn += h * hd + 2 * kv * hd
    mlp = 3 * d * cfg.intermediate_size
    per_layer = attn + mlp + 2 * d
    embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return cfg.num_layers * per_layer + embed + d


def matmul_param_count(cfg: DecoderConfig) -> int:
    """Parameters used in matmuls per token: everything but norms/biases and the input embedding
    lookup; the output projection (tied or not) counts once."""
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * cfg.intermediate_size
    return cfg.num_layers * per_layer + cfg.vocab_size * d


PRESETS: dict[str, DecoderConfig] = {
    "tiny": DecoderConfig(
        name="tiny", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, intermediate_size=128, max_seq_len=128, qkv_bias=True, tie_embeddings=False,
    ),
    # ~3.4M params with a 2k vocab; the CPU training default (2 cores, context 1024).
    "small": DecoderConfig(
        name="small", vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=64, intermediate_size=704, max_seq_len=1024, tie_embeddings=True,
    ),
    # Qwen/Qwen2-0.5B (also Qwen2.5-0.5B): 494M parameters.
    "qwen2-0.5b": DecoderConfig(
        name="qwen2-0.5b", vocab_size=151_936, hidden_size=896, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, intermediate_size=4864, max_seq_len=32_768, rope_theta=1e6,
        norm_eps=1e-6, qkv_bias=True, tie_embeddings=True, dtype="bfloat16",
    ),
    # HuggingFaceTB/SmolLM-135M (plain Llama shape): 134.5M parameters.
    "smollm-135m": DecoderConfig(
        name="smollm-135m", vocab_size=49_152, hidden_size=576, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, intermediate_size=1536, max_seq_len=2048, rope_theta=10_000.0,
        norm_eps=1e-5, qkv_bias=False, tie_embeddings=True, dtype="bfloat16",
    ),
    # THUDM/glm-4-9b: 9.40B parameters (partial, interleaved RoPE on half of each head).
    "glm4-9b": DecoderConfig(
        name="glm4-9b", vocab_size=151_552, hidden_size=4096, num_layers=40, num_heads=32,
        num_kv_heads=2, head_dim=128, intermediate_size=13_696, max_seq_len=8192,
        rope_theta=10_000.0, rope_fraction=0.5, rope_interleaved=True, norm_eps=1.5625e-7,
        qkv_bias=True, tie_embeddings=False, dtype="bfloat16", param_dtype="bfloat16", remat=True,
    ),
    # Qwen/Qwen2.5-14B: 14.77B parameters.
    "qwen2.5-14b": DecoderConfig(
        name="qwen2.5-14b", vocab_size=152_064, hidden_size=5120, num_layers=48, num_heads=40,
        num_kv_heads=8, head_dim=128, intermediate_size=13_824, max_seq_len=131_072,
        rope_theta=1e6, norm_eps=1e-5, qkv_bias=True, tie_embeddings=False, dtype="bfloat16",
        param_dtype="bfloat16", remat=True,
    ),
}


def get_config(name: str, **overrides: Any) -> DecoderConfig:
    """A named preset, optionally with fields replaced (e.g. ``vocab_size=tokenizer.vocab_size``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def to_config_dict(cfg: DecoderConfig) -> ml_collections.ConfigDict:
    """The config as a ConfigDict (for ``configs/*.py`` and command-line overrides)."""
    return ml_collections.ConfigDict(dataclasses.asdict(cfg))


def from_config_dict(cd: ml_collections.ConfigDict | dict[str, Any]) -> DecoderConfig:
    """Build a config from a ConfigDict/dict. A ``preset`` key selects the base; other keys override."""
    values = dict(cd.to_dict() if isinstance(cd, ml_collections.ConfigDict) else cd)
    preset = values.pop("preset", None)
    if preset is not None:
        return get_config(preset, **values)
    return DecoderConfig(**values)
