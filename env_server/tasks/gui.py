"""What a GUI-style expert plan sees and the helpers that turn intents (click the button named X) into
action lines, by accessibility-row reference or by screen coordinates."""

from __future__ import annotations

from collections.abc import Iterator

from env_server.a11y import Row, find_rows
from env_server.actions import format_value


class ExpertError(RuntimeError):
    """The expert could not find what it expected on screen (a bug in a plan or an app)."""


class GuiContext:
    """What a GUI plan sees: the latest rows, plus helpers that turn intents into actions."""

    def __init__(self, coords: bool = False):
        self.rows: list[Row] = []
        self.coords = coords

    # ------------------------------------------------------------------ lookups
    def find(self, role: str | None = None, name: str | None = None, contains: str | None = None,
             state: str | None = None) -> Row:
        hits = find_rows(self.rows, role=role, name=name, contains=contains, state=state)
        if not hits:
            what = ", ".join(f"{k}={v!r}" for k, v in
                             (("role", role), ("name", name), ("contains", contains), ("state", state)) if v)
            raise ExpertError(f"no row with {what} on screen")
        return hits[0]

    def has(self, role: str | None = None, name: str | None = None, contains: str | None = None,
            state: str | None = None) -> bool:
        return bool(find_rows(self.rows, role=role, name=name, contains=contains, state=state))

    def top_window(self) -> str | None:
        for r in self.rows:
            if r.role == "window":
                return r.name
        return None

    # ------------------------------------------------------------------ actions
    def _target(self, row: Row) -> str:
        return f"{row.cx}, {row.cy}" if self.coords else f"#{row.id}"

    def click(self, role: str | None = None, name: str | None = None, **kw) -> str:
        return f"click({self._target(self.find(role, name, **kw))})"

    def double_click(self, role: str | None = None, name: str | None = None, **kw) -> str:
        return f"double_click({self._target(self.find(role, name, **kw))})"

    def right_click(self, role: str | None = None, name: str | None = None, **kw) -> str:
        return f"right_click({self._target(self.find(role, name, **kw))})"

    @staticmethod
    def type(text: str) -> str:
        return f"type({format_value(text)})"

    @staticmethod
    def key(*keys: str) -> str:
        return f"hotkey({', '.join(format_value(k) for k in keys)})"

    # ------------------------------------------------------------------ common sub-plans
    def open_app(self, title: str) -> Iterator[str]:
        """Bring an app's window to the front via the taskbar (no-op if it already is)."""
        if self.top_window() != title:
            yield self.click("button", title)

    def fill(self, label: str, text: str, role: str = "text field") -> Iterator[str]:
        """Focus the field whose name starts with ``label:`` and replace its text."""
        yield self.click(role, contains=f"{label}:")
        yield self.key("ctrl", "a")
        yield self.type(text)

    def files_goto(self, folder: str) -> Iterator[str]:
        """In the file manager, go to ``folder`` through the location bar."""
        yield from self.open_app("Files")
        if not self.has("text field", name=f"Location: {folder}"):
            yield from self.fill("Location", folder)
            yield self.key("enter")

    def select_item(self, name: str, kind: str = "file") -> Iterator[str]:
        """Click an item of the file manager's current folder, scrolling until it is visible."""
        for _ in range(20):
            if self.has(kind, name=name):
                break
            yield "scroll(5)"
        yield self.click(kind, name=name)
