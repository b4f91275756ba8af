"""The unified API-GUI action grammar: one line of text per action, parsed without eval/exec.

Grammar (whitespace allowed between tokens)::

    action := NAME ( "." NAME )? "(" [ arg ( "," arg )* ] ")"
    arg    := STRING | NUMBER | "#" INT | "true" | "false"

STRING is double- or single-quoted with backslash escapes (``\\" \\' \\\\ \\n \\t``). Every action name
and its argument types come from an :class:`ActionSchema`, so the parser, the backends and the learner's
grammar mask agree on one definition. GUI primitives and ``done``/``fail`` are shared by all backends;
app API methods (``files.mkdir(...)``) are declared per backend.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

ArgKind = Literal["str", "int", "num", "ref", "value", "key", "bool"]

MAX_ACTION_CHARS = 4096

KEYS: frozenset[str] = frozenset(
    ["ctrl", "alt", "shift", "meta", "enter", "escape", "tab", "backspace", "delete", "space",
     "up", "down", "left", "right", "home", "end", "pageup", "pagedown"]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [str(d) for d in range(10)]
    + [f"f{i}" for i in range(1, 13)]
)

KIND_DESCRIPTION: dict[str, str] = {
    "str": "a string",
    "int": "an integer",
    "num": "a number",
    "ref": "an element reference like #12",
    "value": "a string, number or true/false",
    "key": "a key name string",
    "bool": "true or false",
}


class ActionError(ValueError):
    """A malformed or ill-typed action. ``str(err)`` is a message meant for the agent."""

    def __init__(self, message: str, column: int | None = None):
        self.message = message
        self.column = column
        super().__init__(message if column is None else f"{message} (at column {column + 1})")


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to an accessibility-tree row: ``#12``."""

    id: int

    def __str__(self) -> str:
        return f"#{self.id}"


Value = str | int | float | bool | Ref


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: ArgKind


@dataclass(frozen=True)
class Signature:
    """One overload of an action: named, typed positional parameters (last may repeat)."""

    params: tuple[Param, ...]
    variadic: bool = False  # the last param may repeat (at least once)
    max_args: int = 8

    def describe(self) -> str:
        parts = [f"{p.name}: {p.kind}" for p in self.params]
        if self.variadic:
            parts[-1] += ", ..."
        return "(" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class ActionDef:
    name: str  # "click" or "files.mkdir"
    kind: Literal["gui", "api", "meta"]
    signatures: tuple[Signature, ...]
    doc: str = ""

    def usage(self) -> str:
        return " | ".join(f"{self.name}{s.describe()}" for s in self.signatures)


@dataclass(frozen=True, slots=True)
class Action:
    """A parsed action. ``name`` is ``"click"`` or ``"files.mkdir"``; ``args`` are typed values."""

    name: str
    kind: Literal["gui", "api", "meta"]
    args: tuple[Value, ...] = ()

    @property
    def app(self) -> str | None:
        return self.name.split(".", 1)[0] if self.kind == "api" else None

    @property
    def method(self) -> str:
        return self.name.split(".", 1)[-1]

    def to_text(self) -> str:
        return f"{self.name}({', '.join(format_value(a) for a in self.args)})"

    __str__ = to_text


def format_value(value: Value) -> str:
    """Render a value in the grammar's own syntax (round-trips through :func:`parse_action`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Ref):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _sig(*params: tuple[str, ArgKind], variadic: bool = False) -> Signature:
    return Signature(tuple(Param(n, k) for n, k in params), variadic=variadic)


_POINT = _sig(("x", "int"), ("y", "int"))
_REF = _sig(("target", "ref"))

GUI_ACTIONS: tuple[ActionDef, ...] = (
    ActionDef("click", "gui", (_POINT, _REF), "left click at a point or on an a11y row"),
    ActionDef("double_click", "gui", (_POINT, _REF), "double click"),
    ActionDef("right_click", "gui", (_POINT, _REF), "right click (context menu)"),
    ActionDef("type", "gui", (_sig(("text", "str")),), "type text into the focused field"),
    ActionDef("hotkey", "gui", (_sig(("key", "key"), variadic=True),), 'press keys together: hotkey("ctrl", "s")'),
    ActionDef("scroll", "gui", (_sig(("amount", "int")), _sig(("target", "ref"), ("amount", "int"))),
              "scroll the focused view (positive = down)"),
    ActionDef("drag", "gui", (_sig(("x1", "int"), ("y1", "int"), ("x2", "int"), ("y2", "int")),
                              _sig(("source", "ref"), ("target", "ref"))), "drag and drop"),
)
META_ACTIONS: tuple[ActionDef, ...] = (
    ActionDef("done", "meta", (_sig(),), "declare the task finished"),
    ActionDef("fail", "meta", (_sig(),), "declare the task infeasible"),
)


def api(name: str, *params: tuple[str, ArgKind], doc: str = "") -> ActionDef:
    """Declare an app API method, e.g. ``api("files.mkdir", ("path", "str"))``."""
    if name.count(".") != 1:
        raise ValueError(f"API action names look like app.method, got {name!r}")
    return ActionDef(name, "api", (_sig(*params),), doc)


@dataclass
class ActionSchema:
    """The set of actions a backend accepts. Lookup by full name (``files.mkdir``)."""

    actions: Mapping[str, ActionDef] = field(default_factory=dict)

    @classmethod
    def build(cls, api_actions: Iterable[ActionDef] = ()) -> ActionSchema:
        table: dict[str, ActionDef] = {}
        for a in (*GUI_ACTIONS, *META_ACTIONS, *api_actions):
            if a.name in table:
                raise ValueError(f"action {a.name!r} declared twice")
            table[a.name] = a
        return cls(table)

    @property
    def apps(self) -> list[str]:
        return sorted({n.split(".")[0] for n, a in self.actions.items() if a.kind == "api"})

    def describe(self) -> str:
        """A human/agent-readable listing of every action and its arguments."""
        return "\n".join(a.usage() for a in self.actions.values())

    def parse(self, text: str) -> Action:
        return parse_action(text, self)


# --------------------------------------------------------------------------------------------- lexer
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<ref>\#\d+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[().,])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "r": "\r", "0": "\0"}
_MAX_INT = 10**9


def _unescape(body: str, column: int) -> str:
    if "\\" not in body:
        return body
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise ActionError(f"unknown escape sequence \\{nxt} in string", column + i + 1)
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch in "\"'":
                raise ActionError("unterminated string literal", pos)
            raise ActionError(f"unexpected character {ch!r}", pos)
        kind = m.lastgroup
        if kind != "ws":
            tokens.append((kind, m.group(), pos))
        pos = m.end()
    return tokens


def _convert(kind: str, raw: str, column: int) -> Value:
    if kind == "string":
        return _unescape(raw[1:-1], column)
    if kind == "ref":
        value = int(raw[1:])
        if value > _MAX_INT:
            raise ActionError(f"element reference {raw} is out of range", column)
        return Ref(value)
    if kind == "number":
        if re.fullmatch(r"[-+]?\d+", raw):
            value = int(raw)
            if abs(value) > _MAX_INT:
                raise ActionError(f"integer {raw} is out of range (|n| <= {_MAX_INT})", column)
            return value
        f = float(raw)
        if f != f or f in (float("inf"), float("-inf")):
            raise ActionError(f"number {raw} is not finite", column)
        return f
    if kind == "name":
        if raw == "true":
            return True
        if raw == "false":
            return False
        raise ActionError(f"unexpected name {raw!r}; strings must be quoted", column)
    raise ActionError(f"unexpected {raw!r}", column)


def _matches(kind: ArgKind, value: Value) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "key":
        return isinstance(value, str) and value.lower() in KEYS
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "ref":
        return isinstance(value, Ref)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "value":
        return not isinstance(value, Ref)
    raise AssertionError(kind)


def _type_name(value: Value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Ref):
        return "an element reference"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return "a string"


def _bind(adef: ActionDef, args: Sequence[Value]) -> tuple[Value, ...]:
    """Match args against the overloads of ``adef``; raise a precise error if none fits."""
    problems = []
    for sig in adef.signatures:
        n_fixed = len(sig.params)
        if sig.variadic:
            ok_count = n_fixed <= len(args) <= sig.max_args
        else:
            ok_count = len(args) == n_fixed
        if not ok_count:
            problems.append(f"expects {len(sig.params)}{'+' if sig.variadic else ''} argument(s) "
                            f"{sig.describe()}, got {len(args)}")
            continue
        bad = None
        for i, value in enumerate(args):
            param = sig.params[min(i, n_fixed - 1)]
            if not _matches(param.kind, value):
                extra = ""
                if param.kind == "key" and isinstance(value, str):
                    extra = f" ({value!r} is not a key name)"
                bad = (f"argument {i + 1} ({param.name}) must be {KIND_DESCRIPTION[param.kind]}, "
                       f"got {_type_name(value)}{extra}")
                break
        if bad is None:
            if any(p.kind == "key" for p in sig.params):
                return tuple(v.lower() if isinstance(v, str) else v for v in args)
            return tuple(args)
        problems.append(bad)
    if len(problems) == 1:
        raise ActionError(f"{adef.name}: {problems[0]}")
    raise ActionError(f"{adef.name}: arguments fit no form; usage: {adef.usage()}")


def parse_action(text: str, schema: ActionSchema) -> Action:
    """Parse one action line against ``schema``. Raises :class:`ActionError` with a clear message."""
    if not isinstance(text, str):
        raise ActionError(f"an action must be text, got {type(text).__name__}")
    if len(text) > MAX_ACTION_CHARS:
        raise ActionError(f"action is too long ({len(text)} > {MAX_ACTION_CHARS} characters)")
    stripped = text.strip()
    if not stripped:
        raise ActionError("empty action; expected something like click(#3) or done()")
    if "\n" in stripped:
        raise ActionError("an action is one line; found a line break outside a string")
    tokens = _tokenize(stripped)
    i = 0

    def peek() -> tuple[str, str, int] | None:
        return tokens[i] if i < len(tokens) else None

    def expect(value: str, what: str) -> None:
        nonlocal i
        tok = peek()
        if tok is None:
            raise ActionError(f"expected {what} but the action ended", len(stripped))
        if tok[1] != value:
            raise ActionError(f"expected {what}, found {tok[1]!r}", tok[2])
        i += 1

    tok = peek()
    if tok is None or tok[0] != "name":
        raise ActionError("an action starts with a name, like click(...) or files.mkdir(...)", 0)
    name = tok[1]
    i += 1
    if peek() is not None and peek()[1] == ".":
        i += 1
        tok = peek()
        if tok is None or tok[0] != "name":
            raise ActionError(f"expected a method name after '{name}.'", tok[2] if tok else len(stripped))
        name = f"{name}.{tok[1]}"
        i += 1
    adef = schema.actions.get(name)
    if adef is None:
        close = difflib.get_close_matches(name, list(schema.actions), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        if "." in name and name.split(".")[0] not in schema.apps:
            hint = hint or f"; apps with API calls: {', '.join(schema.apps)}"
        raise ActionError(f"unknown action {name!r}{hint}", 0)
    expect("(", f"'(' after {name}")
    args: list[Value] = []
    if peek() is not None and peek()[1] == ")":
        i += 1
    else:
        while True:
            tok = peek()
            if tok is None:
                raise ActionError("expected an argument but the action ended", len(stripped))
            if tok[0] == "punct":
                raise ActionError(f"expected an argument, found {tok[1]!r}", tok[2])
            args.append(_convert(tok[0], tok[1], tok[2]))
            i += 1
            tok = peek()
            if tok is None:
                raise ActionError("missing ')' at the end of the action", len(stripped))
            if tok[1] == ",":
                i += 1
                continue
            if tok[1] == ")":
                i += 1
                break
            raise ActionError(f"expected ',' or ')', found {tok[1]!r}", tok[2])
    if i != len(tokens):
        raise ActionError(f"unexpected text after the action: {stripped[tokens[i][2]:]!r}", tokens[i][2])
    return Action(name, adef.kind, _bind(adef, args))
