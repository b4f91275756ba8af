"""Spreadsheet cells and formulas: references, a small recursive-descent formula parser and evaluator.

Formulas start with ``=`` and use numbers, cell references (``B2``), ranges inside functions
(``SUM(A1:A3)``), ``+ - * / ^``, unary minus, parentheses and the functions SUM, AVERAGE, MIN, MAX and
COUNT. Nothing is ever passed to ``eval``. Problems found while *parsing* raise :class:`FormulaError`
(the input is rejected); problems found while *evaluating* give an error value shown in the cell:
``#REF!`` (reference outside the grid), ``#DIV/0!``, ``#VALUE!`` (text used as a number),
``#CYCLE!`` (a formula that depends on itself) and ``#ERROR!`` (a stored formula that does not parse).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable

COLS = "ABCDEF"
N_ROWS = 12
FUNCTIONS = ("SUM", "AVERAGE", "MIN", "MAX", "COUNT")
ERRORS = ("#REF!", "#DIV/0!", "#VALUE!", "#CYCLE!", "#ERROR!")

_REF_RE = re.compile(r"([A-Za-z]{1,3})([0-9]{1,5})")
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[-+*/^(),:]))"
)

Value = float | str | None  # number, text, or empty


class FormulaError(ValueError):
    """A formula that does not parse; the message says what and where."""


class CellError(Exception):
    """An error value (``#REF!`` ...) raised while evaluating."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


# ----------------------------------------------------------------------------------- references
def cell_names() -> list[str]:
    """Every cell of the grid, row by row (A1, B1, ..., F12)."""
    return [f"{c}{r}" for r in range(1, N_ROWS + 1) for c in COLS]


def split_ref(ref: str) -> tuple[int, int] | None:
    """(column index, row number) of a reference like ``B2``; None if it is outside the grid."""
    m = _REF_RE.fullmatch(ref.strip())
    if m is None:
        return None
    col, row = m.group(1).upper(), int(m.group(2))
    if len(col) != 1 or col not in COLS or not 1 <= row <= N_ROWS:
        return None
    return COLS.index(col), row


def check_ref(ref: object) -> str:
    """Canonical form (``b2`` -> ``B2``) of a cell reference inside the grid, or a clear ValueError."""
    if not isinstance(ref, str) or split_ref(ref) is None:
        raise ValueError(f"no cell {ref!r}; cells go from A1 to {COLS[-1]}{N_ROWS}")
    col, row = split_ref(ref)
    return f"{COLS[col]}{row}"


def format_number(value: float) -> str:
    """How numbers are shown and stored: ``12``, ``2.5``, ``0.3333333333``."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


def parse_number(text: str) -> float | None:
    """The number a cell text holds, or None for text (and for overflowing numbers like 1e999)."""
    if not _NUMBER_RE.fullmatch(text.strip()):
        return None
    value = float(text)
    return value if abs(value) != float("inf") else None


# ----------------------------------------------------------------------------------- parser
Node = tuple  # ("num", v) | ("ref", "A1") | ("range", "A1", "B3") | ("neg", n) | ("bin", op, a, b) | ("call", f, args)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN_RE.match(text, pos)
            if m is None or m.lastgroup is None:
                raise FormulaError(f"unexpected character {text[pos:].lstrip()[0]!r} at position {pos + 1}")
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise FormulaError(f"the formula ends too early{f'; expected {value!r}' if value else ''}")
        if value is not None and tok[1] != value:
            raise FormulaError(f"expected {value!r} at position {tok[2] + 1}, found {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.tokens:
            raise FormulaError("empty formula")
        node = self.expr()
        tok = self.peek()
        if tok is not None:
            raise FormulaError(f"unexpected {tok[1]!r} at position {tok[2] + 1}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while (tok := self.peek()) is not None and tok[1] in "+-" and tok[0] == "op":
            self.i += 1
            node = ("bin", tok[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while (tok := self.peek()) is not None and tok[1] in "*/" and tok[0] == "op":
            self.i += 1
            node = ("bin", tok[1], node, self.unary())
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok is not None and tok[1] in ("-", "+"):
            self.i += 1
            inner = self.unary()
            return ("neg", inner) if tok[1] == "-" else inner
        return self.power()

    def power(self) -> Node:
        node = self.atom()
        tok = self.peek()
        if tok is not None and tok[1] == "^":
            self.i += 1
            node = ("bin", "^", node, self.unary())
        return node

    def atom(self) -> Node:
        kind, value, pos = self.take()
        if kind == "num":
            return ("num", float(value))
        if kind == "name":
            nxt = self.peek()
            if nxt is not None and nxt[1] == "(":
                name = value.upper()
                if name not in FUNCTIONS:
                    raise FormulaError(f"unknown function {value!r} at position {pos + 1}; "
                                       f"known: {', '.join(FUNCTIONS)}")
                self.i += 1
                return ("call", name, self.args())
            if _REF_RE.fullmatch(value) is None:
                raise FormulaError(f"{value!r} at position {pos + 1} is not a cell reference like B2")
            if (nxt := self.peek()) is not None and nxt[1] == ":":
                raise FormulaError(f"a range like {value}:... is only allowed inside a function "
                                   f"such as SUM({value}:...)")
            return ("ref", value.upper())
        if value == "(":
            node = self.expr()
            self.take(")")
            return node
        raise FormulaError(f"unexpected {value!r} at position {pos + 1}")

    def args(self) -> list[Node]:
        out: list[Node] = []
        if (tok := self.peek()) is not None and tok[1] == ")":
            self.i += 1
            return out
        while True:
            out.append(self.arg())
            tok = self.take()
            if tok[1] == ")":
                return out
            if tok[1] != ",":
                raise FormulaError(f"expected ',' or ')' at position {tok[2] + 1}, found {tok[1]!r}")

    def arg(self) -> Node:
        tok = self.peek()
        nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
        if tok is not None and tok[0] == "name" and nxt is not None and nxt[1] == ":":
            start = tok[1]
            self.i += 2
            end = self.take()
            for ref in (start, end[1]):
                if _REF_RE.fullmatch(ref) is None:
                    raise FormulaError(f"{ref!r} in a range is not a cell reference like B2")
            return ("range", start.upper(), end[1].upper())
        return self.expr()


def parse_formula(text: str) -> Node:
    """Parse a formula (with or without the leading ``=``) into a small tree."""
    body = text.strip()
    if body.startswith("="):
        body = body[1:]
    try:
        return _Parser(body).parse()
    except RecursionError:
        raise FormulaError("the formula is nested too deeply") from None


# ----------------------------------------------------------------------------------- evaluation
def _range_refs(a: str, b: str) -> list[str]:
    pa, pb = split_ref(a), split_ref(b)
    if pa is None or pb is None:
        raise CellError("#REF!")
    c0, c1 = sorted((pa[0], pb[0]))
    r0, r1 = sorted((pa[1], pb[1]))
    return [f"{COLS[c]}{r}" for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def _number(value: Value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, str):
        if value in ERRORS:
            raise CellError(value)
        raise CellError("#VALUE!")
    return value


def _evaluate(node: Node, lookup: Callable[[str], Value]) -> float:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "ref":
        if split_ref(node[1]) is None:
            raise CellError("#REF!")
        return _number(lookup(node[1]))
    if kind == "neg":
        return -_evaluate(node[1], lookup)
    if kind == "bin":
        a, b = _evaluate(node[2], lookup), _evaluate(node[3], lookup)
        op = node[1]
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            if b == 0:
                raise CellError("#DIV/0!")
            return a / b
        try:
            result = a ** b
        except (OverflowError, ZeroDivisionError):
            raise CellError("#VALUE!") from None
        if isinstance(result, complex):
            raise CellError("#VALUE!")
        return result
    if kind == "call":
        numbers: list[float] = []
        for arg in node[2]:
            if arg[0] == "range":
                for ref in _range_refs(arg[1], arg[2]):
                    value = lookup(ref)
                    if isinstance(value, str) and value in ERRORS:
                        raise CellError(value)
                    if isinstance(value, float):  # text and empty cells are skipped, as in other sheets
                        numbers.append(value)
            else:
                numbers.append(_evaluate(arg, lookup))
        name = node[1]
        if name == "SUM":
            return float(sum(numbers))
        if name == "COUNT":
            return float(len(numbers))
        if name == "AVERAGE":
            if not numbers:
                raise CellError("#DIV/0!")
            return sum(numbers) / len(numbers)
        if not numbers:
            return 0.0
        return min(numbers) if name == "MIN" else max(numbers)
    raise AssertionError(node)


def evaluate_cells(raw: dict[str, str]) -> dict[str, Value]:
    """Values of every non-empty cell: numbers, text, or error codes for formulas that fail."""
    values: dict[str, Value] = {}
    active: set[str] = set()

    def lookup(ref: str) -> Value:
        if ref in values:
            return values[ref]
        text = raw.get(ref, "")
        if not text.startswith("="):
            number = parse_number(text)
            values[ref] = number if number is not None else (text or None)
            return values[ref]
        if ref in active:
            raise CellError("#CYCLE!")
        active.add(ref)
        try:
            result: Value = _evaluate(parse_formula(text), lookup)
            if result != result or result in (float("inf"), float("-inf")):
                result = "#VALUE!"
        except CellError as err:
            result = err.code
        except (FormulaError, RecursionError):
            result = "#ERROR!"
        finally:
            active.discard(ref)
        values[ref] = result
        return result

    for ref in raw:
        lookup(ref)
    return {ref: values[ref] for ref in raw if values.get(ref) is not None}


def display(value: Value) -> str:
    if value is None:
        return ""
    return format_number(value) if isinstance(value, float) else value


# ----------------------------------------------------------------------------------- CSV
def cells_from_csv(text: str, where: str = "CSV") -> dict[str, str]:
    """Raw cell texts from CSV text (formulas are kept as ``=...`` text)."""
    cells: dict[str, str] = {}
    rows = list(csv.reader(io.StringIO(text)))
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    if len(rows) > N_ROWS:
        raise ValueError(f"{where} has {len(rows)} rows; the sheet holds {N_ROWS}")
    for r, row in enumerate(rows, 1):
        while row and not row[-1].strip():
            row = row[:-1]
        if len(row) > len(COLS):
            raise ValueError(f"{where} line {r} has {len(row)} columns; the sheet holds {len(COLS)}")
        for c, value in enumerate(row):
            if value.strip():
                cells[f"{COLS[c]}{r}"] = value.strip()
    return cells


def cells_to_csv(cells: dict[str, str]) -> str:
    """CSV text of the used rectangle A1:<last column><last row> (empty sheet -> empty text)."""
    if not cells:
        return ""
    positions = [split_ref(ref) for ref in cells]
    n_cols = max(p[0] for p in positions) + 1
    n_rows = max(p[1] for p in positions)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for r in range(1, n_rows + 1):
        writer.writerow([cells.get(f"{COLS[c]}{r}", "") for c in range(n_cols)])
    return out.getvalue()


def csv_of_columns(columns: dict[str, Iterable[object]]) -> str:
    """CSV text from ``{"A": [...], "B": [...]}`` (numbers formatted as the sheet does); for task setup."""
    cells: dict[str, str] = {}
    for col, values in columns.items():
        for r, v in enumerate(values, 1):
            cells[f"{col}{r}"] = format_number(float(v)) if isinstance(v, int | float) else str(v)
    return cells_to_csv(cells)
