"""Task families of the settings app."""

from __future__ import annotations

from env_server.actions import format_value as q
from env_server.sim.apps.settings import BY_KEY, DEFAULTS, LANGUAGES, TIMEZONES
from env_server.tasks import app_gui
from env_server.tasks.base import TaskFamily, pick
from env_server.tasks.pools import WORDS

FONT_SIZES = tuple(str(n) for n in range(8, 33) if n != DEFAULTS["font_size"])
VOLUMES = tuple(str(n) for n in range(0, 101) if n != DEFAULTS["volume"])
BAD_FONT_SIZES = tuple(str(n) for n in (*range(1, 8), *range(33, 73)))
DEVICE_NAMES = tuple(f"{w}-{kind}" for w in WORDS for kind in ("laptop", "pc"))
SWITCHES = ("wifi", "bluetooth", "notifications")


def changed(desktop, **want) -> bool:
    """The settings equal the defaults except for ``want``."""
    return desktop.state()["settings"] == {**DEFAULTS, **want}


class SetVolume(TaskFamily):
    name = "settings.set_volume"
    apps = ("settings",)
    max_steps = 8

    def sample(self, rng, split):
        return {"volume": int(pick(rng, VOLUMES, split)[0])}

    def instruction(self, p):
        return f"Set the volume to {p['volume']}."

    def check(self, desktop, p):
        return changed(desktop, volume=p["volume"])

    def api_plan(self, p):
        return [f"settings.set(\"volume\", {p['volume']})"]

    def gui_plan(self, p, ui):
        yield from app_gui.settings_field(ui, "Volume", str(p["volume"]))


class ThemeAndFont(TaskFamily):
    name = "settings.theme_font"
    apps = ("settings",)
    max_steps = 10

    def sample(self, rng, split):
        return {"theme": rng.choice(BY_KEY["theme"].options), "font_size": int(pick(rng, FONT_SIZES, split)[0])}

    def instruction(self, p):
        return f"Use the {p['theme']} theme and set the font size to {p['font_size']}."

    def check(self, desktop, p):
        return changed(desktop, theme=p["theme"], font_size=p["font_size"])

    def api_plan(self, p):
        return [f"settings.set(\"theme\", {q(p['theme'])})", f"settings.set(\"font_size\", {p['font_size']})"]

    def gui_plan(self, p, ui):
        yield from ui.open_app("Settings")
        yield ui.click("radio button", p["theme"].capitalize())
        yield from app_gui.settings_field(ui, "Font size", str(p["font_size"]))


class DeviceSetup(TaskFamily):
    name = "settings.device_setup"
    apps = ("settings",)
    max_steps = 10

    def sample(self, rng, split):
        return {"device_name": pick(rng, DEVICE_NAMES, split)[0], "switch": rng.choice(SWITCHES)}

    def instruction(self, p):
        state = "off" if DEFAULTS[p["switch"]] else "on"
        return f"Rename this device to {p['device_name']} and turn {BY_KEY[p['switch']].label} {state}."

    def check(self, desktop, p):
        return changed(desktop, device_name=p["device_name"], **{p["switch"]: not DEFAULTS[p["switch"]]})

    def api_plan(self, p):
        value = "false" if DEFAULTS[p["switch"]] else "true"
        return [f"settings.set(\"device_name\", {q(p['device_name'])})",
                f"settings.set({q(p['switch'])}, {value})"]

    def gui_plan(self, p, ui):
        yield from app_gui.settings_field(ui, "Device name", p["device_name"])
        yield ui.click("checkbox", BY_KEY[p["switch"]].label)


class SetLocale(TaskFamily):
    """Held out: two drop-down lists."""

    name = "settings.set_locale"
    apps = ("settings",)
    max_steps = 10

    def sample(self, rng, split):
        return {"language": rng.choice([x for x in LANGUAGES if x != DEFAULTS["language"]]),
                "timezone": rng.choice([x for x in TIMEZONES if x != DEFAULTS["timezone"]])}

    def instruction(self, p):
        return f"Set the language to {p['language']} and the time zone to {p['timezone']}."

    def check(self, desktop, p):
        return changed(desktop, language=p["language"], timezone=p["timezone"])

    def api_plan(self, p):
        return [f"settings.set(\"language\", {q(p['language'])})",
                f"settings.set(\"timezone\", {q(p['timezone'])})"]

    def gui_plan(self, p, ui):
        yield from app_gui.settings_choose(ui, "Language", p["language"])
        yield from app_gui.settings_choose(ui, "Time zone", p["timezone"])


class FontOutOfRange(TaskFamily):
    """Infeasible: the font size asked for is outside the allowed range."""

    name = "settings.font_out_of_range"
    apps = ("settings",)
    feasible = False
    max_steps = 10

    def sample(self, rng, split):
        return {"font_size": int(pick(rng, BAD_FONT_SIZES, split)[0])}

    def instruction(self, p):
        return f"Set the font size to {p['font_size']}."

    def check(self, desktop, p):
        return changed(desktop)

    def api_plan(self, p):
        return [f"settings.set(\"font_size\", {p['font_size']})"]

    def gui_plan(self, p, ui):
        yield from app_gui.settings_field(ui, "Font size", str(p["font_size"]))


FAMILIES = (SetVolume(), ThemeAndFont(), DeviceSetup(), SetLocale(), FontOutOfRange())
HELDOUT = ("settings.set_locale",)
