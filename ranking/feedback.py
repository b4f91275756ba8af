"""List-wide user feedback (copy / regenerate / dislike) from a JSONL log, turned into listwise labels.

One event per line::

    {"query": "how do I ...", "shown": ["doc-17", "doc-3", "doc-9"], "feedback": "copy",
     "id": "evt-1", "ts": 1730000000.0}

``shown`` lists the demonstration ids in the order they were shown (prompt order); the feedback
applies to the whole list. ``id`` (optional) de-duplicates events; ``ts`` is optional; other fields
are kept in ``extra``.

:class:`FeedbackStore` ingests logs incrementally: it remembers how far each log was read, so a
growing log is only read from where it stopped; an incomplete last line (a writer mid-append) is
left for the next call. A malformed line raises :class:`FeedbackFormatError` naming the file and
line, AFTER everything before it has been committed (with ``errors="skip"`` the line is reported
and skipped). With a ``path`` the store is persisted by atomic replace after every ingest, so
nothing already ingested is ever lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ranking.listwise import SOURCE_FEEDBACK, ListwiseData

FEEDBACK_VALUES: dict[str, float] = {"copy": 1.0, "regenerate": -0.5, "dislike": -1.0}
REQUIRED = ("query", "shown", "feedback")
STORE_FORMAT = "pistis-feedback-store"


class FeedbackFormatError(ValueError):
    """A malformed feedback row; the message starts with ``file:line:``."""

    def __init__(self, path: str, line: int, what: str):
        super().__init__(f"{path}:{line}: {what}")
        self.path, self.line, self.what = path, line, what


@dataclasses.dataclass(frozen=True)
class FeedbackEvent:
    query: str
    shown: tuple[str, ...]
    feedback: str
    id: str | None = None
    ts: float | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def value(self) -> float:
        return FEEDBACK_VALUES[self.feedback]

    @property
    def key(self) -> str:
        """De-duplication key: the event id, else a hash of the whole row."""
        if self.id is not None:
            return f"id:{self.id}"
        blob = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)
        return "sha:" + hashlib.sha256(blob.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"query": self.query, "shown": list(self.shown), "feedback": self.feedback}
        if self.id is not None:
            row["id"] = self.id
        if self.ts is not None:
            row["ts"] = self.ts
        row.update(dict(self.extra))
        return row


def parse_event(row: Any, path: str = "<row>", line: int = 0) -> FeedbackEvent:
    """Validate one decoded JSON row; raises :class:`FeedbackFormatError` naming what is wrong."""

    def fail(what: str) -> FeedbackFormatError:
        return FeedbackFormatError(path, line, what)

    if not isinstance(row, dict):
        raise fail(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise fail(f"missing field(s) {missing} (required: {list(REQUIRED)})")
    query = row["query"]
    if not isinstance(query, str) or not query.strip():
        raise fail("field 'query' must be a non-empty string")
    shown = row["shown"]
    if not isinstance(shown, list) or not shown:
        raise fail("field 'shown' must be a non-empty list of document ids")
    ids: list[str] = []
    for j, d in enumerate(shown):
        if isinstance(d, bool) or not isinstance(d, str | int) or (isinstance(d, str) and not d):
            raise fail(f"field 'shown'[{j}] must be a non-empty string or an integer id, got {d!r}")
        ids.append(str(d))
    if len(set(ids)) != len(ids):
        raise fail("field 'shown' repeats a document id")
    fb = row["feedback"]
    if not isinstance(fb, str) or fb not in FEEDBACK_VALUES:
        raise fail(f"field 'feedback' must be one of {sorted(FEEDBACK_VALUES)}, got {fb!r}")
    eid = row.get("id")
    if eid is not None and (isinstance(eid, bool) or not isinstance(eid, str | int)):
        raise fail(f"field 'id' must be a string or an integer, got {eid!r}")
    ts = row.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not _finite(ts)):
        raise fail(f"field 'ts' must be a finite number, got {str(ts)[:40]}")
    try:  # the key hash and the store (UTF-8 JSON) need real Unicode text
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = next((k for k in row if _surrogate(k) or _surrogate(row[k])), "?")
        raise fail(f"field {bad!r} is not valid Unicode text (lone surrogate {e.object[e.start]!r})") from None
    extra = tuple(sorted((k, v) for k, v in row.items() if k not in (*REQUIRED, "id", "ts")))
    return FeedbackEvent(query, tuple(ids), fb, None if eid is None else str(eid),
                         None if ts is None else float(ts), extra)


def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def _surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_line(text: str, path: str = "<line>", line: int = 0) -> FeedbackEvent | None:
    """One log line -> event (``None`` for a blank line)."""
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise FeedbackFormatError(path, line, f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise FeedbackFormatError(path, line, "JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise FeedbackFormatError(path, line, f"not valid JSON ({str(e)[:120]})") from None
    return parse_event(row, path, line)


@dataclasses.dataclass
class IngestReport:
    added: int = 0
    duplicates: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    lines_read: int = 0


@dataclasses.dataclass
class _Cursor:
    offset: int = 0
    line: int = 0
    head: str = ""  # sha256 of the first bytes read: detects a replaced (rotated) log


def _head(data: bytes, offset: int) -> str:
    return hashlib.sha256(data[: min(offset, 4096)]).hexdigest()


class FeedbackStore:
    """Append-only, de-duplicated feedback events; optionally persisted at ``path`` (JSON)."""

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.events: list[FeedbackEvent] = []
        self._keys: set[str] = set()
        self._cursors: dict[str, _Cursor] = {}
        if self.path is not None and self.path.exists():
            self._load()

    def __len__(self) -> int:
        return len(self.events)

    def add(self, event: FeedbackEvent) -> bool:
        """Add one event; False if an event with the same key is already stored."""
        if event.key in self._keys:
            return False
        self._keys.add(event.key)
        self.events.append(event)
        return True

    def ingest(self, log_path: str | Path, errors: Literal["raise", "skip"] = "raise") -> IngestReport:
        """Read new complete lines of ``log_path`` (from where the last call stopped)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        name = str(Path(log_path))
        try:
            data = Path(log_path).read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"cannot read feedback log {name}: {e.strerror or e}") from e
        cur = self._cursors.setdefault(name, _Cursor())
        if cur.offset > len(data) or (cur.offset and _head(data, cur.offset) != cur.head):
            cur.offset, cur.line = 0, 0  # truncated or replaced log: read it again (duplicates are dropped)
        report = IngestReport()
        try:
            pos = cur.offset
            while True:
                end = data.find(b"\n", pos)
                if end < 0:
                    break  # no newline yet: a line still being written
                line_no = cur.line + 1
                raw = data[pos:end]
                try:
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise FeedbackFormatError(name, line_no, f"not UTF-8 ({e.reason} at byte {e.start})") from None
                    event = parse_line(text, name, line_no)
                except FeedbackFormatError as e:
                    if errors == "raise":
                        raise
                    report.errors.append(str(e))
                    event = None
                if event is not None:
                    if self.add(event):
                        report.added += 1
                    else:
                        report.duplicates += 1
                pos = end + 1
                cur.offset, cur.line = pos, line_no
                report.lines_read += 1
        finally:
            cur.head = _head(data, cur.offset)
            self.save()  # commit everything read so far, also when a bad line stops the ingest
        return report

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": STORE_FORMAT,
            "events": [e.to_json() for e in self.events],
            "cursors": {k: dataclasses.asdict(v) for k, v in self._cursors.items()},
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(blob, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _load(self) -> None:
        try:
            blob = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"feedback store {self.path} is unreadable ({e}); it is left untouched") from e
        if not isinstance(blob, dict) or blob.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.path} is not a feedback store ({STORE_FORMAT})")
        for n, row in enumerate(blob.get("events", []), 1):
            self.add(parse_event(row, str(self.path), n))
        self._cursors = {k: _Cursor(**v) for k, v in blob.get("cursors", {}).items()}


# ------------------------------------------------------------------------- to labels
CandidateFn = Callable[[Sequence[str], Sequence[Sequence[int]]], Any]


def feedback_lists(
    events: Sequence[FeedbackEvent],
    id_to_index: dict[str, int],
    candidate_fn: CandidateFn,
    on_unknown: Literal["raise", "skip"] = "skip",
) -> tuple[ListwiseData | None, list[str]]:
    """Group events by query and build listwise labels: one shown list per event, reward = feedback value.

    ``candidate_fn(queries, include)`` must return :class:`~ranking.candidates.Candidates` whose
    lists contain the ``include`` pool indices (e.g. ``CandidateGenerator.generate``). Events naming
    unknown document ids are skipped (listed in the returned notes) or raise.
    """
    notes: list[str] = []
    by_query: dict[str, list[tuple[FeedbackEvent, list[int]]]] = {}
    for ev in events:
        unknown = [d for d in ev.shown if d not in id_to_index]
        if unknown:
            msg = f"feedback for {ev.query!r}: unknown document ids {unknown[:5]}"
            if on_unknown == "raise":
                raise KeyError(msg)
            notes.append(msg + " (skipped)")
            continue
        by_query.setdefault(ev.query, []).append((ev, [id_to_index[d] for d in ev.shown]))
    if not by_query:
        return None, notes
    queries = list(by_query)
    include = [sorted({i for _, shown in by_query[q] for i in shown}) for q in queries]
    cands = candidate_fn(queries, include)
    m = max(len(v) for v in by_query.values())
    k = max(len(s) for v in by_query.values() for _, s in v)
    orders = np.full((len(queries), m, k), -1, np.int32)
    rewards = np.zeros((len(queries), m), np.float32)
    mask = np.zeros((len(queries), m), bool)
    for qi, q in enumerate(queries):
        pos = {int(p): j for j, p in enumerate(cands.indices[qi]) if p >= 0}
        for j, (ev, shown) in enumerate(by_query[q]):
            orders[qi, j, : len(shown)] = [pos[i] for i in shown]
            rewards[qi, j] = ev.value
            mask[qi, j] = True
    data = ListwiseData(
        query_emb=cands.query_emb, item_emb=cands.item_emb, dense=cands.dense, prerank=cands.prerank,
        where=cands.where, orders=orders, rewards=rewards, list_mask=mask,
        source=np.full((len(queries), m), SOURCE_FEEDBACK, np.int8), item_ids=cands.indices,
        queries=queries,
    )
    return data, notes
