"""Base class of the simulated apps.

An app owns its domain state (files, cells, settings ...), lays out widgets for its window, reacts to
commands carried by its widgets, and exposes API methods ``api_<method>`` declared in ``API``. A GUI
interaction and the matching API call change the domain state in the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from env_server.actions import ActionDef
from env_server.sim.widgets import UI, Command

if TYPE_CHECKING:
    from env_server.sim.desktop import Desktop


class AppError(Exception):
    """An impossible app operation; the message is shown to the agent as the step's error."""


class App:
    name: ClassVar[str] = ""  # API prefix, e.g. "files"
    title: ClassVar[str] = ""  # window title / taskbar label, e.g. "Files"
    API: ClassVar[tuple[ActionDef, ...]] = ()
    OPENS_WINDOW: ClassVar[frozenset[str]] = frozenset()  # API methods that bring the window up

    def __init__(self, desktop: Desktop):
        self.desktop = desktop
        self.fields: dict[str, str] = {}
        self.scroll_pos: dict[str, int] = {}
        self.dialog: str | None = None  # name of the open modal dialog, if any
        self.menu: tuple | None = None  # an open context menu (app specific payload)

    # ----------------------------------------------------------------- helpers
    @property
    def vfs(self):
        return self.desktop.vfs

    def focus(self, key: str | None) -> None:
        self.desktop.focus = (self.name, key) if key else None
        self.desktop.select_all = False

    def focused(self, key: str) -> bool:
        return self.desktop.focus == (self.name, key)

    def open_dialog(self, dialog: str, fields: dict[str, str], focus: str | None = None) -> None:
        self.dialog = dialog
        self.menu = None
        self.fields.update(fields)
        self.focus(focus or (next(iter(fields)) if fields else None))

    def close_dialog(self) -> None:
        if self.dialog is not None and self.desktop.focus and self.desktop.focus[0] == self.name:
            self.desktop.focus = None
        self.dialog = None

    def scroll_window(self, key: str, amount: int, total: int, visible: int) -> None:
        top = self.scroll_pos.get(key, 0) + amount
        self.scroll_pos[key] = max(0, min(top, max(0, total - visible)))

    # ----------------------------------------------------------------- overridables
    def build(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        """Add this app's widgets for its window body (absolute coordinates)."""
        raise NotImplementedError

    def on_command(self, cmd: Command) -> str | None:
        """Handle a widget command; return a short result text or raise AppError."""
        raise AppError(f"{self.title} cannot do {cmd[0]!r}")

    def on_submit(self, key: str) -> str | None:
        """Enter pressed in the single-line field ``key``."""
        return None

    def on_key(self, keys: tuple[str, ...]) -> bool:
        """App-level hotkey; return True if handled."""
        return False

    def on_escape(self) -> bool:
        if self.menu is not None:
            self.menu = None
            return True
        if self.dialog is not None:
            self.close_dialog()
            return True
        return False

    def on_scroll(self, target: str | None, amount: int) -> None:
        """Scroll ``target`` (None = the window's main view)."""

    def on_drop(self, payload: Command, target: Command) -> str | None:
        raise AppError(f"nothing happens when dropping onto {self.title}")

    def on_open(self) -> None:
        """The window was opened."""

    def on_close(self) -> None:
        """The window was closed: transient UI state is dropped."""
        self.dialog = None
        self.menu = None

    def state(self) -> dict[str, Any]:
        """Domain state compared by verifiers and by GUI/API equivalence tests."""
        return {}

    # ----------------------------------------------------------------- API dispatch
    def call_api(self, method: str, args: tuple) -> str | None:
        if method in self.OPENS_WINDOW:
            self.desktop.open_app(self.name)
        return getattr(self, f"api_{method}")(*args)
