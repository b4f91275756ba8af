"""HF checkpoint import: tiny Llama- and Qwen2-style checkpoints written here, checked against an
independent NumPy re-implementation of the Hugging Face forward pass (rotate_half RoPE, GQA)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import save_file
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from jaxrl_desktop.hf_import import CheckpointError, import_hf
from jaxrl_desktop.mesh import make_mesh
from jaxrl_desktop.sharding import spec_for_shape

CORPUS = [
    "Which routing protocol uses hop count as its metric?",
    "OSPF uses cost; RIP uses hop count; BGP uses path attributes.",
    "以太网交换机根据目的 MAC 地址转发数据帧。",
    "A trunk port carries traffic for several VLANs.",
] * 4


def _tokenizer(bos: bool) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>"] if bos else ["<|endoftext|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if bos:  # Llama-style: the post-processor starts every sequence with <s>
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return tok


def _weights(cfg: dict, rng: np.random.Generator, qkv_bias: bool, tied: bool) -> dict[str, np.ndarray]:
    d, h, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, f, v = d // h, cfg["intermediate_size"], cfg["vocab_size"]

    def w(*shape: int, s: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    out = {"model.embed_tokens.weight": w(v, d, s=1.0), "model.norm.weight": 1 + w(d, s=0.1)}
    if not tied:
        out["lm_head.weight"] = w(v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": 1 + w(d, s=0.1),
            p + "post_attention_layernorm.weight": 1 + w(d, s=0.1),
            p + "self_attn.q_proj.weight": w(h * hd, d),
            p + "self_attn.k_proj.weight": w(kv * hd, d),
            p + "self_attn.v_proj.weight": w(kv * hd, d),
            p + "self_attn.o_proj.weight": w(d, h * hd),
            p + "mlp.gate_proj.weight": w(f, d),
            p + "mlp.up_proj.weight": w(f, d),
            p + "mlp.down_proj.weight": w(d, f),
        }
        if qkv_bias:
            out |= {p + "self_attn.q_proj.bias": w(h * hd), p + "self_attn.k_proj.bias": w(kv * hd),
                    p + "self_attn.v_proj.bias": w(kv * hd)}
    return out


def write_checkpoint(path: Path, kind: str, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """A tiny HF-format checkpoint: llama (untied, BOS, one file, f32) or qwen2 (qkv bias, tied,
    two bf16 shards + index)."""
    path.mkdir(parents=True, exist_ok=True)
    llama = kind == "llama"
    tok = _tokenizer(bos=llama)
    tok.save(str(path / "tokenizer.json"))
    cfg = {
        "model_type": kind, "architectures": ["LlamaForCausalLM" if llama else "Qwen2ForCausalLM"],
        "vocab_size": tok.get_vocab_size(), "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0 if llama else 1e6,
        "tie_word_embeddings": not llama, "torch_dtype": "float32" if llama else "bfloat16",
    }
    if llama:
        cfg |= {"bos_token_id": tok.token_to_id("<s>"), "eos_token_id": tok.token_to_id("</s>"), "attention_bias": False}
    else:
        cfg |= {"eos_token_id": tok.token_to_id("<|endoftext|>")}
    (path / "config.json").write_text(json.dumps(cfg))
    weights = _weights(cfg, np.random.default_rng(seed), qkv_bias=not llama, tied=not llama)
    if llama:
        save_file(weights, str(path / "model.safetensors"))
        return cfg, weights
    weights = {k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(path / fname))
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return cfg, {k: v.astype(np.float32) for k, v in weights.items()}


# ------------------------------------------------------------------ NumPy reference (HF semantics)
def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def hf_reference_logits(cfg: dict, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """float64 logits [T, V] of LlamaForCausalLM / Qwen2ForCausalLM for one unpadded sequence."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    d, h, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, t = d // h, cfg["rms_norm_eps"], len(ids)
    inv_freq = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    freqs = np.outer(np.arange(t), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[None], np.sin(emb)[None]  # [1, T, hd]
    x = w["model.embed_tokens.weight"][ids]
    causal = np.tril(np.ones((t, t), bool))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def lin(name: str, inp: np.ndarray, p: str = p) -> np.ndarray:
            y = inp @ w[p + name + ".weight"].T
            return y + w[p + name + ".bias"] if p + name + ".bias" in w else y

        a = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", a).reshape(t, h, hd).transpose(1, 0, 2)
        k = lin("self_attn.k_proj", a).reshape(t, kv, hd).transpose(1, 0, 2)
        v = lin("self_attn.v_proj", a).reshape(t, kv, hd).transpose(1, 0, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = np.repeat(k, h // kv, axis=0), np.repeat(v, h // kv, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        s = np.where(causal, s, -np.inf)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = (pr @ v).transpose(1, 0, 2).reshape(t, h * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        m = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = m @ w[p + "mlp.gate_proj.weight"].T
        u = m @ w[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
    x = _rms(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(data=2, fsdp=2, tensor=2)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_import_matches_numpy_reference(tmp_path, mesh, kind):
    cfg, weights = write_checkpoint(tmp_path / kind, kind)
    hf = import_hf(tmp_path / kind, mesh)
    assert hf.config.qkv_bias == (kind == "qwen2")
    assert hf.config.tie_embeddings == (kind == "qwen2")
    assert hf.add_bos == (kind == "llama")
    text = "Which routing protocol uses hop count? 以太网交换机"
    ids = hf.tokenizer.encode(text, add_bos=hf.add_bos)
    assert hf.tokenizer.decode(ids) == text
    ours = np.asarray(hf.model(jax.numpy.asarray([ids])))[0]
    ref = hf_reference_logits(cfg, weights, ids)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5 * np.abs(ref).max(), rtol=0)
    # the greedy next tokens agree as well
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.95


def test_params_are_sharded_by_the_rules(tmp_path, mesh):
    write_checkpoint(tmp_path / "m", "llama")
    model = import_hf(tmp_path / "m", mesh).model
    embed = model.embed[...]
    assert embed.sharding.spec == spec_for_shape(("vocab", "embed"), embed.shape, mesh)
    assert embed.sharding.spec[1] == "fsdp"  # embed dim 32 divides over fsdp=2
    q = model.layers[0].attn.q[...]
    assert q.sharding.spec == spec_for_shape(("embed", "heads", "head_dim"), q.shape, mesh)
    assert q.addressable_shards[0].data.shape == (16, 2, 8)  # split over fsdp and tensor
    assert len(embed.sharding.device_set) == 8


def test_sharded_index_and_bf16_load_without_mesh(tmp_path):
    cfg, weights = write_checkpoint(tmp_path / "q", "qwen2", seed=3)
    assert (tmp_path / "q" / "model.safetensors.index.json").exists()
    hf = import_hf(tmp_path / "q")
    ids = hf.tokenizer.encode("A trunk port carries VLANs")
    ours = np.asarray(hf.model(jax.numpy.asarray([ids])))[0]
    ref = hf_reference_logits(cfg, weights, ids)
    np.testing.assert_allclose(ours, ref, atol=2e-5 * np.abs(ref).max(), rtol=0)


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"hidden_size": 64}, "does not fit parameter"),
    ],
)
def test_config_errors_are_clear(tmp_path, change, message):
    write_checkpoint(tmp_path / "m", "llama")
    _edit_config(tmp_path / "m", **change)
    with pytest.raises(CheckpointError, match=message) as e:
        import_hf(tmp_path / "m")
    assert str(tmp_path / "m") in str(e.value)


def test_missing_and_extra_tensors(tmp_path):
    _, weights = write_checkpoint(tmp_path / "m", "llama")
    weights.pop("model.layers.1.mlp.up_proj.weight")
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        import_hf(tmp_path / "m")
    _, weights = write_checkpoint(tmp_path / "n", "llama")
    weights["model.layers.0.mlp.up_proj.bias"] = np.zeros(48, np.float32)
    save_file(weights, str(tmp_path / "n" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no place for"):
        import_hf(tmp_path / "n")
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        import_hf(tmp_path)


def test_harness_scores_imported_model_like_the_reference(tmp_path, mesh):
    """End to end: --model hf:<dir> through the NetEval harness equals the NumPy HF forward."""
    from eval.loglik import encode_requests
    from eval.mcq_data import MCQItem
    from eval.models import load_model
    from eval.neteval import EvalConfig, evaluate
    from eval.prompts import build_prompt, delimiter

    cfg, weights = write_checkpoint(tmp_path / "m", "llama", seed=5)
    loaded = load_model(f"hf:{tmp_path / 'm'}", mesh)
    assert loaded.add_bos
    items = [
        MCQItem("a", "Which protocol uses hop count?", ("OSPF", "RIP", "BGP"), (1,)),
        MCQItem("b", "交换机根据什么转发数据帧？", ("目的 MAC 地址", "TTL"), (0,), language="zh"),
    ]
    out = evaluate(loaded, items, EvalConfig(bootstrap=50), mesh=mesh, progress=False)
    for item, q in zip(items, out["questions"], strict=True):
        req = encode_requests(loaded.tokenizer, [build_prompt(item)], [[delimiter(item) + o for o in item.options]],
                              add_bos=True)[0]
        assert req.context[0] == loaded.tokenizer.bos_id
        want = []
        for cont in req.continuations:
            ids = req.context + cont
            logits = hf_reference_logits(cfg, weights, ids)
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            want.append(sum(logp[t - 1, ids[t]] for t in range(len(req.context), len(ids))))
        np.testing.assert_allclose(q["scores"], want, atol=1e-3)
