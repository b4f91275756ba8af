"""The per-display helper process of the ``x11`` backend.

Runs under the *system* Python (``/usr/bin/python3``) because it needs Debian's ``python3-xlib`` and the
GObject-introspection binding of AT-SPI (``gir1.2-atspi-2.0``), neither of which is installed in the
project's virtualenv. It imports nothing from the project.

Protocol: one JSON object per line on stdin; one JSON object per line on stdout
(``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``). Screenshots do not go through here: the
backend reads Xvfb's memory-mapped framebuffer directly.

Input goes through the XTEST extension; windows come from the EWMH properties the window manager sets;
the accessibility tree comes from AT-SPI over the env's own D-Bus session bus.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import OrderedDict

from Xlib import XK, X, display, protocol
from Xlib.ext import xtest

try:  # accessibility is optional: without it the backend lists windows only
    import gi

    gi.require_version("Atspi", "2.0")
    from gi.repository import Atspi

    Atspi.set_timeout(2000, 10000)
except Exception as _err:  # pragma: no cover - depends on the machine
    Atspi = None
    ATSPI_ERROR = f"{type(_err).__name__}: {_err}"
else:
    ATSPI_ERROR = ""

KEYSYMS = {
    "ctrl": "Control_L", "alt": "Alt_L", "shift": "Shift_L", "meta": "Super_L", "enter": "Return",
    "escape": "Escape", "tab": "Tab", "backspace": "BackSpace", "delete": "Delete", "space": "space",
    "up": "Up", "down": "Down", "left": "Left", "right": "Right", "home": "Home", "end": "End",
    "pageup": "Prior", "pagedown": "Next",
}
CHAR_KEYSYMS = {"\n": "Return", "\t": "Tab", "\b": "BackSpace"}
# AT-SPI states worth showing to an agent (others, like "sensitive" or "showing", are the default)
STATES = {"focused", "selected", "checked", "pressed", "expanded", "editable", "active", "armed",
          "indeterminate"}
# structural roles shown only when they carry a name
STRUCTURAL = {"filler", "panel", "scroll pane", "layered pane", "split pane", "viewport", "section",
              "page tab list", "page tab", "redundant object", "unknown", "invalid", "application",
              "tool bar", "menu bar", "status bar", "separator", "scroll bar", "table", "tree table",
              "tree", "list", "form", "grouping", "box", "frame", "dialog", "window", "root pane",
              "glass pane", "option pane", "internal frame", "desktop frame", "file chooser"}
TEXT_ROLES = {"text", "entry", "password text", "terminal", "paragraph", "document text",
              "spin button", "combo box"}
MAX_NODES = 4000
MAX_DEPTH = 40


class Agent:
    def __init__(self) -> None:
        self.d = display.Display()
        self.root = self.d.screen().root
        self.width = self.d.screen().width_in_pixels
        self.height = self.d.screen().height_in_pixels
        if not self.d.has_extension("XTEST"):
            raise RuntimeError("the X server has no XTEST extension")
        self.atom = self.d.intern_atom
        self.nodes: list = []  # accessibles of the last a11y listing, by index
        self._free: list[int] | None = None  # keycodes without keysyms
        self._remapped: OrderedDict[int, int] = OrderedDict()  # keysym -> borrowed keycode

    # ------------------------------------------------------------------ input
    def _sync(self) -> None:
        self.d.sync()

    def move(self, x: int, y: int) -> None:
        x = max(0, min(self.width - 1, int(x)))
        y = max(0, min(self.height - 1, int(y)))
        xtest.fake_input(self.d, X.MotionNotify, x=x, y=y)
        self._sync()

    def button(self, b: int, press: bool) -> None:
        xtest.fake_input(self.d, X.ButtonPress if press else X.ButtonRelease, b)
        self._sync()

    def op_click(self, x: int, y: int, button: int = 1, count: int = 1) -> dict:
        self.move(x, y)
        time.sleep(0.01)
        for i in range(count):
            self.button(button, True)
            self.button(button, False)
            if i + 1 < count:
                time.sleep(0.04)
        return {}

    def op_drag(self, x1: int, y1: int, x2: int, y2: int) -> dict:
        self.move(x1, y1)
        self.button(1, True)
        steps = 8
        for i in range(1, steps + 1):
            time.sleep(0.015)
            self.move(x1 + (x2 - x1) * i // steps, y1 + (y2 - y1) * i // steps)
        time.sleep(0.03)
        self.button(1, False)
        return {}

    def op_scroll(self, amount: int, x: int | None = None, y: int | None = None) -> dict:
        if x is not None and y is not None:
            self.move(x, y)
        b = 5 if amount > 0 else 4
        for _ in range(min(abs(int(amount)), 50)):
            self.button(b, True)
            self.button(b, False)
        return {}

    def _keycode(self, keysym: int) -> tuple[int, bool]:
        """A keycode producing ``keysym`` and whether Shift is needed.

        Keysyms missing from the keymap get one of the unused keycodes (least recently used first), so a
        character typed a moment ago is not re-mapped before the application has read its event.
        """
        if keysym in self._remapped:
            self._remapped.move_to_end(keysym)
            return self._remapped[keysym], False
        for code, index in self.d.keysym_to_keycodes(keysym):
            if index in (0, 1):
                return code, index == 1
        if self._free is None:
            lo = self.d.display.info.min_keycode
            hi = self.d.display.info.max_keycode
            mapping = self.d.get_keyboard_mapping(lo, hi - lo + 1)
            self._free = [lo + i for i in range(len(mapping)) if not any(mapping[i])]
        if self._free:
            code = self._free.pop()
        elif self._remapped:
            _, code = self._remapped.popitem(last=False)
            time.sleep(0.05)  # let clients read events of the old mapping first
        else:
            raise RuntimeError("no spare keycode to type this character")
        self.d.change_keyboard_mapping(code, [(keysym, keysym)])
        self._sync()
        time.sleep(0.02)  # let clients process MappingNotify
        self._remapped[keysym] = code
        return code, False

    def _tap(self, keysym: int) -> None:
        code, shift = self._keycode(keysym)
        shift_code = self.d.keysym_to_keycode(XK.string_to_keysym("Shift_L"))
        if shift:
            xtest.fake_input(self.d, X.KeyPress, shift_code)
        xtest.fake_input(self.d, X.KeyPress, code)
        xtest.fake_input(self.d, X.KeyRelease, code)
        if shift:
            xtest.fake_input(self.d, X.KeyRelease, shift_code)
        self._sync()

    def op_type(self, text: str) -> dict:
        for ch in text:
            if ch in CHAR_KEYSYMS:
                keysym = XK.string_to_keysym(CHAR_KEYSYMS[ch])
            elif 0x20 <= ord(ch) <= 0x7E or 0xA0 <= ord(ch) <= 0xFF:
                keysym = ord(ch)
            else:
                keysym = 0x01000000 | ord(ch)
            self._tap(keysym)
        return {}

    def op_keys(self, keys: list[str]) -> dict:
        codes = []
        for k in keys:
            name = KEYSYMS.get(k, k.upper() if len(k) > 1 else k)  # f5 -> F5, a -> a
            keysym = XK.string_to_keysym(name)
            if not keysym:
                raise ValueError(f"unknown key {k!r}")
            code, _ = self._keycode(keysym)
            codes.append(code)
        for c in codes:
            xtest.fake_input(self.d, X.KeyPress, c)
        for c in reversed(codes):
            xtest.fake_input(self.d, X.KeyRelease, c)
        self._sync()
        return {}

    # ------------------------------------------------------------------ windows
    def _prop(self, win, name: str, kind=X.AnyPropertyType):
        try:
            p = win.get_full_property(self.atom(name), kind)
        except Exception:
            return None
        return None if p is None else p.value

    def _title(self, win) -> str:
        v = self._prop(win, "_NET_WM_NAME", self.atom("UTF8_STRING"))
        if v is None:
            v = self._prop(win, "WM_NAME")
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        return str(v or "")

    def op_windows(self) -> dict:
        ids = self._prop(self.root, "_NET_CLIENT_LIST_STACKING") or []
        active = self._prop(self.root, "_NET_ACTIVE_WINDOW")
        active_id = int(active[0]) if active is not None and len(active) else 0
        out = []
        for wid in reversed(list(ids)):  # top of the stack first
            win = self.d.create_resource_object("window", int(wid))
            try:
                geo = win.get_geometry()
                pos = win.translate_coords(self.root, 0, 0)
                attrs = win.get_attributes()
            except Exception:
                continue
            if attrs.map_state != X.IsViewable:
                continue
            ext = self._prop(win, "_NET_FRAME_EXTENTS")
            left, right, top, bottom = [*ext, 0, 0, 0, 0][:4] if ext is not None else (0, 0, 0, 0)
            pid = self._prop(win, "_NET_WM_PID")
            wm_class = self._prop(win, "WM_CLASS")
            cls = wm_class.split(b"\0")[1].decode() if isinstance(wm_class, bytes) and wm_class.count(b"\0") >= 2 else ""
            wtype = self._prop(win, "_NET_WM_WINDOW_TYPE") or []
            dialog = self.atom("_NET_WM_WINDOW_TYPE_DIALOG") in list(wtype)
            out.append({
                "id": int(wid), "title": self._title(win), "pid": int(pid[0]) if pid is not None and len(pid) else 0,
                "cls": cls, "x": -pos.x, "y": -pos.y, "w": geo.width, "h": geo.height,
                "frame": [-pos.x - left, -pos.y - top, geo.width + left + right, geo.height + top + bottom],
                "title_h": top, "active": int(wid) == active_id, "dialog": dialog,
            })
        return {"windows": out}

    def op_wm(self) -> dict:
        """Whether an EWMH window manager runs (it sets _NET_SUPPORTING_WM_CHECK on the root)."""
        return {"running": self._prop(self.root, "_NET_SUPPORTING_WM_CHECK") is not None}

    def op_activate(self, id: int) -> dict:
        win = self.d.create_resource_object("window", int(id))
        ev = protocol.event.ClientMessage(window=win, client_type=self.atom("_NET_ACTIVE_WINDOW"),
                                          data=(32, [2, X.CurrentTime, 0, 0, 0]))
        self.root.send_event(ev, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
        self._sync()
        return {}

    def op_close_window(self, id: int) -> dict:
        win = self.d.create_resource_object("window", int(id))
        ev = protocol.event.ClientMessage(window=win, client_type=self.atom("_NET_CLOSE_WINDOW"),
                                          data=(32, [X.CurrentTime, 2, 0, 0, 0]))
        self.root.send_event(ev, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
        self._sync()
        return {}

    # ------------------------------------------------------------------ accessibility
    def op_a11y(self, max_nodes: int = MAX_NODES) -> dict:
        """Visible accessibility nodes of every application, in tree order, grouped by frame."""
        if Atspi is None:
            return {"available": False, "error": ATSPI_ERROR, "nodes": []}
        self.nodes = []
        out = []
        desktop = Atspi.get_desktop(0)
        for i in range(desktop.get_child_count()):
            try:
                app = desktop.get_child_at_index(i)
                pid = app.get_process_id() if app is not None else 0
            except Exception:
                continue
            if app is None:
                continue
            for j in range(app.get_child_count()):
                try:
                    top = app.get_child_at_index(j)
                except Exception:
                    continue
                if top is None:
                    continue
                self._walk(top, pid, top, 0, out, max_nodes)
        return {"available": True, "nodes": out}

    def _walk(self, acc, pid: int, top, depth: int, out: list, max_nodes: int) -> None:
        if len(out) >= max_nodes or depth > MAX_DEPTH:
            return
        try:
            sset = acc.get_state_set()
            if not sset.contains(Atspi.StateType.SHOWING):
                return
            role = acc.get_role_name() or "unknown"
            name = acc.get_name() or ""
        except Exception:
            return
        text = None
        if not name and role in TEXT_ROLES:
            try:
                ti = acc.get_text_iface()
                if ti is not None:
                    text = Atspi.Text.get_text(ti, 0, min(Atspi.Text.get_character_count(ti), 400))
            except Exception:
                text = None
        interesting = bool(name or text) or role not in STRUCTURAL | {"table cell", "label", "icon"}
        if depth == 0 or role in ("frame", "dialog", "window", "alert"):
            interesting = True
        if interesting:  # extents cost a D-Bus round trip: only for rows that will be shown
            try:
                comp = acc.get_component_iface()
                r = comp.get_extents(Atspi.CoordType.SCREEN) if comp is not None else None
            except Exception:
                r = None
            if r is not None and r.width > 0 and r.height > 0:
                states = {s.value_nick.replace("-", "_") for s in sset.get_states()}
                self.nodes.append(acc)
                out.append({"i": len(self.nodes) - 1, "role": role, "name": name if text is None else text,
                            "box": [r.x, r.y, r.width, r.height], "states": sorted(states & STATES)
                            + (["disabled"] if "enabled" not in states and role not in STRUCTURAL else []),
                            "pid": pid, "top": depth == 0, "depth": depth})
        try:
            n = acc.get_child_count()
        except Exception:
            return
        for k in range(min(n, 500)):
            try:
                child = acc.get_child_at_index(k)
            except Exception:
                continue
            if child is not None:
                self._walk(child, pid, top, depth + 1, out, max_nodes)

    def _node(self, i: int):
        if not 0 <= i < len(self.nodes):
            raise ValueError(f"no accessibility node {i}; list the tree again")
        return self.nodes[i]

    def op_get_text(self, i: int) -> dict:
        ti = self._node(i).get_text_iface()
        if ti is None:
            raise ValueError("that element has no text")
        return {"text": Atspi.Text.get_text(ti, 0, Atspi.Text.get_character_count(ti))}

    def op_set_text(self, i: int, text: str) -> dict:
        et = self._node(i).get_editable_text_iface()
        if et is None:
            raise ValueError("that element is not editable")
        if not Atspi.EditableText.set_text_contents(et, text):
            raise RuntimeError("the application refused the new text")
        return {}

    def op_do_action(self, i: int, name: str = "") -> dict:
        acc = self._node(i)
        ai = acc.get_action_iface()
        if ai is None:
            raise ValueError("that element has no actions")
        n = Atspi.Action.get_n_actions(ai)
        names = [Atspi.Action.get_action_name(ai, k) for k in range(n)]
        k = names.index(name) if name in names else 0
        if n == 0:
            raise ValueError("that element has no actions")
        Atspi.Action.do_action(ai, k)
        return {"actions": names}

    def op_find_menu_item(self, pid: int, path: list[str]) -> dict:
        """The index of a (possibly hidden) menu item of app ``pid`` reached by names, e.g. File > Save."""
        if Atspi is None:
            raise RuntimeError(f"AT-SPI is not available: {ATSPI_ERROR}")
        desktop = Atspi.get_desktop(0)
        for i in range(desktop.get_child_count()):
            app = desktop.get_child_at_index(i)
            if app is None or app.get_process_id() != pid:
                continue
            found = self._find_path(app, path, 0)
            if found is not None:
                self.nodes.append(found)
                return {"i": len(self.nodes) - 1}
        raise ValueError(f"no menu item {' > '.join(path)} in process {pid}")

    def _find_path(self, acc, path: list[str], depth: int):
        if depth > MAX_DEPTH:
            return None
        try:
            n = acc.get_child_count()
        except Exception:
            return None
        for k in range(min(n, 500)):
            child = acc.get_child_at_index(k)
            if child is None:
                continue
            role = child.get_role_name()
            if role in ("menu", "menu item", "check menu item", "radio menu item") and \
                    (child.get_name() or "").replace("_", "").strip() == path[0]:
                if len(path) == 1:
                    return child
                hit = self._find_path(child, path[1:], depth + 1)
                if hit is not None:
                    return hit
            elif role not in ("menu", "menu item"):
                hit = self._find_path(child, path, depth + 1)
                if hit is not None:
                    return hit
        return None

    def op_ping(self) -> dict:
        return {"w": self.width, "h": self.height, "atspi": Atspi is not None, "atspi_error": ATSPI_ERROR,
                "pid": os.getpid()}


def main() -> int:
    agent = Agent()
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            op = req.pop("op")
            fn = getattr(agent, f"op_{op}", None)
            if fn is None:
                raise ValueError(f"unknown op {op!r}")
            res = fn(**req)
            res["ok"] = True
        except Exception as err:
            res = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        out.write(json.dumps(res).encode() + b"\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
