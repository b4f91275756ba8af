"""CLIs and the cascade: index -> query round trip, train CLI, PistisCascade.select, clear errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    "SSH servers listen on TCP port 22 by default.",
    "OSPF is a link-state interior gateway routing protocol.",
    "To rename a file, right-click it and choose Rename.",
    "Type a value into a spreadsheet cell and press Enter.",
    "Simmer the tomato sauce for twenty minutes.",
    "BGP exchanges routes between autonomous systems over TCP port 179.",
    "Telnet sends passwords in clear text; prefer SSH for remote logins.",
    "A VLAN splits one switch into several broadcast domains.",
]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(DOCS[:4]) + "\n\n" + "\n".join(DOCS[4:]) + "\n", encoding="utf-8")
    proc = _run("ranking.index", f"--corpus={corpus}", f"--out={d / 'idx'}", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "indexed 8 docs" in proc.stdout
    return d / "idx"


@pytest.fixture(scope="module")
def encoder():
    from jaxrl_desktop.encoder import SentenceEncoder

    return SentenceEncoder.from_pretrained()


def test_index_then_query_roundtrip(index_dir):
    assert json.loads((index_dir / "texts.json").read_text()) == DOCS
    proc = _run("ranking.query", f"--index={index_dir}", "--query=which TCP port does ssh listen on",
                "-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert [r["position"] for r in rows] == [1, 2, 3]
    assert rows[0]["text"] == DOCS[0] and rows[0]["id"] == "1"  # txt corpus: id = line number
    assert len({r["pool_index"] for r in rows}) == 3
    prerank = [r["prerank"] for r in rows]
    assert prerank == sorted(prerank, reverse=True)  # fallback: pre-ranking order, best first
    table = _run("ranking.query", f"--index={index_dir}", "--query=cooking a sauce", "-k", "2")
    assert table.returncode == 0 and "pre-ranking order" in table.stdout
    assert DOCS[4] in table.stdout.splitlines()[3]


def test_query_errors_are_clear(tmp_path, index_dir):
    proc = _run("ranking.query", f"--index={tmp_path / 'missing'}", "--query=x")
    assert proc.returncode == 2 and "error: no index folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run("ranking.query", f"--index={index_dir}", "--query=x", f"--ranker={tmp_path}")
    assert proc.returncode == 2 and "not a ranker folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run("ranking.query", f"--index={index_dir}", "--query=  ")
    assert proc.returncode == 2 and "error: --query is empty" in proc.stderr
    (tmp_path / "manifest.json").write_text("{")
    proc = _run("ranking.query", f"--index={tmp_path}", "--query=x")
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_index_errors_are_clear(tmp_path):
    """Missing corpus, a bad JSONL line (file:line), bad fields, empty corpus: one line, exit 2."""
    bad = tmp_path / "bad.jsonl"
    cases = [
        (None, "error: no corpus file at"),
        ('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n', f"error: {bad}:2: not valid JSON"),
        ('{"id": "a", "text": "fine"}\n\n{"id": "b", "text": 7}\n', f"error: {bad}:3: 'text' must be a string"),
        ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', f"error: {bad}:2: duplicate id 'a'"),
        ("\n  \n", "holds no documents"),
    ]
    for content, fragment in cases:
        if content is not None:
            bad.write_text(content, encoding="utf-8")
        corpus = bad if content is not None else tmp_path / "missing.jsonl"
        proc = _run("ranking.index", f"--corpus={corpus}", f"--out={tmp_path / 'idx'}", "--quiet")
        assert proc.returncode == 2, (content, proc.stderr[-2000:])
        assert fragment in proc.stderr and "Traceback" not in proc.stderr, (content, proc.stderr[-2000:])
        assert not (tmp_path / "idx" / "manifest.json").exists()
    bad.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "\xff"}\n')
    proc = _run("ranking.index", f"--corpus={bad}", f"--out={tmp_path / 'idx'}", "--quiet")
    assert proc.returncode == 2 and f"{bad}:2: not UTF-8" in proc.stderr


def test_train_cli_errors_are_clear(tmp_path, index_dir):
    base = ("ranking.train", "--config=configs/ranker.py", f"--config.workdir={tmp_path / 'w'}",
            "--config.data.synthetic=False")
    proc = _run(*base, f"--config.data.lists={tmp_path / 'nope.npz'}")
    assert proc.returncode == 2 and f"error: config.data.lists: no file {tmp_path / 'nope.npz'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    proc = _run(*base, f"--config.data.lists={tmp_path / 'junk.npz'}")
    assert proc.returncode == 2 and "cannot read listwise data" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run(*base)
    assert proc.returncode == 2 and "no training data" in proc.stderr
    proc = _run(*base, "--config.train.loss=pairwise")
    assert proc.returncode == 2 and "config.train.loss" in proc.stderr and "Traceback" not in proc.stderr
    log = tmp_path / "fb.jsonl"
    log.write_text('{"query": "q", "shown": ["1"], "feedback": "copy"}\n{"query": "q", "shown": []}\n')
    proc = _run(*base, f"--config.data.feedback={log}", f"--config.data.index={index_dir}",
                "--config.data.feedback_errors=raise")
    assert proc.returncode == 2 and f"error: {log}:2: missing field(s) ['feedback']" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run(*base, f"--config.data.feedback={tmp_path / 'nolog.jsonl'}", f"--config.data.index={index_dir}")
    assert proc.returncode == 2 and "cannot read feedback log" in proc.stderr and "Traceback" not in proc.stderr


def test_cascade_select_fallback_and_signature(index_dir, encoder, caplog):
    from ranking.cascade import PistisCascade

    with caplog.at_level(logging.WARNING, logger="ranking.cascade"):
        cascade = PistisCascade(DOCS, encoder=encoder, n_match=6, n_prerank=4)
    assert "falls back to the pre-ranking order" in caplog.text
    picked = cascade.select("how do I log in remotely and securely", 3)
    assert len(picked) == 3 and len(set(picked)) == 3 and all(0 <= i < len(DOCS) for i in picked)
    assert picked[0] in (0, 6)
    assert len(cascade.select("routing protocol", 10)) == 4  # capped by n_prerank
    assert len(cascade.select("what is it", 2)) == 2  # stopwords only: BM25 has nothing, dense still works
    with pytest.raises(ValueError, match="k must be >= 1"):
        cascade.select("x", 0)
    # from an index folder: no re-embedding, same answer
    again = PistisCascade.from_index(index_dir, encoder=encoder, n_match=6, n_prerank=4)
    np.testing.assert_allclose(again.index.embeddings, cascade.index.embeddings, atol=1e-5)
    assert again.select("how do I log in remotely and securely", 3) == picked


@pytest.mark.slow
def test_train_cli_then_query_with_ranker(index_dir, encoder, tmp_path):
    """Lists labelled so that BGP (doc 5) is best placed LAST -> train CLI -> query --ranker."""
    from ranking.cascade import PistisCascade
    from ranking.listwise import ListwiseData

    cascade = PistisCascade.from_index(index_dir, encoder=encoder, n_match=8, n_prerank=6)
    queries = ["tcp ports of routing and remote login protocols", "which protocols use TCP",
               "secure remote access", "routing between networks"]
    cands = cascade.candidates(queries)
    rng = np.random.default_rng(0)
    m, k = 10, 3
    orders = np.full((len(queries), m, k), -1, np.int32)
    rewards = np.zeros((len(queries), m), np.float32)
    for i in range(len(queries)):
        for j in range(m):
            o = rng.choice(int(cands.where[i].sum()), k, replace=False)
            orders[i, j] = o
            rewards[i, j] = 0.0 if cands.indices[i, o[-1]] == 5 else -3.0
    data = ListwiseData(
        query_emb=cands.query_emb, item_emb=cands.item_emb, dense=cands.dense, prerank=cands.prerank,
        where=cands.where, orders=orders, rewards=rewards, list_mask=np.ones((len(queries), m), bool),
        source=np.zeros((len(queries), m), np.int8), item_ids=cands.indices, queries=queries,
    )
    lists = data.save(tmp_path / "lists.npz")
    work = tmp_path / "ranker"
    bad = _run("ranking.train", "--config=configs/ranker.py", "--config.train.stepz=3")
    assert bad.returncode == 2 and "stepz" in bad.stderr and "Traceback" not in bad.stderr
    proc = _run("ranking.train", "--config=configs/ranker.py", f"--config.workdir={work}",
                f"--config.data.lists={lists}", "--config.data.synthetic=False",
                "--config.train.steps=40", "--config.train.batch_lists=4", "--config.model.d_model=32",
                "--config.model.num_layers=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ranker saved to" in proc.stdout
    assert (work / "ranker.json").exists() and (work / "metrics.jsonl").exists()
    q = _run("ranking.query", f"--index={index_dir}", f"--ranker={work}", "--query=which protocols use TCP",
             "-k", "3", "--json", "--n_match=8", "--n_prerank=6")
    assert q.returncode == 0, q.stderr[-3000:]
    rows = json.loads(q.stdout)
    assert len(rows) == 3 and all("ranker" in r for r in rows)
    scores = [r["ranker"] for r in rows]
    assert scores == sorted(scores)  # prompt order: ascending ranker score, best last
    assert rows[-1]["pool_index"] == 5


def test_feedback_log_becomes_training_lists(index_dir, tmp_path, caplog):
    import importlib.util

    from jaxrl_desktop.mesh import make_mesh
    from ranking.listwise import SOURCE_FEEDBACK
    from ranking.train import load_training_data

    spec = importlib.util.spec_from_file_location("ranker_config", REPO / "configs" / "ranker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    log = tmp_path / "feedback.jsonl"
    rows = [
        {"query": "secure remote login", "shown": ["7", "1"], "feedback": "copy", "id": 1},
        {"query": "secure remote login", "shown": ["2", "7"], "feedback": "dislike", "id": 2},
        "not json",
        {"query": "routing", "shown": ["2", "6"], "feedback": "regenerate", "id": 3},
        {"query": "routing", "shown": ["404"], "feedback": "copy", "id": 4},
    ]
    log.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    config.workdir = str(tmp_path / "work")
    config.data.feedback, config.data.index = str(log), str(index_dir)
    config.data.n_match, config.data.n_prerank, config.data.synthetic = 8, 3, False
    with caplog.at_level(logging.WARNING):
        data, preranker = load_training_data(config, make_mesh(1, -1, 1), Path(config.workdir))
    assert f"{log}:3: not valid JSON" in caplog.text and "'404'" in caplog.text
    assert preranker is None and data.queries == ["secure remote login", "routing"]
    assert (data.source[data.list_mask] == SOURCE_FEEDBACK).all()
    ids = json.loads((index_dir / "ids.json").read_text())
    shown = [[ids[data.item_ids[0, p]] for p in data.orders[0, j] if p >= 0] for j in range(2)]
    assert shown == [["7", "1"], ["2", "7"]]
    assert data.rewards[0, :2].tolist() == [1.0, -1.0] and data.list_mask[1].tolist() == [True, False]
    assert (Path(config.workdir) / "feedback_store.json").exists()
