"""Widgets of the simulated desktop and the builder apps use to lay them out.

The widget list is the single source for both observations: the accessibility rows and the screenshot
are rendered from it, and clicks are hit-tested against it (later widgets are drawn on top).
"""

from __future__ import annotations

from dataclasses import dataclass

from env_server.a11y import Row

SCREEN_W, SCREEN_H = 1280, 720
TASKBAR_H = 40
TITLE_H = 32
CONTENT = (0, TITLE_H, SCREEN_W, SCREEN_H - TASKBAR_H - TITLE_H)  # x, y, w, h of a window's body

Command = tuple  # ("select", "notes.txt") etc., interpreted by the owning app


@dataclass(slots=True)
class Widget:
    role: str
    name: str
    x: int
    y: int
    w: int
    h: int
    app: str = ""  # owner: an app name, or "" for the desktop shell
    states: tuple[str, ...] = ()
    click: Command | None = None
    double: Command | None = None
    right: Command | None = None
    field: str | None = None  # key of the app text buffer this widget edits (click focuses it)
    multiline: bool = False
    drag: Command | None = None  # payload offered when dragged
    drop: Command | None = None  # command run (with the payload appended) when something is dropped
    scroll: str | None = None  # scroll target key
    text: str = ""  # text drawn inside (defaults to name)
    visible: bool = True  # False: hit-testable container not listed in the a11y tree

    @property
    def center(self) -> tuple[int, int]:
        return self.x + self.w // 2, self.y + self.h // 2

    def contains(self, px: int, py: int) -> bool:
        return self.x <= px < self.x + self.w and self.y <= py < self.y + self.h

    def interactive(self) -> bool:
        return bool(self.click or self.double or self.right or self.field or self.drag
                    or self.drop or self.scroll)

    def row(self, idx: int) -> Row:
        cx, cy = self.center
        return Row(idx, self.role, self.name, cx, cy, self.w, self.h, self.states)


class UI:
    """Collects widgets for one frame. Apps call the helpers with absolute coordinates."""

    def __init__(self, app: str = ""):
        self.app = app
        self.widgets: list[Widget] = []

    def add(self, role: str, name: str, x: int, y: int, w: int, h: int, **kw) -> Widget:
        widget = Widget(role, name, x, y, w, h, app=kw.pop("app", self.app), **kw)
        self.widgets.append(widget)
        return widget

    def button(self, name: str, x: int, y: int, w: int, h: int, cmd: Command, **kw) -> Widget:
        return self.add("button", name, x, y, w, h, click=cmd, **kw)

    def label(self, text: str, x: int, y: int, w: int, h: int = 24, role: str = "label", **kw) -> Widget:
        return self.add(role, text, x, y, w, h, **kw)

    def field(self, label: str, value: str, x: int, y: int, w: int, h: int, key: str,
              focused: bool = False, multiline: bool = False, **kw) -> Widget:
        """An editable text field; its a11y name is ``label: value`` (or the value alone)."""
        name = f"{label}: {value}" if label else value
        states = ("editable", "focused") if focused else ("editable",)
        role = "text area" if multiline else "text field"
        return self.add(role, name, x, y, w, h, field=key, multiline=multiline, states=states,
                        text=value, **kw)

    def checkbox(self, name: str, checked: bool, x: int, y: int, w: int, h: int, cmd: Command) -> Widget:
        return self.add("checkbox", name, x, y, w, h, click=cmd, states=("checked",) if checked else ())


def hit_test(widgets: list[Widget], px: int, py: int) -> Widget | None:
    """The topmost widget under the point (widgets are drawn in list order, so the last one wins)."""
    for widget in reversed(widgets):
        if widget.contains(px, py):
            return widget
    return None
