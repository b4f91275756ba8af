"""Text editor: one document, a multi-line text area, Open / Save / Save As / Replace dialogs."""

from __future__ import annotations

from env_server.actions import api
from env_server.sim.apps.base import App, AppError
from env_server.sim.vfs import normalize
from env_server.sim.widgets import UI, Command

LINE_H = 20
DIALOG_FIELDS = {"Open": ("path",), "Save As": ("path",), "Replace": ("find", "replace")}
FIELD_LABELS = {"path": "Path", "find": "Find", "replace": "Replace with"}


class EditorApp(App):
    name = "editor"
    title = "Editor"
    API = (
        api("editor.open", ("path", "str"), doc="open a text file"),
        api("editor.set_text", ("text", "str"), doc="replace the whole document"),
        api("editor.append", ("text", "str"), doc="add text at the end of the document"),
        api("editor.replace", ("old", "str"), ("new", "str"), doc="replace every occurrence"),
        api("editor.save", doc="save the document to its file"),
        api("editor.save_as", ("path", "str"), doc="save the document to a new path"),
    )
    OPENS_WINDOW = frozenset({"open"})

    def __init__(self, desktop):
        super().__init__(desktop)
        self.path: str | None = None
        self.fields["body"] = ""

    @property
    def body(self) -> str:
        return self.fields["body"]

    def dirty(self) -> bool:
        if self.path is None:
            return bool(self.body)
        return not self.vfs.is_file(self.path) or self.vfs.read(self.path) != self.body

    # ----------------------------------------------------------------- layout
    def build(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        bx = x + 8
        for label, width, cmd in (("Open", 70, ("dialog", "Open")), ("Save", 70, ("save",)),
                                  ("Save As", 90, ("dialog", "Save As")),
                                  ("Replace", 90, ("dialog", "Replace"))):
            ui.button(label, bx, y + 8, width, 30, cmd)
            bx += width + 8
        status = f"File: {self.path or 'Untitled'}" + (" (modified)" if self.dirty() else "")
        ui.label(status, bx + 16, y + 12, x + w - bx - 24, 24, role="status")
        ax, ay, aw, ah = x + 8, y + 48, w - 16, h - 56
        lines = self.body.split("\n")
        visible = ah // LINE_H
        start = min(self.scroll_pos.get("body", 0), max(0, len(lines) - 1))
        ui.add("text area", "Document", ax, ay, aw, ah, field="body", multiline=True, scroll="body",
               states=("editable",), text="")
        for i, line in enumerate(lines[start:start + visible]):
            ui.add("text line", line, ax + 4, ay + 2 + i * LINE_H, aw - 8, LINE_H, field="body",
                   multiline=True, scroll="body")
        if self.dialog is not None:
            self._build_dialog(ui, x, y, w, h)

    def _build_dialog(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        keys = DIALOG_FIELDS[self.dialog]
        dw, dh = 520, 90 + 48 * len(keys)
        dx, dy = x + (w - dw) // 2, y + (h - dh) // 2
        ui.add("dialog", self.dialog, dx, dy, dw, dh)
        for i, key in enumerate(keys):
            ui.field(FIELD_LABELS[key], self.fields.get(key, ""), dx + 16, dy + 16 + i * 48, dw - 32, 34,
                     key, focused=self.focused(key))
        ok = {"Open": "Open", "Save As": "Save", "Replace": "Replace All"}[self.dialog]
        ui.button(ok, dx + dw - 236, dy + dh - 50, 120, 34, ("ok",))
        ui.button("Cancel", dx + dw - 108, dy + dh - 50, 92, 34, ("cancel",))

    # ----------------------------------------------------------------- events
    def on_command(self, cmd: Command) -> str | None:
        op = cmd[0]
        if op == "dialog":
            fields = {k: "" for k in DIALOG_FIELDS[cmd[1]]}
            if cmd[1] == "Save As" and self.path:
                fields["path"] = self.path
            self.open_dialog(cmd[1], fields)
            if cmd[1] == "Save As" and self.path:
                self.desktop.select_all = True
            return None
        if op == "save":
            return self._save_or_ask()
        if op == "ok":
            return self._confirm()
        if op == "cancel":
            self.close_dialog()
            return None
        return super().on_command(cmd)

    def _save_or_ask(self) -> str | None:
        if self.path is None:
            self.on_command(("dialog", "Save As"))
            return "choose where to save"
        self.api_save()
        return None

    def _confirm(self) -> str | None:
        dialog = self.dialog
        if dialog == "Open":
            self.api_open(self.fields.get("path", ""))
        elif dialog == "Save As":
            self.api_save_as(self.fields.get("path", ""))
        elif dialog == "Replace":
            self.api_replace(self.fields.get("find", ""), self.fields.get("replace", ""))
        self.close_dialog()
        return None

    def on_submit(self, key: str) -> str | None:
        if self.dialog is None:
            return None
        keys = DIALOG_FIELDS[self.dialog]
        if key != keys[-1]:  # enter in an earlier field moves to the next one
            self.focus(keys[keys.index(key) + 1])
            return None
        return self._confirm()

    def on_key(self, keys: tuple[str, ...]) -> bool:
        if self.dialog is not None:
            return False
        if keys == ("ctrl", "s"):
            self._save_or_ask()
            return True
        if keys == ("ctrl", "o"):
            self.on_command(("dialog", "Open"))
            return True
        if keys == ("ctrl", "h"):
            self.on_command(("dialog", "Replace"))
            return True
        return False

    def on_scroll(self, target: str | None, amount: int) -> None:
        lines = self.body.count("\n") + 1
        self.scroll_window("body", amount, lines, (648 - 56) // LINE_H)

    def state(self) -> dict:
        return {"path": self.path, "buffer": self.body}

    # ----------------------------------------------------------------- API
    def api_open(self, path: str) -> None:
        path = normalize(path)
        if self.vfs.is_dir(path):
            raise AppError(f"is a folder, not a file: {path}")
        self.fields["body"] = self.vfs.read(path)
        self.path = path
        self.scroll_pos["body"] = 0

    def api_set_text(self, text: str) -> None:
        self.fields["body"] = text

    def api_append(self, text: str) -> None:
        self.fields["body"] = self.body + text

    def api_replace(self, old: str, new: str) -> str:
        if not old:
            raise AppError("the text to find is empty")
        count = self.body.count(old)
        if count == 0:
            raise AppError(f"text {old!r} not found in the document")
        self.fields["body"] = self.body.replace(old, new)
        return f"replaced {count} occurrence(s)"

    def api_save(self) -> None:
        if self.path is None:
            raise AppError("the document has no file yet; use save_as")
        self.vfs.write(self.path, self.body)

    def api_save_as(self, path: str) -> None:
        path = normalize(path)
        self.vfs.write(path, self.body)
        self.path = path
