"""Multiple-choice question loaders: OpsEval JSON, NetEval-style JSONL and CSV.

Every loader returns a list of :class:`MCQItem`. Malformed input raises :class:`DataError` naming the
file, the line (JSONL/CSV) or item index (JSON), and the field. Multi-answer questions (answer such
as ``"B,E"``) are kept and marked ``is_multi``; nothing is dropped silently.

Formats:
  * ``opseval``: a JSON list of ``{id, type, question, choices[], answer, solution, topic[]}`` (the
    OpsEval "Wired Network" release); sub-domain = first topic, language detected from the question.
  * ``neteval_jsonl``: one object per line with ``question``, option columns ``A``, ``B``, ... (contiguous
    from A, at least two), ``answer`` (``"B"`` or ``"A,C"``), optional ``subdomain``, ``language``
    (``en``/``zh``; detected when missing) and ``id``.
  * ``neteval_csv``: the same columns as a CSV file with a header row.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FORMATS: tuple[str, ...] = ("opseval", "neteval_jsonl", "neteval_csv")
LETTERS = string.ascii_uppercase
NO_SUBDOMAIN = "(none)"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class DataError(ValueError):
    """A malformed data file; the message names the file and line/item."""


@dataclasses.dataclass(frozen=True)
class MCQItem:
    """One multiple-choice question. ``answers`` are 0-based option indices (several if multi-answer)."""

    id: str
    question: str
    options: tuple[str, ...]
    answers: tuple[int, ...]
    subdomain: str = NO_SUBDOMAIN
    language: str = "en"
    source: str = ""

    @property
    def is_multi(self) -> bool:
        return len(self.answers) > 1

    @property
    def answer_letters(self) -> str:
        return ",".join(LETTERS[i] for i in self.answers)


def detect_language(text: str) -> str:
    """``"zh"`` if the text contains any CJK ideograph, else ``"en"``."""
    return "zh" if _CJK.search(text) else "en"


def parse_answer(answer: Any, n_options: int, where: str) -> tuple[int, ...]:
    """``"B"``, ``"A,C"``, ``"A, C"`` or ``"AC"`` -> sorted unique 0-based indices (checked against ``n_options``)."""
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{where}: field 'answer' must be a non-empty string of option letters, got {answer!r}")
    letters = [c for c in answer.upper() if c not in ", ;/"]
    bad = [c for c in letters if c not in LETTERS[:n_options]]
    if bad or not letters:
        raise DataError(
            f"{where}: answer {answer!r} is not made of option letters {LETTERS[0]}-{LETTERS[n_options - 1]}"
        )
    idx = sorted({LETTERS.index(c) for c in letters})
    return tuple(idx)


def _text(value: Any, field: str, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: field {field!r} is missing or empty")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a "\ud800"-style escape
        raise DataError(f"{where}: field {field!r} is not valid Unicode text "
                        f"(lone surrogate {value[e.start]!r})") from None
    return value.strip()


def _language(value: Any, text: str, where: str) -> str:
    if value is None or value == "":
        return detect_language(text)
    lang = str(value).strip().lower()
    aliases = {"en": "en", "english": "en", "eng": "en", "zh": "zh", "cn": "zh", "chinese": "zh", "zh-cn": "zh"}
    if lang not in aliases:
        raise DataError(f"{where}: field 'language' must be en or zh, got {value!r}")
    return aliases[lang]


# ------------------------------------------------------------------------------ OpsEval JSON
def load_opseval(path: str | Path) -> list[MCQItem]:
    """Load an OpsEval JSON list (``path`` may be the folder: then ``test.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "test.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of questions, got {type(rows).__name__}")
    items = []
    for i, row in enumerate(rows):
        where = f"{path} item {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        where = f"{path} item {i} (id {row.get('id', '?')})"
        question = _text(row.get("question"), "question", where)
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise DataError(f"{where}: field 'choices' must be a list of at least 2 options")
        if len(choices) > len(LETTERS):
            raise DataError(f"{where}: {len(choices)} choices; at most {len(LETTERS)} supported")
        options = tuple(_text(c, f"choices[{j}]", where) for j, c in enumerate(choices))
        answers = parse_answer(row.get("answer"), len(options), where)
        qtype = row.get("type")
        if qtype == 0 and len(answers) > 1:
            raise DataError(f"{where}: type 0 (single answer) but answer {row.get('answer')!r} has several letters")
        topics = row.get("topic") or []
        if not isinstance(topics, list):
            raise DataError(f"{where}: field 'topic' must be a list")
        subdomain = str(topics[0]).strip() if topics and str(topics[0]).strip() else NO_SUBDOMAIN
        items.append(
            MCQItem(
                id=str(row.get("id", f"{path.stem}-{i}")), question=question, options=options, answers=answers,
                subdomain=subdomain, language=detect_language(question), source=str(path),
            )
        )
    return _check_unique(items, path)


# ------------------------------------------------------------------------- NetEval JSONL/CSV
def _neteval_row(row: Mapping[str, Any], where: str, default_id: str, source: str) -> MCQItem:
    keys = {str(k).strip(): v for k, v in row.items() if k is not None}
    lower = {k.lower(): v for k, v in keys.items()}
    question = _text(lower.get("question"), "question", where)
    options: list[str] = []
    for letter in LETTERS:
        value = keys.get(letter, keys.get(letter.lower()))
        if value is None or (isinstance(value, str) and not value.strip()):
            break
        options.append(_text(value, letter, where))
    if len(options) < 2:
        raise DataError(f"{where}: needs option fields 'A' and 'B' (options contiguous from A)")
    later = [c for c in LETTERS[len(options) :] if str(keys.get(c) or "").strip()]
    if later:
        raise DataError(f"{where}: option {later[0]!r} given but {LETTERS[len(options)]!r} is missing")
    answers = parse_answer(lower.get("answer"), len(options), where)
    sub = lower.get("subdomain", lower.get("sub_domain", lower.get("category")))
    subdomain = str(sub).strip() if sub is not None and str(sub).strip() else NO_SUBDOMAIN
    language = _language(lower.get("language", lower.get("lang")), question, where)
    qid = str(lower.get("id") or default_id)
    return MCQItem(qid, question, tuple(options), answers, subdomain, language, source)


def load_neteval_jsonl(path: str | Path) -> list[MCQItem]:
    """NetEval-style JSONL (one question object per line; blank lines ignored)."""
    path = Path(path)
    items, wheres = [], []
    try:
        # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085, ... which JSON
        # strings may contain unescaped, and would shift every later line number
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    for n, raw in enumerate(lines, start=1):
        where = f"{path}:{n}"
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # e.g. an integer of > 4300 digits, deep nesting
            raise DataError(f"{where}: invalid JSON ({type(e).__name__}: {str(e)[:120]})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        items.append(_neteval_row(row, where, f"{path.stem}-{n}", str(path)))
        wheres.append(where)
    if not items:
        raise DataError(f"{path}: no questions found")
    return _check_unique(items, path, wheres)


def load_neteval_csv(path: str | Path) -> list[MCQItem]:
    """NetEval-style CSV with a header row (``question,A,B,C,D,answer,subdomain,language``)."""
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    items = []
    with fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "question" not in [f.strip().lower() for f in reader.fieldnames]:
            raise DataError(f"{path}:1: header row must name the columns (question, A, B, ..., answer)")
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:
                    raise DataError(f"{where}: more fields than header columns")
                if all(not (v or "").strip() for v in row.values()):
                    continue
                items.append(_neteval_row(row, where, f"{path.stem}-{reader.line_num}", str(path)))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    if not items:
        raise DataError(f"{path}: no questions found")
    return _check_unique(items, path)


def _check_unique(items: list[MCQItem], path: Path, wheres: list[str] | None = None) -> list[MCQItem]:
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.id in seen:
            if wheres is None:
                raise DataError(f"{path}: duplicate question id {it.id!r}")
            raise DataError(f"{wheres[i]}: duplicate question id {it.id!r} (first at {wheres[seen[it.id]]})")
        seen[it.id] = i
    return items


def guess_format(path: str | Path) -> str:
    """Format from the file name: ``.json``/folder -> opseval, ``.jsonl`` -> neteval_jsonl, ``.csv`` -> neteval_csv."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".json":
        return "opseval"
    if p.suffix == ".jsonl":
        return "neteval_jsonl"
    if p.suffix == ".csv":
        return "neteval_csv"
    raise DataError(f"{p}: cannot tell the format from the name; pass --format one of {FORMATS}")


def load_mcq(path: str | Path, fmt: str | None = None) -> list[MCQItem]:
    """Load ``path`` in format ``fmt`` (one of :data:`FORMATS`; guessed from the name when None/"auto")."""
    fmt = guess_format(path) if fmt in (None, "", "auto") else fmt
    loaders = {"opseval": load_opseval, "neteval_jsonl": load_neteval_jsonl, "neteval_csv": load_neteval_csv}
    if fmt not in loaders:
        raise DataError(f"unknown data format {fmt!r}; choose one of {FORMATS}")
    return loaders[fmt](path)


def sample_path() -> Path:
    """The bundled sample set (written for this project; not NetEval itself)."""
    return Path(__file__).resolve().parent / "data" / "neteval_sample.jsonl"


def summarize(items: Iterable[MCQItem]) -> dict[str, Any]:
    """Counts by language, sub-domain, single/multi answer and option count."""
    from collections import Counter

    items = list(items)
    return {
        "questions": len(items),
        "language": dict(Counter(it.language for it in items)),
        "multi_answer": sum(it.is_multi for it in items),
        "subdomains": len({it.subdomain for it in items}),
        "options": dict(sorted(Counter(len(it.options) for it in items).items())),
    }
