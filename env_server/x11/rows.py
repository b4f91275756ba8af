"""Turn the X window list and AT-SPI nodes into the shared flattened accessibility rows.

Per window, top of the stack first: a ``window`` row (frame geometry, ``active`` when focused), a
``title bar`` row (clicking it really focuses the window), then the window's AT-SPI widgets (GTK apps) or,
for the terminal, one ``terminal`` row whose name is the tail of what the terminal printed. Popup menus
(AT-SPI windows that are not managed windows) come first, as they are drawn on top.
"""

from __future__ import annotations

import re

from env_server.a11y import Row

_ROLE_RE = re.compile(r"[^a-z ]+")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Z0-9]|\x1b[=>]|\r")
TERMINAL_CLASSES = ("XTerm",)


def clean_role(role: str) -> str:
    role = _ROLE_RE.sub("_", role.lower()).strip(" _")
    return role or "unknown"


def terminal_text(raw: str, max_chars: int = 300) -> str:
    """The last lines a terminal printed, control sequences removed."""
    text = _ANSI_RE.sub("", raw)
    out: list[str] = []
    for ch in text:  # apply backspaces as the terminal would
        if ch == "\b":
            if out and out[-1] != "\n":
                out.pop()
        elif ch == "\n" or ch >= " " or ch == "\t":
            out.append(ch)
    return "".join(out)[-max_chars:]


def _center(box: list[int]) -> tuple[int, int]:
    return box[0] + box[2] // 2, box[1] + box[3] // 2


def _split_tops(nodes: list[dict]) -> list[list[dict]]:
    groups: list[list[dict]] = []
    for n in nodes:
        if n["top"] or not groups:
            groups.append([])
        groups[-1].append(n)
    return groups


def _match(group: list[dict], windows: list[dict], used: set[int]) -> int | None:
    """Index of the X window an AT-SPI top-level belongs to (same process, then title or geometry)."""
    top = group[0]
    cands = [i for i, w in enumerate(windows) if i not in used and w["pid"] == top["pid"]]
    for i in cands:
        if windows[i]["title"] == top["name"]:
            return i
    for i in cands:
        w = windows[i]
        if abs(w["x"] - top["box"][0]) <= 4 and abs(w["y"] - top["box"][1]) <= 24:
            return i
    return cands[0] if len(cands) == 1 and top["role"] in ("frame", "dialog", "window") else None


def build_rows(windows: list[dict], nodes: list[dict], terminal: str, width: int,
               height: int) -> list[Row]:
    """Rows in the shared format; ids are positions in the returned list."""
    groups = _split_tops(nodes)
    by_window: dict[int, list[dict]] = {}
    popups: list[list[dict]] = []
    used: set[int] = set()
    for g in groups:
        i = _match(g, windows, used)
        if i is None:
            if g[0]["role"] in ("window", "menu", "tool tip", "popup menu"):
                popups.append(g)
            continue
        used.add(i)
        by_window[i] = g
    rows: list[Row] = []

    def add(role: str, name: str, box: list[int], states: tuple[str, ...] = ()) -> None:
        cx, cy = _center(box)
        if box[2] <= 0 or box[3] <= 0 or not (0 <= cx < width and 0 <= cy < height):
            return
        rows.append(Row(len(rows), clean_role(role), name, cx, cy, box[2], box[3], states))

    def add_nodes(group: list[dict], skip_top: bool) -> None:
        for n in group[1:] if skip_top else group:
            add(n["role"], n["name"], n["box"], tuple(n["states"]))

    for g in popups:
        add_nodes(g, skip_top=True)
    for i, w in enumerate(windows):
        fx, fy, fw, _ = w["frame"]
        add("dialog" if w["dialog"] else "window", w["title"], w["frame"], ("active",) if w["active"] else ())
        if w["title_h"] > 0:
            add("title bar", w["title"], [fx, fy, fw, w["title_h"]])
        if i in by_window:
            add_nodes(by_window[i], skip_top=True)
        elif w["cls"] in TERMINAL_CLASSES:
            add("terminal", terminal, [w["x"], w["y"], w["w"], w["h"]], ("focused",) if w["active"] else ())
    return rows
