"""Dense index storage: embed a JSONL corpus, write embeddings (zarr via tensorstore) + ids + manifest.

Layout of an index folder::

    embeddings.zarr/   float32 [N, D], L2-normalised rows
    ids.json           the N document ids, in row order
    texts.json         the N document texts (written by ``build_index``; not by ``save_index``)
    manifest.json      counts, dim, model, checksums; written last, so its absence = partial build

CLI: ``python -m ranking.index --corpus corpus.jsonl --out DIR``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "pistis-dense-index"
VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.zarr"
IDS = "ids.json"
TEXTS = "texts.json"


class IndexCorruptError(RuntimeError):
    """The index folder is missing files, was only partially written, or fails its checksums."""


def read_corpus(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a corpus -> (ids, texts).

    ``.txt``: one document per non-empty line, id = its line number. Otherwise JSONL of
    ``{"id": ..., "text": ...}`` objects (``id`` a string or integer, unique; ``text`` a string).
    Errors name the file and line (``corpus.jsonl:7: ...``); an empty corpus is an error.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no corpus file at {p}")
    if not p.is_file():
        raise ValueError(f"{p} is not a file (expected a .jsonl or .txt corpus)")
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    txt = p.suffix.lower() == ".txt"
    with open(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{p}:{n}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if n == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark
            if not line.strip():
                continue
            if txt:
                ids.append(str(n))
                texts.append(line.rstrip("\r\n"))
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise ValueError(f"{p}:{n}: JSON nested too deeply") from None
            if not isinstance(row, dict) or "id" not in row or "text" not in row:
                raise ValueError(f"{p}:{n}: expected an object with 'id' and 'text'")
            doc_id, text = row["id"], row["text"]
            if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
                raise ValueError(f"{p}:{n}: 'id' must be a non-empty string or an integer, got {doc_id!r}")
            if not isinstance(text, str):
                raise ValueError(f"{p}:{n}: 'text' must be a string, got {type(text).__name__}")
            doc_id = str(doc_id)
            if doc_id in seen:
                raise ValueError(f"{p}:{n}: duplicate id {doc_id!r}")
            seen.add(doc_id)
            ids.append(doc_id)
            texts.append(text)
    if not ids:
        raise ValueError(f"{p}: the corpus holds no documents")
    return ids, texts


def _zarr_spec(path: Path) -> dict[str, Any]:
    return {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}}


class IndexWriter:
    """Streams embedding blocks into ``out_dir`` in row order; ``close`` writes the manifest."""

    def __init__(self, out_dir: str | Path, count: int, dim: int, chunk_rows: int = 4096):
        import tensorstore as ts

        if count <= 0:
            raise ValueError("cannot build an index over an empty corpus")
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # An interrupted rebuild must not look complete.
        (self.dir / MANIFEST).unlink(missing_ok=True)
        spec = _zarr_spec(self.dir / EMBEDDINGS)
        spec["metadata"] = {
            "dtype": "<f4",
            "shape": [count, dim],
            "chunks": [min(chunk_rows, count), dim],
            "compressor": None,
        }
        self.store = ts.open(spec, create=True, delete_existing=True).result()
        self.count, self.dim, self.rows = count, dim, 0
        self.sha = hashlib.sha256()

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"block shape {block.shape} does not match dim {self.dim}")
        if self.rows + len(block) > self.count:
            raise ValueError("more rows written than declared")
        self.store[self.rows : self.rows + len(block)].write(block).result()
        self.sha.update(block.tobytes())
        self.rows += len(block)

    def close(self, ids: Sequence[str], metadata: dict[str, Any] | None = None) -> Path:
        if self.rows != self.count or len(ids) != self.count:
            raise ValueError(f"wrote {self.rows} rows and {len(ids)} ids, expected {self.count}")
        ids_bytes = json.dumps(list(ids), ensure_ascii=False).encode("utf-8")
        (self.dir / IDS).write_bytes(ids_bytes)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "count": self.count,
            "dim": self.dim,
            "dtype": "float32",
            "embeddings_sha256": self.sha.hexdigest(),
            "ids_sha256": hashlib.sha256(ids_bytes).hexdigest(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metadata": metadata or {},
        }
        tmp = self.dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        os.replace(tmp, self.dir / MANIFEST)
        return self.dir


def save_index(
    out_dir: str | Path,
    embeddings: np.ndarray,
    ids: Sequence[str],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write an in-memory ``[N, D]`` embedding matrix and its ids as an index folder."""
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got {embeddings.shape}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    w = IndexWriter(out_dir, len(embeddings), embeddings.shape[1])
    w.write(embeddings)
    return w.close(list(ids), metadata)


def load_index(
    index_dir: str | Path, verify: bool = True
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Read an index folder -> (embeddings [N, D] float32, ids, manifest).

    Raises ``IndexCorruptError`` if the manifest is absent (partial build), files are missing, shapes
    disagree, or (with ``verify``) a checksum does not match.
    """
    import tensorstore as ts

    d = Path(index_dir)
    hint = f"rebuild it with `python -m ranking.index --corpus CORPUS.jsonl --out {d}`"
    if not d.is_dir():
        raise FileNotFoundError(f"no index folder at {d}")
    if not (d / MANIFEST).exists():
        raise IndexCorruptError(f"{d} has no {MANIFEST}: the index build did not finish; {hint}")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except json.JSONDecodeError as e:
        raise IndexCorruptError(f"{d / MANIFEST} is not valid JSON ({e}); {hint}") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise IndexCorruptError(
            f"{d} is not a {FORMAT} v{VERSION} index: {manifest.get('format')!r}"
        )
    try:
        ids_bytes = (d / IDS).read_bytes()
        ids = json.loads(ids_bytes)
        store = ts.open(_zarr_spec(d / EMBEDDINGS), open=True).result()
        emb = np.asarray(store.read().result(), dtype=np.float32)
    except (OSError, ValueError) as e:
        raise IndexCorruptError(f"{d}: cannot read index files ({e}); {hint}") from e
    n, dim = manifest["count"], manifest["dim"]
    if emb.shape != (n, dim) or len(ids) != n:
        raise IndexCorruptError(
            f"{d}: embeddings {emb.shape} / {len(ids)} ids do not match manifest ({n}, {dim}); {hint}"
        )
    if verify:
        if hashlib.sha256(ids_bytes).hexdigest() != manifest["ids_sha256"]:
            raise IndexCorruptError(f"{d}: {IDS} checksum mismatch; {hint}")
        if (
            hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()
            != manifest["embeddings_sha256"]
        ):
            raise IndexCorruptError(
                f"{d}: embeddings checksum mismatch (missing or damaged chunks); {hint}"
            )
    return emb, ids, manifest


def _blocks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def build_index(
    corpus: str | Path,
    out_dir: str | Path,
    encoder=None,
    block_docs: int = 2048,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    docs: tuple[Sequence[str], Sequence[str]] | None = None,
) -> Path:
    """Embed a corpus block by block with ``encoder`` (default: bundled MiniLM) and save it.

    ``docs``: the corpus' ``(ids, texts)`` if already read with :func:`read_corpus`.
    """
    ids, texts = (list(docs[0]), list(docs[1])) if docs is not None else read_corpus(corpus)
    if encoder is None:
        from jaxrl_desktop.encoder import SentenceEncoder

        encoder = SentenceEncoder.from_pretrained()
    writer = IndexWriter(out_dir, len(texts), encoder.dim)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc="embed corpus", unit="doc")
    per_batch = bar is not None and "progress" in inspect.signature(encoder.encode).parameters
    for sl in _blocks(len(texts), block_docs):
        if per_batch:
            writer.write(encoder.encode(texts[sl], progress=bar))  # bar advances per batch
        else:
            writer.write(encoder.encode(texts[sl]))
            if bar is not None:
                bar.update(sl.stop - sl.start)
    if bar is not None:
        bar.close()
    # The texts, so a cascade can be built from the folder without the corpus (written before the
    # manifest: a folder with a manifest is complete).
    tmp = Path(out_dir) / (TEXTS + ".tmp")
    tmp.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, Path(out_dir) / TEXTS)
    meta = {
        "corpus": str(corpus),
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "max_length": getattr(encoder, "max_length", None),
        "normalized": True,
        **(metadata or {}),
    }
    return writer.close(ids, meta)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    from ranking.cli import user_errors

    del argv
    f = flags.FLAGS
    t0 = time.perf_counter()
    with user_errors():
        ids, texts = read_corpus(f.corpus)
        out = Path(f.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        from jaxrl_desktop.encoder import SentenceEncoder

        enc = SentenceEncoder.from_pretrained(max_length=f.max_length, batch_size=f.batch_size)
    if not f.quiet:
        print(f"read {len(ids)} documents from {f.corpus}")
    out = build_index(f.corpus, out, enc, block_docs=f.block_docs, progress=not f.quiet, docs=(ids, texts))
    if f.bm25:
        from ranking.sparse import BM25Index

        BM25Index(texts, ids).save(out / "bm25")
    manifest = json.loads((out / MANIFEST).read_text())
    print(
        f"indexed {manifest['count']} docs (dim {manifest['dim']}) into {out} in {time.perf_counter() - t0:.1f}s"
    )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "corpus", None, "JSONL corpus with one {id, text} object per line, or .txt with one document "
        "per line.", required=True
    )
    flags.DEFINE_string("out", None, "Output index folder.", required=True)
    flags.DEFINE_integer("batch_size", 64, "Encoder batch size.", lower_bound=1)
    flags.DEFINE_integer("max_length", 256, "Tokenizer truncation length.", lower_bound=2, upper_bound=512)
    flags.DEFINE_integer("block_docs", 2048, "Documents embedded and written per block.", lower_bound=1)
    flags.DEFINE_bool("bm25", False, "Also build a BM25 index under OUT/bm25.")
    flags.DEFINE_bool("quiet", False, "No progress bar.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
