"""Fuzzing the learner's config overrides and the NetEval / feedback JSONL loaders (hypothesis).

Every bad input must get a clear error naming what is wrong (for files: ``file:line:`` and the
field or problem) and must not lose anything already stored. The generators label each line good
or bad (with the expected reason) themselves, so the oracle does not ask the loader under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval.mcq_data import LETTERS, DataError, load_neteval_jsonl
from jaxrl_desktop import train
from ranking.feedback import FEEDBACK_VALUES, FeedbackFormatError, FeedbackStore

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "desktop_small.py"
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------ config overrides
def parse_overrides(*overrides: str):
    """Parse ``--config.<path>=<value>`` overrides with ``jaxrl_desktop.train``'s own flag definition
    and parser, in a private FlagValues."""
    fv = flags.FlagValues()
    argv = ["train", f"--config={CONFIG}", *overrides]
    train.define_config_flag(flag_values=fv, argv=argv)
    train.parse_flags(argv, fv)
    return fv.config


def _leaves(cfg, prefix: str = "") -> dict[str, type]:
    out = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(_leaves(value, path + "."))
        else:
            out[path] = type(value)
    return out


LEAVES = _leaves(parse_overrides())
TYPED = sorted(p for p, t in LEAVES.items() if t in (int, float, bool))
STRINGS = sorted(p for p, t in LEAVES.items() if t is str)
_NEVER_A_NUMBER = "!#$%&*;<>?@[]^`{|}~"  # a value containing one of these is no int/float/bool
_printable = st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs",))
_not_a_number = st.builds(lambda a, c, b: a + c + b, st.text(_printable, max_size=8),
                          st.sampled_from(_NEVER_A_NUMBER), st.text(_printable, max_size=8))


def test_config_has_typed_and_text_fields():
    assert {"rl.group_size", "env.timeout_s", "log.plot", "workdir"} <= set(LEAVES)
    assert LEAVES["rl.group_size"] is int and LEAVES["env.timeout_s"] is float
    assert LEAVES["log.plot"] is bool and LEAVES["workdir"] is str


@FUZZ
@given(path=st.sampled_from(TYPED), value=_not_a_number)
def test_wrongly_typed_override_is_a_flag_error_naming_the_field(path, value):
    with pytest.raises(flags.IllegalFlagValueError) as err:
        parse_overrides(f"--config.{path}={value}")
    assert f"--config.{path}=" in str(err.value)  # names the field (and the value that was given)


@FUZZ
@given(path=st.sampled_from(sorted(p for p in TYPED if LEAVES[p] is int)),
       value=st.integers(-(10**12), 10**12))
def test_valid_int_override_round_trips(path, value):
    cfg = parse_overrides(f"--config.{path}={value}")
    assert cfg[path.split(".")[0]] is not None
    node = cfg
    for part in path.split("."):
        node = node[part]
    assert node == value


@FUZZ
@given(path=st.sampled_from(STRINGS), value=st.text(_printable, max_size=30))
def test_text_override_is_taken_verbatim(path, value):
    node = parse_overrides(f"--config.{path}={value}")
    for part in path.split("."):
        node = node[part]
    assert node == value


def _typo(path: str, edit: int, pos: int) -> str:
    parts = path.split(".")
    last = parts[-1]
    i = pos % len(last)
    if edit == 0:  # drop a letter
        last = last[:i] + last[i + 1:]
    elif edit == 1:  # double a letter
        last = last[:i] + last[i] + last[i:]
    else:  # change a letter
        last = last[:i] + ("x" if last[i] != "x" else "y") + last[i + 1:]
    return ".".join([*parts[:-1], last])


@FUZZ
@given(path=st.sampled_from(sorted(LEAVES)), edit=st.integers(0, 2), pos=st.integers(0, 50))
def test_unknown_key_is_a_flag_error_naming_the_override(path, edit, pos):
    wrong = _typo(path, edit, pos)
    if wrong in LEAVES or not wrong.split(".")[-1] or wrong.split(".")[-1][0].isdigit():
        return
    with pytest.raises(flags.Error) as err:
        parse_overrides(f"--config.{wrong}=1")
    assert f"--config.{wrong}" in str(err.value)


@pytest.mark.parametrize("override", ["--config.optim.2=1", "--config.=3", "--config.rl..lr=1"])
def test_malformed_override_path_is_a_flag_error(override):
    with pytest.raises(flags.Error) as err:
        parse_overrides(override)
    assert override.split("=")[0] in str(err.value)


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxrl_desktop.train", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("override, fragment", [
    ("--config.rl.group_size=eight", "invalid literal for int()"),
    ("--config.env.timeout_s=soon", "could not convert string to float"),
    ("--config.log.plot=maybe", "Non-boolean argument"),
    ("--config.bc=3", "is not a dict"),
])
def test_train_cli_rejects_a_wrongly_typed_override_in_one_line(override, fragment):
    proc = _train_cli(override)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"FATAL Flags parsing error: flag {override}: " in proc.stderr and fragment in proc.stderr


@pytest.mark.parametrize("override", ["--config.rl.group_sise=8", "--config.nope=1"])
def test_train_cli_rejects_an_unknown_key_in_one_line(override):
    proc = _train_cli(override)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-300:]
    assert f"FATAL Flags parsing error: unknown config key in {override.split('=')[0]}" in proc.stderr


# ------------------------------------------------------------------------------ NetEval JSONL
_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\u2028\u2029\x85\x0b\x0c\x1c"),
                min_size=1, max_size=20).filter(lambda s: s.strip())


@st.composite
def _question(draw, qid: str) -> dict:
    n = draw(st.integers(2, 6))
    row = {"id": qid, "question": draw(_text)}
    for letter in LETTERS[:n]:
        row[letter] = draw(_text)
    answer = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2, unique=True))
    row["answer"] = ",".join(LETTERS[i] for i in sorted(answer))
    if draw(st.booleans()):
        row["subdomain"] = draw(_text)
    if draw(st.booleans()):
        row["language"] = draw(st.sampled_from(["en", "zh", "EN", "chinese"]))
    return row


def _dump(row) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


@st.composite
def _bad_question(draw, qid: str) -> tuple[bytes, str]:
    """(line, fragment the error must contain)."""
    row = draw(_question(qid))
    kind = draw(st.sampled_from(["json", "bigint", "deep", "array", "no_question", "answer",
                                 "gap", "one_option", "language", "surrogate", "utf8", "type"]))
    if kind == "json":
        return _dump(row)[:-1], "invalid JSON"
    if kind == "bigint":
        return _dump(row)[:-1] + b', "n": ' + b"7" * 5000 + b"}", "invalid JSON"
    if kind == "deep":
        return b"[" * 100_000 + b"]" * 100_000, "invalid JSON"
    if kind == "array":
        return b"[1, 2]", "expected a JSON object"
    if kind == "no_question":
        del row["question"]
        return _dump(row), "field 'question' is missing"
    n = sum(1 for k in row if k in LETTERS)
    if kind == "answer":
        row["answer"] = LETTERS[n]
        return _dump(row), "not made of option letters"
    if kind == "gap":  # C empty, D given
        row["C"], row["D"] = "", "d"
        return _dump(row), "option 'D' given but 'C' is missing"
    if kind == "one_option":
        for letter in LETTERS[1:n]:
            del row[letter]
        row["answer"] = "A"
        return _dump(row), "needs option fields 'A' and 'B'"
    if kind == "language":
        row["language"] = "fr"
        return _dump(row), "must be en or zh"
    if kind == "surrogate":
        return _dump(row).replace(b'"question": "', b'"question": "\\ud800', 1), "not valid Unicode"
    if kind == "utf8":
        return _dump(row).replace(b'"question": "', b'"question": "\xff\xfe', 1), "not UTF-8"
    row["A"] = {"nested": 1}
    return _dump(row), "must be text"


@st.composite
def _mcq_file(draw):
    """Lines (bytes), the expected (id, answers) of the good ones, and the first bad line."""
    lines, good, first_bad = [], [], None
    for i in range(draw(st.integers(1, 8))):
        qid = f"q{i}"
        pick = draw(st.sampled_from(["good", "good", "blank", "bad", "dup"]))
        if pick == "blank":
            lines.append(draw(st.sampled_from([b"", b"   ", b"\r", b"\t "])))
        elif pick == "bad":
            line, fragment = draw(_bad_question(qid))
            lines.append(line)
            if first_bad is None:
                first_bad = (len(lines), fragment)
        else:
            row = draw(_question(good[0][0] if pick == "dup" and good else qid))
            lines.append(_dump(row))
            good.append((row["id"], row["answer"], len(lines)))
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    return eol.join(lines) + eol * draw(st.integers(0, 1)), good, first_bad


@FUZZ
@given(case=_mcq_file())
def test_neteval_jsonl_loads_everything_or_names_the_first_bad_line(tmp_path_factory, case):
    data, good, first_bad = case
    path = tmp_path_factory.mktemp("neteval") / "q.jsonl"
    path.write_bytes(data)
    ids = [g[0] for g in good]
    dup = next(((g[2], f"duplicate question id {g[0]!r}") for i, g in enumerate(good)
                if g[0] in ids[:i]), None)
    expected_error = first_bad or dup or (None if good else (None, "no questions found"))
    try:
        items = load_neteval_jsonl(path)
    except DataError as err:
        assert expected_error is not None, f"unexpected error: {err}"
        line, fragment = expected_error
        prefix = f"{path}:{line}: " if line else f"{path}: "
        assert str(err).startswith(prefix) and fragment in str(err), (str(err)[:300], expected_error)
    else:
        assert expected_error is None
        assert [it.id for it in items] == ids  # nothing dropped, in file order
        assert [it.answer_letters for it in items] == [g[1] for g in good]
    assert path.read_bytes() == data  # the loader never touches its input


# ------------------------------------------------------------------------------ feedback JSONL
@st.composite
def _event(draw, eid: str) -> dict:
    row = {"query": draw(_text), "feedback": draw(st.sampled_from(sorted(FEEDBACK_VALUES))),
           "shown": draw(st.lists(st.one_of(_text, st.integers(0, 10**6)), min_size=1, max_size=4,
                                  unique_by=str)),
           "id": eid}
    if draw(st.booleans()):
        row["ts"] = draw(st.one_of(st.integers(0, 2**40), st.floats(allow_nan=False, allow_infinity=False)))
    if draw(st.booleans()):
        row["note"] = draw(st.one_of(_text, st.integers(), st.none(), st.lists(st.integers(), max_size=2)))
    return row


@st.composite
def _bad_event(draw, eid: str) -> tuple[bytes, str]:
    row = draw(_event(eid))
    kind = draw(st.sampled_from(["json", "bigint", "deep", "array", "missing", "query", "shown",
                                 "repeat", "feedback", "ts_nan", "ts_big", "ts_text", "surrogate",
                                 "utf8", "id"]))
    if kind == "json":
        return _dump(row)[:-2], "not valid JSON"
    if kind == "bigint":
        return _dump(row)[:-1] + b', "n": ' + b"9" * 5000 + b"}", "not valid JSON"
    if kind == "deep":
        return b"[" * 100_000 + b"]" * 100_000, "nested too deeply"
    if kind == "array":
        return b'["query", "shown"]', "expected a JSON object"
    if kind == "missing":
        del row[draw(st.sampled_from(["query", "shown", "feedback"]))]
        return _dump(row), "missing field"
    if kind == "query":
        row["query"] = draw(st.sampled_from(["", "  ", 5, None, ["q"]]))
        return _dump(row), "field 'query'"
    if kind == "shown":
        row["shown"] = draw(st.sampled_from([[], "doc", {"a": 1}, [""], [True], [1.5]]))
        return _dump(row), "field 'shown'"
    if kind == "repeat":
        row["shown"] = [*row["shown"], row["shown"][0]]
        return _dump(row), "repeats a document id"
    if kind == "feedback":
        row["feedback"] = draw(st.sampled_from(["Copy", "like", "", 1, None]))
        return _dump(row), "field 'feedback'"
    if kind == "ts_nan":
        row["ts"] = float("nan")  # json.dumps writes NaN, which json.loads accepts
        return _dump(row), "field 'ts'"
    if kind == "ts_big":
        row.pop("ts", None)
        return _dump(row)[:-1] + b', "ts": 1' + b"0" * 400 + b"}", "field 'ts'"
    if kind == "ts_text":
        row["ts"] = "yesterday"
        return _dump(row), "field 'ts'"
    if kind == "surrogate":
        return _dump(row).replace(b'"query": "', b'"query": "\\udc80', 1), "not valid Unicode"
    if kind == "utf8":
        return _dump(row).replace(b'"query": "', b'"query": "\xc3\x28', 1), "not UTF-8"
    row["id"] = draw(st.sampled_from([True, 1.5, ["x"], {"y": 1}]))
    return _dump(row), "field 'id'"


@st.composite
def _feedback_log(draw):
    lines, good_ids, bad = [], [], []
    for i in range(draw(st.integers(1, 10))):
        pick = draw(st.sampled_from(["good", "good", "bad", "blank", "again"]))
        if pick == "blank":
            lines.append(b"   ")
            continue
        if pick == "bad":
            line, fragment = draw(_bad_event(f"e{i}"))
            lines.append(line)
            bad.append((len(lines), fragment))
            continue
        eid = good_ids[0] if pick == "again" and good_ids else f"e{i}"  # a duplicate event
        lines.append(_dump(draw(_event(eid))))
        good_ids.append(eid)
    return lines, good_ids, bad


@FUZZ
@given(case=_feedback_log())
def test_feedback_ingest_names_bad_lines_and_loses_nothing(tmp_path_factory, case):
    lines, good_ids, bad = case
    d = tmp_path_factory.mktemp("feedback")
    store_path = d / "store.json"
    # something already stored: events from an earlier log
    earlier = d / "earlier.jsonl"
    earlier.write_bytes(b"".join(_dump({"query": f"old {i}", "shown": ["d1"], "feedback": "copy",
                                        "id": f"old{i}"}) + b"\n" for i in range(3)))
    FeedbackStore(store_path).ingest(earlier)
    old = [f"id:old{i}" for i in range(3)]
    log = d / "fb.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    good_lines = [n for n, line in enumerate(lines, 1)
                  if line.strip() and n not in {b[0] for b in bad}]
    first_bad = bad[0][0] if bad else len(lines) + 1
    want_before = list(dict.fromkeys(f"id:{e}" for e, n in zip(good_ids, good_lines, strict=True)
                                     if n < first_bad))
    want_all = list(dict.fromkeys(f"id:{e}" for e in good_ids))

    # raise mode: a clear error at the first bad line; everything before it is stored on disk
    try:
        FeedbackStore(store_path).ingest(log)
        assert not bad
    except FeedbackFormatError as err:
        assert bad, f"unexpected error: {err}"
        assert err.line == first_bad and str(err).startswith(f"{log}:{first_bad}: ")
        assert bad[0][1] in str(err), (str(err)[:300], bad[0])
    assert [e.key for e in FeedbackStore(store_path).events] == old + want_before

    # skip mode (a new process would do the same): every bad line reported once, in order, with
    # what is wrong; every good event stored exactly once; the earlier events are still there
    report = FeedbackStore(store_path).ingest(log, errors="skip")
    assert len(report.errors) == len(bad)
    for (n, fragment), message in zip(bad, report.errors, strict=True):
        assert message.startswith(f"{log}:{n}: ") and fragment in message, (message[:300], n, fragment)
    assert [e.key for e in FeedbackStore(store_path).events] == old + want_all
    assert json.loads(store_path.read_text(encoding="utf-8"))["format"]  # a readable store

