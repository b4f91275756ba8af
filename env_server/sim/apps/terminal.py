"""Terminal: a prompt and a scrollback over the small safe shell of :mod:`env_server.sim.apps.shell`."""

from __future__ import annotations

from env_server.actions import api
from env_server.sim.apps.base import App, AppError
from env_server.sim.apps.shell import Shell, ShellError
from env_server.sim.vfs import HOME
from env_server.sim.widgets import UI

LINE_H = 20
WRAP = 78  # a11y names are cut at 80 characters, so long output lines are wrapped
MAX_LINES = 500
MAX_RESULT_CHARS = 2000


def _wrap(text: str) -> list[str]:
    out = []
    for line in text.rstrip("\n").split("\n") if text else []:
        out.extend([line[i:i + WRAP] for i in range(0, len(line), WRAP)] or [""])
    return out


class TerminalApp(App):
    name = "terminal"
    title = "Terminal"
    API = (
        api("terminal.run", ("command", "str"),
            doc="run one shell command (ls cd pwd mkdir touch cat echo cp mv rm wc grep head tail)"),
    )
    OPENS_WINDOW = frozenset({"run"})

    def __init__(self, desktop):
        super().__init__(desktop)
        self.shell = Shell(desktop.vfs)
        self.lines: list[str] = []
        self.history: list[str] = []
        self.recall = 0  # position when walking back through the history with the up key
        self.fields["cmdline"] = ""

    def prompt(self) -> str:
        cwd = self.shell.cwd
        short = "~" + cwd[len(HOME):] if cwd == HOME or cwd.startswith(HOME + "/") else cwd
        return f"user@sim:{short}$"

    def visible_lines(self) -> int:
        return (648 - 68) // LINE_H

    # ----------------------------------------------------------------- running
    def execute(self, command: str) -> str | None:
        """Run a command line, record it in the scrollback, and return its output (or raise)."""
        if "\n" in command:
            raise AppError("one command at a time: the command contains a line break")
        command = command.strip()
        self.lines.append(f"{self.prompt()} {command}")
        if command:
            self.history.append(command)
        self.recall = len(self.history)
        error = None
        output = ""
        try:
            output, err = self.shell.run(command)
            error = err.strip() or None
        except ShellError as exc:
            error = str(exc)
        if self.shell.clear_requested:
            self.shell.clear_requested = False
            self.lines = []
        self.lines.extend(_wrap(output))
        if error:
            self.lines.extend(_wrap(error))
        self.lines = self.lines[-MAX_LINES:]
        self.scroll_pos["out"] = max(0, len(self.lines) - self.visible_lines())
        if error:
            raise AppError(error[:MAX_RESULT_CHARS])
        if len(output) > MAX_RESULT_CHARS:
            output = output[:MAX_RESULT_CHARS] + "..."
        return output.rstrip("\n") or None

    # ----------------------------------------------------------------- layout
    def build(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        oh = h - 60
        ui.add("terminal", "Terminal output", x + 8, y + 8, w - 16, oh, scroll="out")
        visible = self.visible_lines()
        start = self.scroll_pos.get("out", max(0, len(self.lines) - visible))
        for i, line in enumerate(self.lines[start:start + visible]):
            if line.strip():
                ui.add("terminal line", line, x + 14, y + 12 + i * LINE_H, w - 28, LINE_H)
        py = y + h - 46
        ui.label(self.prompt(), x + 8, py + 5, 300, 24)
        ui.field("Command", self.fields["cmdline"], x + 316, py, w - 324, 34, "cmdline",
                 focused=self.focused("cmdline"))

    # ----------------------------------------------------------------- events
    def on_submit(self, key: str) -> str | None:
        if key != "cmdline":
            return None
        command = self.fields["cmdline"]
        self.fields["cmdline"] = ""
        return self.execute(command)

    def on_key(self, keys: tuple[str, ...]) -> bool:
        if keys in (("up",), ("down",)) and self.focused("cmdline") and self.history:
            step = -1 if keys == ("up",) else 1
            self.recall = min(max(self.recall + step, 0), len(self.history))
            self.fields["cmdline"] = self.history[self.recall] if self.recall < len(self.history) else ""
            return True
        if keys == ("ctrl", "l"):
            self.lines = []
            return True
        return False

    def on_scroll(self, target: str | None, amount: int) -> None:
        self.scroll_window("out", amount, len(self.lines), self.visible_lines())

    def on_open(self) -> None:
        if not self.vfs.is_dir(self.shell.cwd):
            self.shell.cwd = HOME

    def state(self) -> dict:
        return {"cwd": self.shell.cwd, "history": list(self.history)}

    # ----------------------------------------------------------------- API
    def api_run(self, command: str) -> str | None:
        return self.execute(command)
