"""Sharded MIPS on the simulated 8-device mesh, index storage, the CLI, and BM25 + fusion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrl_desktop.mesh import make_mesh
from ranking.index import IndexCorruptError, build_index, load_index, read_corpus, save_index
from ranking.matching import DenseIndex, numpy_search
from ranking.sparse import BM25Index, hybrid_search, reciprocal_rank_fusion, simple_tokens

REPO = Path(__file__).resolve().parents[1]


def _data(n: int, d: int = 32, q: int = 37, seed: int = 0, adversarial: bool = False):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    qs = rng.standard_normal((q, d)).astype(np.float32)
    if adversarial:  # every real score < 0, so an unmasked zero padding row would win
        emb, qs = -np.abs(emb), np.abs(qs)
    return emb, qs


def _check(res, emb, qs, k):
    idx, sc = numpy_search(qs, emb, k)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.scores, sc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("shape", [(1, -1, 1), (2, 2, 2), (8, 1, 1)])
def test_sharded_search_equals_numpy(shape, exact):
    mesh = make_mesh(*shape)
    emb, qs = _data(1003)  # not divisible by 8
    index = DenseIndex(emb, mesh=mesh)
    assert index.shards == 8
    assert len(index._db.sharding.device_set) == 8
    res = index.search(qs, k=10, exact=exact)
    assert res.indices.shape == (37, 10)
    _check(res, emb, qs, 10)
    assert res.ids[0] == [str(i) for i in res.indices[0]]


@pytest.mark.parametrize("n,k", [(1003, 10), (13, 10), (5, 10), (1003, 200)])
def test_padding_rows_never_returned(n, k):
    emb, qs = _data(n, adversarial=True)
    index = DenseIndex(emb, mesh=make_mesh())
    res = index.search(qs, k=k, recall_target=0.9)
    assert res.indices.shape == (len(qs), min(k, n))
    assert (res.indices >= 0).all() and (res.indices < n).all()
    assert (res.scores < 0).all()
    _check(res, emb, qs, k)


def test_query_batching_and_single_query():
    emb, qs = _data(500, q=21)
    index = DenseIndex(emb, [f"doc{i}" for i in range(500)], mesh=make_mesh(2, 2, 2))
    full = index.search(qs, k=7, query_batch=256)
    batched = index.search(qs, k=7, query_batch=8)
    np.testing.assert_array_equal(full.indices, batched.indices)
    one = index.search(qs[3], k=7)
    np.testing.assert_array_equal(one.indices[0], full.indices[3])
    assert one.ids[0][0] == f"doc{full.indices[3][0]}"
    with pytest.raises(ValueError):
        index.search(np.zeros((2, 31), np.float32))


def test_single_device_mesh():
    emb, qs = _data(100)
    index = DenseIndex(emb, mesh=make_mesh(devices=jax.devices()[:1]))
    assert index.shards == 1
    _check(index.search(qs, 5), emb, qs, 5)


def test_save_load_roundtrip(tmp_path):
    emb, qs = _data(301)
    ids = [f"id-{i}" for i in range(301)]
    save_index(tmp_path / "idx", emb, ids, {"note": "x"})
    got, got_ids, manifest = load_index(tmp_path / "idx")
    np.testing.assert_array_equal(got, emb)
    assert got_ids == ids and manifest["count"] == 301 and manifest["metadata"]["note"] == "x"
    index = DenseIndex.load(tmp_path / "idx")
    res = index.search(qs, 3)
    assert res.ids[0] == [ids[j] for j in numpy_search(qs[:1], emb, 3)[0][0]]


def _zarr_chunks(d: Path) -> list[Path]:
    return [
        p for p in (d / "embeddings.zarr").rglob("*") if p.is_file() and not p.name.startswith(".")
    ]


def test_corrupt_or_partial_index_detected(tmp_path):
    emb, _ = _data(50)
    ids = [str(i) for i in range(50)]

    d = save_index(tmp_path / "no_manifest", emb, ids)
    (d / "manifest.json").unlink()
    with pytest.raises(IndexCorruptError, match="did not finish"):
        DenseIndex.load(d)

    d = save_index(tmp_path / "lost_chunk", emb, ids)
    chunks = _zarr_chunks(d)
    assert chunks
    chunks[0].unlink()  # tensorstore would silently read the fill value
    with pytest.raises(IndexCorruptError, match="checksum"):
        load_index(d)

    d = save_index(tmp_path / "flipped", emb, ids)
    chunk = _zarr_chunks(d)[0]
    raw = bytearray(chunk.read_bytes())
    raw[10] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError, match="checksum"):
        load_index(d)

    d = save_index(tmp_path / "ids", emb, ids)
    (d / "ids.json").write_text(json.dumps(ids[:-1]))
    with pytest.raises(IndexCorruptError):
        load_index(d)

    d = save_index(tmp_path / "half_manifest", emb, ids)
    (d / "manifest.json").write_text('{"format": "pistis-dense')
    with pytest.raises(IndexCorruptError, match="not valid JSON"):
        load_index(d)


class _HashEncoder:
    """Deterministic fake encoder: fast, for storage/streaming tests."""

    dim = 16
    max_length = 8

    def encode(self, texts):
        out = np.stack(
            [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(16) for t in texts]
        )
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_build_index_streams_blocks(tmp_path):
    corpus = tmp_path / "c.jsonl"
    rows = [{"id": i * 7, "text": f"document number {i}"} for i in range(23)]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    fake = _HashEncoder()
    out = build_index(corpus, tmp_path / "idx", fake, block_docs=5, progress=False)
    emb, ids, manifest = load_index(out)
    assert ids == [str(i * 7) for i in range(23)]
    np.testing.assert_allclose(emb, fake.encode([r["text"] for r in rows]), atol=1e-6)
    assert manifest["metadata"]["corpus"] == str(corpus)


def test_read_corpus_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(ValueError, match="duplicate id"):
        read_corpus(p)
    p.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="'id' and 'text'"):
        read_corpus(p)
    p.write_text('{"id": 1, "text": "a"\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not valid JSON \(Expecting ',' delimiter at column 22\)"):
        read_corpus(p)
    p.write_text('{"id": null, "text": "a"}\n')
    with pytest.raises(ValueError, match=r":1: 'id' must be a non-empty string or an integer"):
        read_corpus(p)
    with pytest.raises(FileNotFoundError, match="no corpus file at"):
        read_corpus(tmp_path / "missing.jsonl")
    p.write_bytes('\ufeff{"id": 1, "text": "a"}\n'.encode())  # a byte-order mark is fine
    assert read_corpus(p) == (["1"], ["a"])


def test_cli_builds_searchable_index(tmp_path):
    docs = {
        "ssh": "SSH servers listen on TCP port 22 by default.",
        "ospf": "OSPF is a link-state interior gateway routing protocol.",
        "rename": "To rename a file, right-click it and choose Rename.",
        "excel": "Type a value into a spreadsheet cell and press Enter.",
        "cook": "Simmer the tomato sauce for twenty minutes.",
    }
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "ranking.index",
        f"--corpus={corpus}",
        f"--out={tmp_path / 'idx'}",
        "--bm25",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "indexed 5 docs" in proc.stdout

    from jaxrl_desktop.encoder import SentenceEncoder

    index = DenseIndex.load(tmp_path / "idx")
    res = index.search_texts(
        ["Which port does SSH use?", "how do I change a file's name", "cooking pasta sauce"],
        SentenceEncoder.from_pretrained(),
        k=2,
    )
    assert [r[0] for r in res.ids] == ["ssh", "rename", "cook"]
    bm25 = BM25Index.load(tmp_path / "idx" / "bm25")
    assert bm25.search(["link-state routing"], 1).ids[0] == ["ospf"]


def test_bm25_search_and_cjk():
    texts = [
        "a cat sat on the mat",
        "dogs chase cats",
        "the router default gateway",
        "路由器的默认网关是什么",
    ]
    bm = BM25Index(texts, ["a", "b", "c", "d"])
    res = bm.search(["cat mat", "默认网关", "default gateway"], 2)
    assert [r[0] for r in res.ids] == ["a", "d", "c"]
    assert res.scores[0, 0] > 0 and res.scores[0, 1] == 0
    assert simple_tokens("默认 Gateway!") == ["默", "认", "gateway"]
    np.testing.assert_allclose(bm.scores("cat mat"), [res.scores[0, 0], 0, 0, 0], rtol=1e-6)


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=10)
    expect = {"a": 1 / 11 + 1 / 12, "b": 1 / 12, "c": 1 / 13 + 1 / 11}
    assert [d for d, _ in fused] == sorted(expect, key=lambda d: -expect[d])
    for d, s in fused:
        assert s == pytest.approx(expect[d])
    assert reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0, 2.0], top_k=1) == [
        ("b", pytest.approx(2 / 61))
    ]


def test_hybrid_search_drops_zero_bm25_hits():
    texts = ["alpha beta", "gamma delta", "epsilon"]
    bm = BM25Index(texts, ["x", "y", "z"])
    dense = DenseIndex(np.eye(3, dtype=np.float32), ["x", "y", "z"], mesh=make_mesh())
    d = dense.search(np.array([[0, 0, 1.0]], np.float32), 1)
    s = bm.search(["gamma"], 3)
    assert s.ids[0][0] == "y" and len(s.ids[0]) == 3  # "x" and "z" come back with score 0
    fused = hybrid_search(d, s, top_k=3)[0]
    assert fused == reciprocal_rank_fusion([["z"], ["y"]], top_k=3)
