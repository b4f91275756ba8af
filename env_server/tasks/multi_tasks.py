"""Workflows that move information between apps."""

from __future__ import annotations

import re

from env_server.actions import format_value as q
from env_server.sim.apps.formula import format_number
from env_server.sim.vfs import HOME
from env_server.tasks import app_gui
from env_server.tasks.base import TaskFamily, pick
from env_server.tasks.mail_tasks import SUBJECTS, address, deliver_all, inbox_setup, only_sent
from env_server.tasks.pools import FOLDERS, PEOPLE, STEMS, place, text_files
from env_server.tasks.settings_tasks import DEVICE_NAMES, changed
from env_server.tasks.sheet_tasks import ledger, load_sheet, write_ledger


def total(p: dict) -> str:
    return format_number(sum(p["amounts"]))


def sum_formula(p: dict) -> str:
    return f"=SUM(B1:B{len(p['amounts'])})"


def read_total_gui(p: dict, ui):
    """Open the ledger in the sheet and let a formula in D1 show the total."""
    yield from app_gui.sheet_open(ui, p["path"])
    yield from app_gui.sheet_fill(ui, "D1", [sum_formula(p)])


class SheetTotalToFile(TaskFamily):
    name = "multi.sheet_total_to_file"
    apps = ("sheet", "editor")
    max_steps = 22

    def sample(self, rng, split):
        p = ledger(rng, split)
        p["out"] = p["path"][:-4] + "_total.txt"
        return p

    def setup(self, desktop, p):
        write_ledger(desktop, p)

    def instruction(self, p):
        return f"Write the total of column B of {p['path']} into a new text file {p['out']}."

    def check(self, desktop, p):
        fs = desktop.vfs
        return fs.is_file(p["out"]) and fs.read(p["out"]).strip() == total(p)

    def api_plan(self, p):
        return [f"sheet.open({q(p['path'])})", f"sheet.set_formula(\"D1\", {q(sum_formula(p))})",
                f"editor.set_text({q(total(p))})", f"editor.save_as({q(p['out'])})"]

    def gui_plan(self, p, ui):
        yield from read_total_gui(p, ui)
        yield from app_gui.editor_new(ui, total(p), p["out"])


class SheetTotalByMail(SheetTotalToFile):
    """Held out: read a total in the sheet and email it."""

    name = "multi.sheet_total_by_mail"
    apps = ("sheet", "mail")

    def sample(self, rng, split):
        p = ledger(rng, split)
        p["to"] = address(rng.choice(PEOPLE))
        return p

    def instruction(self, p):
        return f"Email the total of column B of {p['path']} to {p['to']} with the subject 'Total'."

    def check(self, desktop, p):
        m = only_sent(desktop)
        return (m is not None and m["to"] == p["to"] and m["subject"].lower() == "total"
                and total(p) in re.findall(r"-?\d+(?:\.\d+)?", m["body"]))

    def api_plan(self, p):
        return [f"sheet.open({q(p['path'])})", f"sheet.set_formula(\"D1\", {q(sum_formula(p))})",
                f"mail.send({q(p['to'])}, \"Total\", {q(total(p))})"]

    def gui_plan(self, p, ui):
        yield from read_total_gui(p, ui)
        yield from app_gui.mail_compose(ui, p["to"], "Total", total(p))
        yield ui.click("button", "Send")


class TextToSheet(TaskFamily):
    """Import numbers from a text file into a new CSV spreadsheet."""

    name = "multi.text_to_sheet"
    apps = ("editor", "sheet")
    max_steps = 28

    def sample(self, rng, split):
        folder = place(rng)
        stem = pick(rng, STEMS, split)[0]
        return {"txt": f"{folder}/{stem}.txt", "csv": f"{folder}/{stem}.csv",
                "numbers": [rng.randint(1, 999) for _ in range(rng.randint(3, 5))]}

    def setup(self, desktop, p):
        desktop.vfs.write(p["txt"], "".join(f"{n}\n" for n in p["numbers"]))

    def instruction(self, p):
        return (f"Put the numbers of {p['txt']} (one per line) into column A of a new spreadsheet, "
                f"starting at A1, and save it as {p['csv']}.")

    def check(self, desktop, p):
        loaded = load_sheet(desktop, p["csv"])
        return loaded is not None and loaded[1] == {f"A{i}": float(n) for i, n in enumerate(p["numbers"], 1)}

    def api_plan(self, p):
        return [f"editor.open({q(p['txt'])})"] + [
            f"sheet.set_cell(\"A{i}\", {n})" for i, n in enumerate(p["numbers"], 1)] + [
            f"sheet.save_as({q(p['csv'])})"]

    def gui_plan(self, p, ui):
        yield from app_gui.editor_open(ui, p["txt"])
        yield from ui.open_app("Sheet")
        yield from app_gui.sheet_fill(ui, "A1", [str(n) for n in p["numbers"]])
        yield from app_gui.save_new(ui, p["csv"])


class AttachmentToFolder(TaskFamily):
    name = "multi.attachment_to_folder"
    apps = ("mail", "files")
    max_steps = 12

    def sample(self, rng, split):
        subject = pick(rng, SUBJECTS, split)[0]
        emails = inbox_setup(rng, subject, 2)
        name = text_files(rng, split)[0]
        content = f"{name} from {emails[0]['sender']}\n"
        emails[0]["attachments"] = [(name, content)]
        rng.shuffle(emails)
        return {"emails": emails, "subject": subject, "name": name, "content": content,
                "sender": next(e["sender"] for e in emails if e["subject"] == subject),
                "dest": f"{HOME}/Documents/{pick(rng, FOLDERS, split)[0]}"}

    def setup(self, desktop, p):
        deliver_all(desktop, p["emails"])
        desktop.vfs.mkdir(p["dest"])

    def instruction(self, p):
        return f"Save the attachment of the email '{p['subject']}' into the folder {p['dest']}."

    def check(self, desktop, p):
        path = f"{p['dest']}/{p['name']}"
        return desktop.vfs.is_file(path) and desktop.vfs.read(path) == p["content"]

    def api_plan(self, p):
        return [f"mail.save_attachment({q(p['subject'])}, {q(p['dest'])})"]

    def gui_plan(self, p, ui):
        yield from app_gui.mail_open(ui, p["sender"], p["subject"])
        yield ui.click("button", f"Save {p['name']}")
        yield ui.type(f"{p['dest']}/{p['name']}")
        yield ui.key("enter")


class FileToSetting(TaskFamily):
    name = "multi.file_to_setting"
    apps = ("editor", "settings")
    max_steps = 14

    def sample(self, rng, split):
        return {"path": f"{place(rng)}/{text_files(rng, split)[0]}",
                "device_name": pick(rng, DEVICE_NAMES, split)[0]}

    def setup(self, desktop, p):
        desktop.vfs.write(p["path"], f"New device name: {p['device_name']}\n")

    def instruction(self, p):
        return f"Set the device name in Settings to the name written in {p['path']}."

    def check(self, desktop, p):
        return changed(desktop, device_name=p["device_name"])

    def api_plan(self, p):
        return [f"editor.open({q(p['path'])})", f"settings.set(\"device_name\", {q(p['device_name'])})"]

    def gui_plan(self, p, ui):
        yield from app_gui.editor_open(ui, p["path"])
        yield from app_gui.settings_field(ui, "Device name", p["device_name"])


class LineCountToSheet(TaskFamily):
    """Count lines (the terminal is the natural tool) and record the number in a new spreadsheet."""

    name = "multi.line_count_to_sheet"
    apps = ("terminal", "sheet")
    max_steps = 16

    def sample(self, rng, split):
        folder = place(rng)
        stem = pick(rng, STEMS, split)[0]
        return {"txt": f"{folder}/{stem}.txt", "csv": f"{folder}/{stem}_lines.csv",
                "n": rng.randint(3, 15)}

    def setup(self, desktop, p):
        desktop.vfs.write(p["txt"], "".join(f"line {i}\n" for i in range(1, p["n"] + 1)))

    def instruction(self, p):
        return f"Put the number of lines of {p['txt']} into cell A1 of a new spreadsheet saved as {p['csv']}."

    def check(self, desktop, p):
        loaded = load_sheet(desktop, p["csv"])
        return loaded is not None and loaded[1] == {"A1": float(p["n"])}

    def api_plan(self, p):
        return [f"terminal.run({q('wc -l ' + p['txt'])})", f"sheet.set_cell(\"A1\", {p['n']})",
                f"sheet.save_as({q(p['csv'])})"]

    def gui_plan(self, p, ui):
        yield from app_gui.terminal_run(ui, f"wc -l {p['txt']}")
        yield from ui.open_app("Sheet")
        yield from app_gui.sheet_fill(ui, "A1", [str(p["n"])])
        yield from app_gui.save_new(ui, p["csv"])


FAMILIES = (SheetTotalToFile(), TextToSheet(), AttachmentToFolder(), FileToSetting(), LineCountToSheet(),
            SheetTotalByMail())
HELDOUT = ("multi.sheet_total_by_mail",)
