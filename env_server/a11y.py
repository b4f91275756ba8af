"""The flattened accessibility-tree row format shared by every backend, the clients and the policy.

One row per visible widget::

    12 button "New Folder" (640,360) 120x32 focused,selected

i.e. ``id role "name" (cx,cy) wxh [states]``. The name is quoted with the action grammar's escapes so that
any text survives a round trip. Rows are capped; a final ``...`` line says how many were dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_MAX_ROWS = 200
MAX_NAME_CHARS = 80


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    role: str
    name: str
    cx: int
    cy: int
    w: int
    h: int
    states: tuple[str, ...] = ()

    def format(self) -> str:
        name = self.name
        if len(name) > MAX_NAME_CHARS:
            name = name[: MAX_NAME_CHARS - 3] + "..."
        name = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        line = f'{self.id} {self.role} "{name}" ({self.cx},{self.cy}) {self.w}x{self.h}'
        return f"{line} {','.join(self.states)}" if self.states else line


def format_rows(rows: Sequence[Row], max_rows: int = DEFAULT_MAX_ROWS) -> str:
    lines = [r.format() for r in rows[:max_rows]]
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows")
    return "\n".join(lines)


_ROW_RE = re.compile(
    r'^(?P<id>\d+) (?P<role>[a-z_ ]+?) "(?P<name>(?:[^"\\]|\\.)*)" '
    r"\((?P<cx>-?\d+),(?P<cy>-?\d+)\) (?P<w>\d+)x(?P<h>\d+)(?: (?P<states>[a-z_,]+))?$"
)
_UNESC = {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _UNESC.get(m.group(1), m.group(1)), s)


def parse_rows(text: str) -> list[Row]:
    """Parse rows written by :func:`format_rows` (the ``...`` trailer is skipped)."""
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("... "):
            continue
        m = _ROW_RE.match(line)
        if m is None:
            raise ValueError(f"not an accessibility row: {line!r}")
        states = tuple(m["states"].split(",")) if m["states"] else ()
        rows.append(Row(int(m["id"]), m["role"], _unescape(m["name"]), int(m["cx"]), int(m["cy"]),
                        int(m["w"]), int(m["h"]), states))
    return rows


def find_rows(rows: Iterable[Row], role: str | None = None, name: str | None = None,
              contains: str | None = None, state: str | None = None) -> list[Row]:
    """Rows matching all given criteria (exact role/name, substring, state)."""
    out = []
    for r in rows:
        if role is not None and r.role != role:
            continue
        if name is not None and r.name != name:
            continue
        if contains is not None and contains not in r.name:
            continue
        if state is not None and state not in r.states:
            continue
        out.append(r)
    return out
