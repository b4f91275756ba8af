"""File manager over the virtual file system: toolbar, places sidebar, a scrolling item list, dialogs,
a context menu, clipboard and drag-and-drop."""

from __future__ import annotations

from env_server.actions import api
from env_server.sim.apps.base import App, AppError
from env_server.sim.vfs import HOME, check_name, normalize, split
from env_server.sim.widgets import UI, Command

ROW_H = 28
PLACES = ("Home", "Documents", "Downloads", "Pictures", "Music", "Desktop")
SHEET_EXTENSIONS = (".csv",)
TOOLBAR = (("Up", 70, ("up",)), ("New Folder", 110, ("new_folder",)), ("New File", 100, ("new_file",)),
           ("Rename", 90, ("rename",)), ("Delete", 80, ("delete",)), ("Copy", 70, ("copy",)),
           ("Cut", 60, ("cut",)), ("Paste", 70, ("paste",)))
MENU_ITEMS = ("Open", "Rename", "Delete", "Copy", "Cut")


def _place_path(place: str) -> str:
    return HOME if place == "Home" else f"{HOME}/{place}"


class FilesApp(App):
    name = "files"
    title = "Files"
    API = (
        api("files.mkdir", ("path", "str"), doc="create a folder"),
        api("files.touch", ("path", "str"), doc="create an empty file"),
        api("files.rename", ("path", "str"), ("new_name", "str"), doc="rename in place"),
        api("files.move", ("src", "str"), ("dst", "str"), doc="move into a folder or to a new path"),
        api("files.copy", ("src", "str"), ("dst", "str"), doc="copy into a folder or to a new path"),
        api("files.delete", ("path", "str"), doc="delete a file or folder"),
        api("files.open", ("path", "str"), doc="show a folder, or open a file in its app"),
    )
    OPENS_WINDOW = frozenset({"open"})

    def __init__(self, desktop):
        super().__init__(desktop)
        self.cwd = HOME
        self.selected: str | None = None
        self.clipboard: tuple[str, bool] | None = None  # (path, cut)
        self.fields["location"] = HOME

    # ----------------------------------------------------------------- helpers
    def _path(self, name: str) -> str:
        return f"{self.cwd.rstrip('/')}/{name}"

    def goto(self, path: str) -> None:
        path = normalize(path, self.cwd)
        if not self.vfs.is_dir(path):
            raise AppError(f"no such folder: {path}")
        self.cwd = path
        self.selected = None
        self.scroll_pos["list"] = 0
        self.fields["location"] = path

    def _need_selection(self) -> str:
        if self.selected is None or not self.vfs.exists(self._path(self.selected)):
            raise AppError("select a file or folder first")
        return self._path(self.selected)

    def open_path(self, path: str) -> str | None:
        path = normalize(path, self.cwd)
        if self.vfs.is_dir(path):
            self.desktop.open_app(self.name)
            self.goto(path)
            return None
        if not self.vfs.is_file(path):
            raise AppError(f"no such file or folder: {path}")
        target = "sheet" if path.endswith(SHEET_EXTENSIONS) else "editor"
        return self.desktop.apps[target].call_api("open", (path,))

    # ----------------------------------------------------------------- layout
    def build(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        bx = x + 8
        for label, width, cmd in TOOLBAR:
            ui.button(label, bx, y + 8, width, 30, cmd)
            bx += width + 8
        ui.field("Location", self.fields["location"], bx + 8, y + 8, x + w - bx - 16, 30, "location")
        top = y + 52
        ui.label("Places", x + 8, top, 160, 24, role="heading")
        for i, place in enumerate(PLACES):
            path = _place_path(place)
            states = ("selected",) if path == self.cwd else ()
            ui.add("link", place, x + 8, top + 28 + i * ROW_H, 160, ROW_H - 2, click=("goto", path),
                   drop=("into", path), states=states)
        entries = self.vfs.listdir(self.cwd)
        list_x, list_w = x + 180, w - 188
        list_h = h - 52 - 32
        visible = list_h // ROW_H
        start = self.scroll_pos.get("list", 0)
        ui.add("list", f"Contents of {self.cwd}", list_x, top, list_w, visible * ROW_H,
               click=("select", None), right=("menu", None), scroll="list")
        for i, node in enumerate(entries[start:start + visible]):
            kind = "folder" if node.is_dir else "file"
            states = ("selected",) if node.name == self.selected else ()
            path = self._path(node.name)
            ui.add(kind, node.name, list_x + 4, top + i * ROW_H, list_w - 8, ROW_H - 2, states=states,
                   click=("select", node.name), double=("open", node.name), right=("menu", node.name),
                   drag=("entry", path), drop=("into", path) if node.is_dir else None)
        hidden = len(entries) - len(entries[start:start + visible])
        status = f"{len(entries)} items" + (f", {hidden} not shown (scroll)" if hidden else "")
        if self.selected:
            status += f", selected: {self.selected}"
        ui.label(status, x + 8, y + h - 28, w - 16, 24, role="status")
        if self.menu is not None:
            self._build_menu(ui)
        if self.dialog is not None:
            self._build_dialog(ui, x, y, w, h)

    def _build_menu(self, ui: UI) -> None:
        target, mx, my = self.menu
        items = MENU_ITEMS if target else ("New Folder", "New File", "Paste")
        ui.add("menu", f"Menu for {target}" if target else "Menu", mx, my, 160, len(items) * 28 + 4)
        for i, item in enumerate(items):
            ui.add("menu item", item, mx + 2, my + 2 + i * 28, 156, 26, click=("menu_do", item, target))

    def _build_dialog(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        dw, dh = 460, 170
        dx, dy = x + (w - dw) // 2, y + (h - dh) // 2
        ui.add("dialog", self.dialog, dx, dy, dw, dh)
        prompt = {"New Folder": "Name of the new folder", "New File": "Name of the new file",
                  "Rename": "New name"}[self.dialog]
        ui.label(prompt, dx + 16, dy + 16, dw - 32, 24)
        ui.field("Name", self.fields.get("name", ""), dx + 16, dy + 48, dw - 32, 32, "name",
                 focused=self.focused("name"))
        ui.button("OK", dx + dw - 196, dy + dh - 52, 84, 34, ("ok",))
        ui.button("Cancel", dx + dw - 100, dy + dh - 52, 84, 34, ("cancel",))

    # ----------------------------------------------------------------- events
    def on_command(self, cmd: Command) -> str | None:
        op = cmd[0]
        if op == "select":
            self.selected = cmd[1]
            self.menu = None
            return None
        if op == "open":
            return self.open_path(self._path(cmd[1]))
        if op == "goto":
            self.goto(cmd[1])
            return None
        if op == "up":
            self.goto(split(self.cwd)[0] if self.cwd != "/" else "/")
            return None
        if op in ("new_folder", "new_file"):
            self.open_dialog("New Folder" if op == "new_folder" else "New File", {"name": ""})
            return None
        if op == "rename":
            path = self._need_selection()
            self.open_dialog("Rename", {"name": split(path)[1]})
            self.desktop.select_all = True
            return None
        if op == "delete":
            self.vfs.delete(self._need_selection())
            self.selected = None
            return None
        if op in ("copy", "cut"):
            self.clipboard = (self._need_selection(), op == "cut")
            return f"{'cut' if op == 'cut' else 'copied'} {split(self.clipboard[0])[1]}"
        if op == "paste":
            return self._paste()
        if op == "menu":
            self.selected = cmd[1] if cmd[1] else self.selected
            px, py = self.desktop.pointer  # the menu opens at the pointer, kept on screen
            n_items = len(MENU_ITEMS) if cmd[1] else 3
            self.menu = (cmd[1], min(px, 1280 - 164), min(py, 680 - n_items * 28 - 8))
            return None
        if op == "menu_do":
            item, target = cmd[1], cmd[2]
            self.menu = None
            if target:
                self.selected = target
            mapping = {"Open": ("open", target), "Rename": ("rename",), "Delete": ("delete",),
                       "Copy": ("copy",), "Cut": ("cut",), "New Folder": ("new_folder",),
                       "New File": ("new_file",), "Paste": ("paste",)}
            return self.on_command(mapping[item])
        if op == "ok":
            return self.on_submit("name")
        if op == "cancel":
            self.close_dialog()
            return None
        return super().on_command(cmd)

    def _paste(self) -> str | None:
        if self.clipboard is None:
            raise AppError("the clipboard is empty; copy or cut something first")
        src, cut = self.clipboard
        if cut:
            self.vfs.move(src, self.cwd)
            self.clipboard = None
        else:
            self.vfs.copy(src, self.cwd)
        return None

    def on_submit(self, key: str) -> str | None:
        if key == "location":
            return self.open_path(self.fields["location"])
        if key != "name" or self.dialog is None:
            return None
        name = check_name(self.fields.get("name", "").strip())
        if self.dialog == "New Folder":
            self.vfs.mkdir(self._path(name))
        elif self.dialog == "New File":
            path = self._path(name)
            if self.vfs.exists(path):
                raise AppError(f"already exists: {path}")
            self.vfs.write(path, "")
        elif self.dialog == "Rename":
            self.vfs.move(self._need_selection(), self._path(name))
        self.selected = name
        self.close_dialog()
        return None

    def on_key(self, keys: tuple[str, ...]) -> bool:
        table = {("ctrl", "c"): ("copy",), ("ctrl", "x"): ("cut",), ("ctrl", "v"): ("paste",),
                 ("delete",): ("delete",), ("f2",): ("rename",), ("backspace",): ("up",),
                 ("ctrl", "shift", "n"): ("new_folder",)}
        if keys in table and self.dialog is None:
            self.on_command(table[keys])
            return True
        return False

    def on_scroll(self, target: str | None, amount: int) -> None:
        total = len(self.vfs.listdir(self.cwd))
        self.scroll_window("list", amount, total, (648 - 84) // ROW_H)

    def on_drop(self, payload: Command, target: Command) -> str | None:
        if payload[0] != "entry" or target[0] != "into":
            raise AppError("cannot drop that here")
        self.vfs.move(payload[1], target[1])
        self.selected = None
        return None

    def on_open(self) -> None:
        if not self.vfs.is_dir(self.cwd):
            self.goto(HOME)

    # ----------------------------------------------------------------- API
    def api_mkdir(self, path: str) -> None:
        self.vfs.mkdir(normalize(path, self.cwd))

    def api_touch(self, path: str) -> None:
        self.vfs.touch(normalize(path, self.cwd))

    def api_rename(self, path: str, new_name: str) -> None:
        if "/" in new_name:
            raise AppError("new_name is a name, not a path; use files.move to move elsewhere")
        path = normalize(path, self.cwd)
        self.vfs.move(path, f"{split(path)[0].rstrip('/')}/{check_name(new_name)}")

    def api_move(self, src: str, dst: str) -> None:
        self.vfs.move(normalize(src, self.cwd), normalize(dst, self.cwd))

    def api_copy(self, src: str, dst: str) -> None:
        self.vfs.copy(normalize(src, self.cwd), normalize(dst, self.cwd))

    def api_delete(self, path: str) -> None:
        self.vfs.delete(normalize(path, self.cwd))
        self.selected = None

    def api_open(self, path: str) -> str | None:
        return self.open_path(path)
