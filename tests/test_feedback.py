"""Feedback log ingestion: clear errors with file:line, incremental reads, nothing stored is lost."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranking.candidates import Candidates
from ranking.feedback import (
    FEEDBACK_VALUES,
    FeedbackFormatError,
    FeedbackStore,
    feedback_lists,
    parse_line,
)
from ranking.listwise import SOURCE_FEEDBACK


def _row(i: int, fb: str = "copy", **kw) -> dict:
    return {"query": f"question {i}", "shown": [f"d{i}", f"d{i + 1}"], "feedback": fb, "id": f"e{i}", **kw}


def _write(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.mark.parametrize(
    "line,fragment",
    [
        ('{"query": "q", "shown": ["a"]', "not valid JSON"),
        ('["q", ["a"], "copy"]', "expected a JSON object"),
        ('{"shown": ["a"], "feedback": "copy"}', "missing field(s) ['query']"),
        ('{"query": "  ", "shown": ["a"], "feedback": "copy"}', "'query' must be a non-empty string"),
        ('{"query": "q", "shown": [], "feedback": "copy"}', "'shown' must be a non-empty list"),
        ('{"query": "q", "shown": "a", "feedback": "copy"}', "'shown' must be a non-empty list"),
        ('{"query": "q", "shown": ["a", null], "feedback": "copy"}', "'shown'[1]"),
        ('{"query": "q", "shown": ["a", true], "feedback": "copy"}', "'shown'[1]"),
        ('{"query": "q", "shown": ["a", "a"], "feedback": "copy"}', "repeats a document id"),
        ('{"query": "q", "shown": ["a"], "feedback": "like"}', "'feedback' must be one of"),
        ('{"query": "q", "shown": ["a"], "feedback": []}', "'feedback' must be one of"),
        ('{"query": "q", "shown": ["a"], "feedback": {"copy": 1}}', "'feedback' must be one of"),
        ('{"query": "q", "shown": ["a"], "feedback": "copy", "ts": "noon"}', "'ts' must be a finite number"),
        ('{"query": "q", "shown": ["a"], "feedback": "copy", "ts": NaN}', "'ts' must be a finite number"),
        ('{"query": "q", "shown": ["a"], "feedback": "copy", "id": [1]}', "'id' must be a string"),
    ],
)
def test_malformed_rows_name_file_line_and_field(line, fragment):
    with pytest.raises(FeedbackFormatError) as err:
        parse_line(line, "log.jsonl", 7)
    assert str(err.value).startswith("log.jsonl:7: ")
    assert fragment in str(err.value)
    assert err.value.line == 7


def test_valid_row_and_extra_fields():
    ev = parse_line(json.dumps({**_row(3, "dislike"), "user": "u1", "ts": 5}), "f", 1)
    assert ev.shown == ("d3", "d4") and ev.value == FEEDBACK_VALUES["dislike"] < 0
    assert ev.ts == 5.0 and dict(ev.extra) == {"user": "u1"}
    assert parse_line("   ", "f", 2) is None
    assert parse_line(json.dumps({"query": "q", "shown": [4, "x"], "feedback": "regenerate"})).shown == ("4", "x")


def test_error_commits_earlier_rows_then_skip_continues(tmp_path):
    log = tmp_path / "fb.jsonl"
    _write(log, [json.dumps(_row(0)), json.dumps(_row(1)), "{broken", json.dumps(_row(2))])
    store = FeedbackStore(tmp_path / "store.json")
    with pytest.raises(FeedbackFormatError, match=r"fb.jsonl:3: not valid JSON"):
        store.ingest(log)
    assert [e.id for e in store.events] == ["e0", "e1"]
    assert [e.id for e in FeedbackStore(tmp_path / "store.json").events] == ["e0", "e1"]  # on disk too
    with pytest.raises(FeedbackFormatError, match=":3:"):  # still stuck on the same line
        store.ingest(log)
    report = store.ingest(log, errors="skip")
    assert report.added == 1 and len(report.errors) == 1 and ":3:" in report.errors[0]
    assert [e.id for e in FeedbackStore(tmp_path / "store.json").events] == ["e0", "e1", "e2"]


def test_incremental_partial_lines_duplicates_and_rotation(tmp_path):
    log = tmp_path / "fb.jsonl"
    store_path = tmp_path / "s" / "store.json"
    store = FeedbackStore(store_path)
    first = json.dumps(_row(0))
    half = json.dumps(_row(1))
    log.write_text(first + "\n" + half[:10], encoding="utf-8")  # a writer is mid-append
    assert store.ingest(log).added == 1
    with open(log, "a", encoding="utf-8") as f:
        f.write(half[10:] + "\n" + json.dumps(_row(0)) + "\n")  # completes row 1, repeats id e0
    rep = store.ingest(log)
    assert (rep.added, rep.duplicates) == (1, 1)
    assert store.ingest(log).lines_read == 0  # nothing new
    # a new process resumes from the persisted cursor
    again = FeedbackStore(store_path)
    assert again.ingest(log).lines_read == 0 and len(again) == 2
    # rotated log (replaced by a shorter / different file): read from the start, no duplicates
    _write(log, [json.dumps(_row(1)), json.dumps(_row(5))])
    rep = again.ingest(log)
    assert (rep.added, rep.duplicates) == (1, 1)
    assert [e.id for e in again.events] == ["e0", "e1", "e5"]


def test_unreadable_store_is_not_overwritten(tmp_path):
    p = tmp_path / "store.json"
    p.write_text("{half a store")
    with pytest.raises(ValueError, match="unreadable"):
        FeedbackStore(p)
    assert p.read_text() == "{half a store"
    with pytest.raises(FileNotFoundError, match="cannot read feedback log"):
        FeedbackStore().ingest(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------ fuzzing
_valid = st.builds(
    lambda i, fb, n: json.dumps({"query": f"q{i}", "shown": [f"doc{j}" for j in range(n)],
                                 "feedback": fb, "id": f"id{i}"}),
    st.integers(0, 10**9), st.sampled_from(sorted(FEEDBACK_VALUES)), st.integers(1, 4),
)
_garbage = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1)
    .filter(lambda s: s.strip() != ""),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["query", "shown", "feedback", "ts", "id", "x"]),
                                          st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                                    st.lists(st.integers(), max_size=3)))),
    st.just('{"query": "q", "shown": ["a"], "feedback": "copy"'),
    st.just("[1, 2, 3]"),
)


def _is_valid(line: str) -> bool:
    try:
        return parse_line(line) is not None
    except FeedbackFormatError:
        return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(_valid, _garbage), min_size=1, max_size=12))
def test_fuzz_ingest_keeps_every_valid_row(tmp_path_factory, lines):
    d = tmp_path_factory.mktemp("fuzz")
    log = d / "fb.jsonl"
    _write(log, lines)
    keys = [parse_line(line).key if _is_valid(line) else None for line in lines]
    bad_lines = [n for n, k in enumerate(keys, 1) if k is None]
    first_bad = bad_lines[0] if bad_lines else len(lines) + 1

    # raise mode: everything before the first bad line is stored (and persisted), then a clear error
    store = FeedbackStore(d / "store.json")
    try:
        store.ingest(log)
        assert not bad_lines
    except FeedbackFormatError as e:
        assert e.line == first_bad
        assert str(e).startswith(f"{log}:{first_bad}: ")
    assert [e.key for e in store.events] == list(dict.fromkeys(keys[: first_bad - 1]))
    # skip mode, in a new process: nothing lost or duplicated, every bad line reported once, in order
    rep = FeedbackStore(d / "store.json").ingest(log, errors="skip")
    assert [e.key for e in FeedbackStore(d / "store.json").events] == list(
        dict.fromkeys(k for k in keys if k is not None)
    )
    assert len(rep.errors) == len(bad_lines)
    for n, msg in zip(bad_lines, rep.errors, strict=True):
        assert msg.startswith(f"{log}:{n}: ")


# ------------------------------------------------------------------ to listwise labels
def test_feedback_lists_build_orders_and_rewards():
    ids = {f"d{i}": i for i in range(10)}
    events = [parse_line(json.dumps(r)) for r in (
        {"query": "a", "shown": ["d3", "d1"], "feedback": "copy"},
        {"query": "a", "shown": ["d1", "d3", "d5"], "feedback": "dislike"},
        {"query": "b", "shown": ["d9"], "feedback": "regenerate"},
        {"query": "c", "shown": ["d2", "nope"], "feedback": "copy"},
    )]
    calls = {}

    def candidate_fn(queries, include):
        calls["include"] = include
        q, width, e = len(queries), 6, 4
        idx = np.full((q, width), -1, np.int64)
        for i, inc in enumerate(include):
            pool = [*inc, *[j for j in range(10) if j not in inc]][:width]
            idx[i, : len(pool)] = pool[::-1]  # any order: positions must be looked up
        return Candidates(idx, np.zeros((q, width), np.float32), np.zeros((q, width), np.float32),
                          idx >= 0, np.zeros((q, width, e), np.float32), np.zeros((q, e), np.float32),
                          np.zeros((q, width, 10), np.float32))

    data, notes = feedback_lists(events, ids, candidate_fn)
    assert len(notes) == 1 and "nope" in notes[0]
    assert data.queries == ["a", "b"] and calls["include"] == [[1, 3, 5], [9]]
    assert (data.source[data.list_mask] == SOURCE_FEEDBACK).all()
    shown = [[int(data.item_ids[0, p]) for p in data.orders[0, j] if p >= 0] for j in range(2)]
    assert shown == [[3, 1], [1, 3, 5]]
    assert data.rewards[0, :2].tolist() == [FEEDBACK_VALUES["copy"], FEEDBACK_VALUES["dislike"]]
    assert data.list_mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(KeyError, match="unknown document ids"):
        feedback_lists(events, ids, candidate_fn, on_unknown="raise")


def test_non_utf8_line_is_reported(tmp_path):
    log = tmp_path / "fb.jsonl"
    log.write_bytes(json.dumps(_row(0)).encode() + b"\n\xff\xfe{}\n" + json.dumps(_row(1)).encode() + b"\n")
    store = FeedbackStore()
    rep = store.ingest(log, errors="skip")
    assert rep.added == 2 and len(rep.errors) == 1
    assert rep.errors[0].startswith(f"{log}:2: not UTF-8")
