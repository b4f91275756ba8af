"""Settings: a few typed keys (choices, bounded integers, switches, a name) with GUI controls for each
kind: radio buttons, drop-down lists (expanded inline), check boxes and text fields (enter applies)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from env_server.actions import api
from env_server.sim.apps.base import App, AppError
from env_server.sim.widgets import UI, Command

LANGUAGES = ("English", "German", "French", "Spanish", "Chinese", "Japanese", "Italian")
TIMEZONES = ("UTC", "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles",
             "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,23}")
ROW_H = 36
OPTION_H = 24


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    kind: str  # "radio" | "choice" | "int" | "bool" | "text"
    default: Any
    options: tuple = ()  # choices, or (low, high) for "int"

    def describe(self) -> str:
        if self.kind in ("radio", "choice"):
            return "one of " + ", ".join(self.options)
        if self.kind == "int":
            return f"a whole number from {self.options[0]} to {self.options[1]}"
        if self.kind == "bool":
            return "true or false (on/off)"
        return "1-24 letters, digits or '-', starting with a letter or digit"

    def coerce(self, value: object) -> Any:
        """The canonical value for ``value``, or an AppError that says what is allowed."""
        bad = AppError(f"invalid value {value!r} for {self.key}: it must be {self.describe()}")
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("on", "off", "true", "false"):
                return value.strip().lower() in ("on", "true")
            raise bad
        if self.kind == "int":
            if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d{1,9}\s*", value):
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad
            low, high = self.options
            if not low <= value <= high:
                raise AppError(f"{self.key} {value} is out of range: it must be from {low} to {high}")
            return value
        if not isinstance(value, str):
            raise bad
        if self.kind == "text":
            if not _NAME_RE.fullmatch(value.strip()):
                raise bad
            return value.strip()
        for option in self.options:
            if option.lower() == value.strip().lower():
                return option
        raise bad

    def show(self, value: Any) -> str:
        if self.kind == "bool":
            return "on" if value else "off"
        return str(value)


SETTINGS: tuple[Setting, ...] = (
    Setting("theme", "Theme", "radio", "light", ("light", "dark")),
    Setting("font_size", "Font size", "int", 12, (8, 32)),
    Setting("volume", "Volume", "int", 50, (0, 100)),
    Setting("screen_timeout", "Screen timeout (min)", "int", 5, (1, 60)),
    Setting("wifi", "Wi-Fi", "bool", True),
    Setting("bluetooth", "Bluetooth", "bool", False),
    Setting("notifications", "Notifications", "bool", True),
    Setting("language", "Language", "choice", "English", LANGUAGES),
    Setting("timezone", "Time zone", "choice", "UTC", TIMEZONES),
    Setting("device_name", "Device name", "text", "sim-desktop"),
)
BY_KEY = {s.key: s for s in SETTINGS}
DEFAULTS = {s.key: s.default for s in SETTINGS}


def setting(key: object) -> Setting:
    if isinstance(key, str) and key in BY_KEY:
        return BY_KEY[key]
    close = difflib.get_close_matches(str(key), list(BY_KEY), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise AppError(f"no setting {key!r}{hint} (settings: {', '.join(BY_KEY)})")


class SettingsApp(App):
    name = "settings"
    title = "Settings"
    API = (
        api("settings.set", ("key", "str"), ("value", "value"),
            doc="change a setting: " + ", ".join(s.key for s in SETTINGS)),
    )

    def __init__(self, desktop):
        super().__init__(desktop)
        self.values: dict[str, Any] = dict(DEFAULTS)
        self.expanded: str | None = None  # the drop-down list that is open

    def set(self, key: str, value: object) -> None:
        spec = setting(key)
        self.values[spec.key] = spec.coerce(value)

    # ----------------------------------------------------------------- layout
    def build(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        ui.label("Settings", x + 16, y + 8, 300, 28, role="heading")
        ry = y + 44
        lx, cx, cw = x + 24, x + 260, 420
        for spec in SETTINGS:
            value = self.values[spec.key]
            if spec.kind == "radio":
                ui.label(spec.label, lx, ry + 6, 220, 24)
                for i, option in enumerate(spec.options):
                    ui.add("radio button", option.capitalize(), cx + i * 140, ry + 4, 130, 28,
                           click=("set", spec.key, option),
                           states=("checked",) if value == option else ())
            elif spec.kind == "bool":
                ui.checkbox(spec.label, value, lx, ry + 4, 300, 28, ("toggle", spec.key))
            elif spec.kind == "choice":
                open_ = self.expanded == spec.key
                ui.label(spec.label, lx, ry + 6, 220, 24, visible=False)  # drawn; the row names it
                ui.add("combo box", f"{spec.label}: {value}", cx, ry + 2, cw, 32, text=f"{value}  v",
                       click=("expand", spec.key), states=("expanded",) if open_ else ())
                if open_:  # the options push the rows below down, so nothing is covered
                    for option in spec.options:
                        ui.add("list item", option, cx, ry + ROW_H, cw, OPTION_H - 2,
                               click=("set", spec.key, option),
                               states=("selected",) if option == value else ())
                        ry += OPTION_H
            else:
                if not self.focused(spec.key):
                    self.fields[spec.key] = spec.show(value)
                ui.label(spec.label, lx, ry + 6, 220, 24, visible=False)
                ui.field(spec.label, self.fields[spec.key], cx, ry + 2, cw, 32, spec.key,
                         focused=self.focused(spec.key))
            ry += ROW_H
        ui.label("Type a value and press enter to apply it.", lx, ry + 4, 600, 24, role="status")

    # ----------------------------------------------------------------- events
    def on_command(self, cmd: Command) -> str | None:
        op = cmd[0]
        if op == "toggle":
            self.values[cmd[1]] = not self.values[cmd[1]]
            self.expanded = None
            return None
        if op == "expand":
            self.expanded = None if self.expanded == cmd[1] else cmd[1]
            return None
        if op == "set":
            self.set(cmd[1], cmd[2])
            self.expanded = None
            return None
        return super().on_command(cmd)

    def on_submit(self, key: str) -> str | None:
        if key in BY_KEY:
            self.set(key, self.fields.get(key, ""))
            self.focus(None)
        return None

    def on_escape(self) -> bool:
        if self.expanded is not None:
            self.expanded = None
            return True
        if self.desktop.focus and self.desktop.focus[0] == self.name:
            self.focus(None)  # drop the unapplied edit
            return True
        return False

    def on_close(self) -> None:
        super().on_close()
        self.expanded = None

    def state(self) -> dict:
        return dict(self.values)

    # ----------------------------------------------------------------- API
    def api_set(self, key: str, value) -> None:
        self.set(key, value)
