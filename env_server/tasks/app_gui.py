"""GUI-only sub-plans for the sheet, terminal, settings, mail and editor apps (used by expert plans).

Each helper is a generator of action lines; it reads ``ui.rows`` (the latest observation) lazily, so a
step is looked up only after the previous one ran.
"""

from __future__ import annotations

from collections.abc import Iterator

from env_server.tasks.gui import ExpertError, GuiContext


def sheet_open(ui: GuiContext, path: str) -> Iterator[str]:
    yield from ui.open_app("Sheet")
    yield ui.click("button", "Open")
    yield ui.type(path)
    yield ui.key("enter")


def click_cell(ui: GuiContext, ref: str) -> str:
    for row in ui.rows:
        if row.role == "cell" and row.name.split(":")[0] == ref:
            return f"click({row.cx}, {row.cy})" if ui.coords else f"click(#{row.id})"
    raise ExpertError(f"no cell {ref} on screen")


def sheet_fill(ui: GuiContext, first: str, values: list[str]) -> Iterator[str]:
    """Type values into a column starting at ``first`` (enter moves one cell down)."""
    yield click_cell(ui, first)
    for value in values:
        yield ui.type(value)
        yield ui.key("enter")


def save_new(ui: GuiContext, path: str) -> Iterator[str]:
    """ctrl+s in an untitled document opens Save As; type the path and confirm."""
    yield ui.key("ctrl", "s")
    yield ui.type(path)
    yield ui.key("enter")


def editor_new(ui: GuiContext, text: str, path: str) -> Iterator[str]:
    yield from ui.open_app("Editor")
    yield ui.click("text area", "Document")
    yield ui.key("ctrl", "a")
    yield ui.type(text)
    yield from save_new(ui, path)


def editor_open(ui: GuiContext, path: str) -> Iterator[str]:
    yield from ui.open_app("Editor")
    yield ui.click("button", "Open")
    yield ui.type(path)
    yield ui.key("enter")


def terminal_run(ui: GuiContext, command: str) -> Iterator[str]:
    yield from ui.open_app("Terminal")
    if not ui.has("text field", name="Command: ", state="focused"):
        yield ui.click("text field", contains="Command:")
    yield ui.type(command)
    yield ui.key("enter")


def settings_field(ui: GuiContext, label: str, value: str) -> Iterator[str]:
    yield from ui.open_app("Settings")
    yield from ui.fill(label, value)
    yield ui.key("enter")


def settings_choose(ui: GuiContext, label: str, option: str) -> Iterator[str]:
    yield from ui.open_app("Settings")
    yield ui.click("combo box", contains=f"{label}:")
    yield ui.click("list item", option)


def mail_compose(ui: GuiContext, to: str, subject: str, body: str = "") -> Iterator[str]:
    """Open a new draft and fill To, Subject and (if given) Body; enter moves to the next field."""
    yield from ui.open_app("Mail")
    yield ui.click("button", "Compose")
    yield ui.type(to)
    yield ui.key("enter")
    yield ui.type(subject)
    if body:
        yield ui.key("enter")
        yield ui.type(body)


def mail_open(ui: GuiContext, sender: str, subject: str) -> Iterator[str]:
    yield from ui.open_app("Mail")
    if not ui.has("link", "Inbox", state="selected"):
        yield ui.click("link", "Inbox")
    yield ui.click("list item", f"{sender}: {subject}")
