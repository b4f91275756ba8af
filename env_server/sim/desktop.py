"""The simulated desktop: a window manager over the apps, input dispatch, and observation rendering."""

from __future__ import annotations

from env_server.a11y import DEFAULT_MAX_ROWS, format_rows
from env_server.actions import Action, ActionError, Ref
from env_server.sim.apps import APP_CLASSES
from env_server.sim.apps.base import App, AppError
from env_server.sim.vfs import VFS, VFSError, default_tree
from env_server.sim.widgets import (
    CONTENT,
    SCREEN_H,
    SCREEN_W,
    TASKBAR_H,
    TITLE_H,
    UI,
    Widget,
    hit_test,
)

TASKBAR_BUTTON_W = 120
_TEXT_EDIT_KEYS = {("backspace",), ("ctrl", "a"), ("delete",)}


class Desktop:
    """Domain state of all apps plus the window stack, focus and the last rendered frame."""

    def __init__(self, vfs: VFS | None = None, max_rows: int = DEFAULT_MAX_ROWS):
        self.vfs = vfs or default_tree()
        self.apps: dict[str, App] = {cls.name: cls(self) for cls in APP_CLASSES}
        self.windows: list[str] = []  # open windows, bottom to top
        self.focus: tuple[str, str] | None = None  # (app, field key)
        self.select_all = False  # the focused field's text is selected (next type replaces it)
        self.declared: str | None = None  # "done" / "fail" once the agent says so
        self.max_rows = max_rows
        self._frame: list[Widget] | None = None
        self._rows: list[Widget] = []
        self._overlay_start: int | None = None
        self.pointer: tuple[int, int] = (SCREEN_W // 2, SCREEN_H // 2)

    # ----------------------------------------------------------------- windows
    @property
    def top(self) -> App | None:
        return self.apps[self.windows[-1]] if self.windows else None

    def open_app(self, name: str) -> App:
        if name not in self.apps:
            raise AppError(f"no app named {name!r}; apps: {', '.join(self.apps)}")
        app = self.apps[name]
        if name in self.windows:
            self.windows.remove(name)
            self.windows.append(name)
        else:
            self.windows.append(name)
            app.on_open()
        if self.focus and self.focus[0] != name:
            self.focus = None
        return app

    def close_app(self, name: str) -> None:
        if name in self.windows:
            self.windows.remove(name)
            self.apps[name].on_close()
            if self.focus and self.focus[0] == name:
                self.focus = None

    # ----------------------------------------------------------------- frame
    def invalidate(self) -> None:
        self._frame = None

    def frame(self) -> list[Widget]:
        """All widgets of the current screen in drawing order (cached until the state changes)."""
        if self._frame is not None:
            return self._frame
        ui = UI("")
        top = self.top
        if top is not None:
            x, y, w, h = CONTENT
            ui.add("window", top.title, 0, 0, SCREEN_W, SCREEN_H - TASKBAR_H, app=top.name)
            ui.add("title bar", top.title, 0, 0, SCREEN_W, TITLE_H, app=top.name)
            ui.add("button", "Close", SCREEN_W - 44, 4, 40, TITLE_H - 8, app="", click=("close", top.name),
                   text="X")
            app_ui = UI(top.name)
            top.build(app_ui, x, y, w, h)
            base = len(ui.widgets)
            self._overlay_start = next(
                (base + i for i, wdg in enumerate(app_ui.widgets) if wdg.role in ("dialog", "menu")),
                None,
            )
            ui.widgets.extend(app_ui.widgets)
        else:
            self._overlay_start = None
            ui.add("desktop", "Desktop", 0, 0, SCREEN_W, SCREEN_H - TASKBAR_H, visible=False)
        ui.add("taskbar", "Taskbar", 0, SCREEN_H - TASKBAR_H, SCREEN_W, TASKBAR_H, visible=False)
        for i, app in enumerate(self.apps.values()):
            states = ("active",) if top is app else ("open",) if app.name in self.windows else ()
            ui.button(app.title, 8 + i * (TASKBAR_BUTTON_W + 8), SCREEN_H - TASKBAR_H + 4,
                      TASKBAR_BUTTON_W, TASKBAR_H - 8, ("launch", app.name), states=states)
        widgets = ui.widgets
        if self.focus is not None:
            for wdg in widgets:
                if wdg.field is not None and (wdg.app, wdg.field) == self.focus and "focused" not in wdg.states:
                    wdg.states = (*wdg.states, "focused")
        self._frame = widgets
        self._rows = [w for w in widgets if w.visible]
        return widgets

    def visible_widgets(self) -> list[Widget]:
        """The widgets listed as a11y rows, in row-id order."""
        self.frame()
        return self._rows

    def a11y_text(self) -> str:
        self.frame()
        return format_rows([w.row(i) for i, w in enumerate(self._rows)], self.max_rows)

    # ----------------------------------------------------------------- input
    def _resolve(self, target: tuple) -> Widget:
        if len(target) == 1 and isinstance(target[0], Ref):
            ref = target[0].id
            self.frame()
            limit = min(len(self._rows), self.max_rows)
            if ref >= limit:
                raise ActionError(f"no element #{ref} on screen (ids go from 0 to {limit - 1})")
            return self._rows[ref]
        x, y = target
        if not (0 <= x < SCREEN_W and 0 <= y < SCREEN_H):
            raise ActionError(f"point ({x}, {y}) is off the {SCREEN_W}x{SCREEN_H} screen")
        hit = hit_test(self.frame(), x, y)
        assert hit is not None  # the desktop / window background covers the whole screen
        return hit

    def _app_of(self, widget: Widget) -> App | None:
        return self.apps.get(widget.app) if widget.app else None

    def _blocked(self, widget: Widget) -> bool:
        """Whether a modal dialog/menu of the top app sits in front of ``widget``.

        Shell widgets (taskbar, window close button) stay usable, as on a real desktop.
        """
        top = self.top
        if top is None or widget.app != top.name or (top.dialog is None and top.menu is None):
            return False
        frame = self.frame()
        return self._overlay_start is not None and frame.index(widget) < self._overlay_start

    def click(self, target: tuple, kind: str = "click") -> str | None:
        widget = self._resolve(target)
        self.pointer = widget.center if len(target) == 1 else (target[0], target[1])
        top = self.top
        if self._blocked(widget):
            if top.dialog is None:  # clicking elsewhere dismisses a context menu
                top.menu = None
                return "menu closed"
            raise AppError(f"dialog {top.dialog!r} is open; finish it or press escape first")
        cmd = {"click": widget.click, "double_click": widget.double or widget.click,
               "right_click": widget.right}[kind]
        if widget.field is not None and kind != "right_click":
            self.focus = (widget.app, widget.field)
            self.select_all = False
            if cmd is None:
                return None
        if cmd is None:
            return None  # clicked something inert: no effect, no error
        return self._run(widget, cmd)

    def _run(self, widget: Widget, cmd: tuple) -> str | None:
        if widget.app == "":
            if cmd[0] == "launch":
                self.open_app(cmd[1])
                return None
            if cmd[0] == "close":
                self.close_app(cmd[1])
                return None
            raise AssertionError(cmd)
        return self.apps[widget.app].on_command(cmd)

    def type_text(self, text: str) -> str | None:
        if self.focus is None:
            raise AppError("no text field has focus; click a text field first")
        app_name, key = self.focus
        app = self.apps[app_name]
        current = app.fields.get(key, "")
        new = text if self.select_all else current + text
        if "\n" in text and not self._focused_multiline():
            raise AppError("this field is a single line; press enter to submit instead of typing \\n")
        app.fields[key] = new
        self.select_all = False
        return None

    def _focused_multiline(self) -> bool:
        for w in self.frame():
            if w.field is not None and (w.app, w.field) == self.focus:
                return w.multiline
        return False

    def hotkey(self, keys: tuple[str, ...]) -> str | None:
        top = self.top
        if keys == ("escape",):
            if top is not None and top.on_escape():
                return None
            return None
        if self.focus is not None:
            app = self.apps[self.focus[0]]
            key = self.focus[1]
            if keys == ("ctrl", "a"):
                self.select_all = True
                return None
            if keys in (("backspace",), ("delete",)):
                text = app.fields.get(key, "")
                app.fields[key] = "" if self.select_all else text[:-1]
                self.select_all = False
                return None
            if keys == ("enter",):
                if self._focused_multiline():
                    return self.type_text("\n")
                return app.on_submit(key)
        if top is not None and top.on_key(keys):
            return None
        if keys == ("alt", "f4") and top is not None:
            self.close_app(top.name)
            return None
        return None  # unknown combinations do nothing, as on a real desktop

    def scroll(self, target: tuple, amount: int) -> str | None:
        if target:
            widget = self._resolve(target)
            app = self._app_of(widget)
            if app is None:
                raise AppError(f"{widget.role} {widget.name!r} cannot scroll")
            app.on_scroll(widget.scroll, amount)
            return None
        if self.top is None:
            raise AppError("nothing to scroll: no window is open")
        self.top.on_scroll(None, amount)
        return None

    def drag(self, source: tuple, target: tuple) -> str | None:
        src = self._resolve(source)
        dst = self._resolve(target)
        if src.drag is None:
            raise AppError(f"{src.role} {src.name!r} cannot be dragged")
        if dst.drop is None:
            raise AppError(f"cannot drop onto {dst.role} {dst.name!r}")
        app = self._app_of(dst)
        assert app is not None
        return app.on_drop(src.drag, dst.drop)

    # ----------------------------------------------------------------- actions
    def apply(self, action: Action) -> str | None:
        """Apply a parsed action. Raises ActionError/AppError/VFSError for impossible ones.

        References (``#12``) resolve against the frame the agent last saw; the frame is rebuilt after.
        """
        try:
            return self._apply(action)
        finally:
            self.invalidate()

    def _apply(self, action: Action) -> str | None:
        name, args = action.name, action.args
        if action.kind == "api":
            app = self.apps.get(action.app or "")
            if app is None:
                raise AppError(f"no app named {action.app!r}")
            return app.call_api(action.method, args)
        if name in ("click", "double_click", "right_click"):
            return self.click(args, name)
        if name == "type":
            return self.type_text(args[0])
        if name == "hotkey":
            return self.hotkey(tuple(args))
        if name == "scroll":
            return self.scroll(tuple(args[:-1]), args[-1])
        if name == "drag":
            if len(args) == 4:
                return self.drag(args[:2], args[2:])
            return self.drag(args[:1], args[1:])
        if name in ("done", "fail"):
            self.declared = name
            return None
        raise ActionError(f"action {name!r} is not supported by this desktop")

    def state(self) -> dict:
        """Domain state of the whole desktop (files + every app), for verifiers and equality tests."""
        return {"files": self.vfs.snapshot(), **{n: a.state() for n, a in self.apps.items()}}


__all__ = ["AppError", "Desktop", "VFSError"]
