"""Task families of the file manager."""

from __future__ import annotations

from typing import Any

from env_server.actions import format_value as q
from env_server.sim.desktop import Desktop
from env_server.sim.vfs import HOME
from env_server.tasks.base import TaskFamily, pick
from env_server.tasks.pools import FOLDERS, STEMS, WORDS, place, text_files


def initial_snapshot(family: TaskFamily, p: dict[str, Any]) -> dict:
    """The file tree right after ``family.setup`` (for verifiers that require no change)."""
    fresh = Desktop()
    family.setup(fresh, p)
    return fresh.vfs.snapshot()


class CreateFolder(TaskFamily):
    name = "files.create_folder"
    apps = ("files",)

    def sample(self, rng, split):
        return {"parent": place(rng), "name": pick(rng, FOLDERS, split)[0]}

    def instruction(self, p):
        return f"Create a folder named {p['name']} in {p['parent']}."

    def check(self, desktop, p):
        return desktop.vfs.is_dir(f"{p['parent']}/{p['name']}")

    def api_plan(self, p):
        return [f"files.mkdir({q(p['parent'] + '/' + p['name'])})"]

    def gui_plan(self, p, ui):
        yield from ui.files_goto(p["parent"])
        yield ui.click("button", "New Folder")
        yield ui.type(p["name"])
        yield ui.key("enter")


class _WithFiles(TaskFamily):
    """Families that start with a few files in one folder (a target plus distractors)."""

    def sample(self, rng, split):
        names = text_files(rng, split, 4)
        return {"folder": place(rng), "target": names[0], "others": names[1:],
                "content": " ".join(rng.sample(WORDS, 3)) + "\n"}

    def setup(self, desktop, p):
        for name in [p["target"], *p["others"]]:
            desktop.vfs.write(f"{p['folder']}/{name}", p["content"] if name == p["target"] else name)

    def path(self, p) -> str:
        return f"{p['folder']}/{p['target']}"

    def others_intact(self, desktop, p) -> bool:
        return all(desktop.vfs.is_file(f"{p['folder']}/{n}") for n in p["others"])


class RenameFile(_WithFiles):
    name = "files.rename_file"
    apps = ("files",)

    def sample(self, rng, split):
        p = super().sample(rng, split)
        stem = pick(rng, [s for s in STEMS if s + ".txt" not in p["others"] and s + ".md" not in p["others"]
                          and not p["target"].startswith(s + ".")], split)[0]
        p["new_name"] = stem + "." + p["target"].rsplit(".", 1)[1]
        return p

    def instruction(self, p):
        return f"Rename the file {self.path(p)} to {p['new_name']}."

    def check(self, desktop, p):
        new = f"{p['folder']}/{p['new_name']}"
        return (not desktop.vfs.exists(self.path(p)) and desktop.vfs.is_file(new)
                and desktop.vfs.read(new) == p["content"] and self.others_intact(desktop, p))

    def api_plan(self, p):
        return [f"files.rename({q(self.path(p))}, {q(p['new_name'])})"]

    def gui_plan(self, p, ui):
        yield from ui.files_goto(p["folder"])
        yield from ui.select_item(p["target"])
        yield ui.click("button", "Rename")
        yield ui.type(p["new_name"])
        yield ui.key("enter")


class DeleteFile(_WithFiles):
    name = "files.delete_file"
    apps = ("files",)

    def instruction(self, p):
        return f"Delete the file {self.path(p)}."

    def check(self, desktop, p):
        return not desktop.vfs.exists(self.path(p)) and self.others_intact(desktop, p)

    def api_plan(self, p):
        return [f"files.delete({q(self.path(p))})"]

    def gui_plan(self, p, ui):
        yield from ui.files_goto(p["folder"])
        yield from ui.select_item(p["target"])
        yield ui.click("button", "Delete")


class MoveFile(_WithFiles):
    name = "files.move_file"
    apps = ("files",)

    def sample(self, rng, split):
        p = super().sample(rng, split)
        p["dest"] = f"{HOME}/Documents/{pick(rng, FOLDERS, split)[0]}"
        return p

    def setup(self, desktop, p):
        super().setup(desktop, p)
        desktop.vfs.mkdir(p["dest"], parents=True)

    def instruction(self, p):
        return f"Move the file {self.path(p)} into the folder {p['dest']}."

    def check(self, desktop, p):
        moved = f"{p['dest']}/{p['target']}"
        return (not desktop.vfs.exists(self.path(p)) and desktop.vfs.is_file(moved)
                and desktop.vfs.read(moved) == p["content"] and self.others_intact(desktop, p))

    def api_plan(self, p):
        return [f"files.move({q(self.path(p))}, {q(p['dest'])})"]

    def gui_plan(self, p, ui):
        yield from ui.files_goto(p["folder"])
        yield from ui.select_item(p["target"])
        yield ui.click("button", "Cut")
        yield from ui.files_goto(p["dest"])
        yield ui.click("button", "Paste")


class CopyFile(MoveFile):
    name = "files.copy_file"

    def instruction(self, p):
        return f"Copy the file {self.path(p)} into the folder {p['dest']}, keeping the original."

    def check(self, desktop, p):
        copy = f"{p['dest']}/{p['target']}"
        return (desktop.vfs.is_file(self.path(p)) and desktop.vfs.is_file(copy)
                and desktop.vfs.read(copy) == p["content"] and self.others_intact(desktop, p))

    def api_plan(self, p):
        return [f"files.copy({q(self.path(p))}, {q(p['dest'])})"]

    def gui_plan(self, p, ui):
        yield from ui.files_goto(p["folder"])
        yield from ui.select_item(p["target"])
        yield ui.click("button", "Copy")
        yield from ui.files_goto(p["dest"])
        yield ui.click("button", "Paste")


class SortDownloads(TaskFamily):
    """Multi-step: make a folder and move every text file of Downloads into it."""

    name = "files.sort_downloads"
    apps = ("files",)
    max_steps = 50

    def sample(self, rng, split):
        n = rng.randint(2, 3)
        return {"texts": text_files(rng, split, n), "others": [f"{w}.jpg" for w in rng.sample(WORDS, 2)],
                "dest": f"{HOME}/Documents/{pick(rng, FOLDERS, split)[0]}"}

    def setup(self, desktop, p):
        for name in [*p["texts"], *p["others"]]:
            desktop.vfs.write(f"{HOME}/Downloads/{name}", f"content of {name}")

    def instruction(self, p):
        return (f"Create the folder {p['dest']} and move every .txt and .md file from "
                f"{HOME}/Downloads into it. Leave other files where they are.")

    def check(self, desktop, p):
        fs = desktop.vfs
        return (all(fs.is_file(f"{p['dest']}/{n}") and not fs.exists(f"{HOME}/Downloads/{n}")
                    for n in p["texts"])
                and all(fs.is_file(f"{HOME}/Downloads/{n}") for n in p["others"]))

    def api_plan(self, p):
        return [f"files.mkdir({q(p['dest'])})"] + [
            f"files.move({q(HOME + '/Downloads/' + n)}, {q(p['dest'])})" for n in p["texts"]]

    def gui_plan(self, p, ui):
        parent, name = p["dest"].rsplit("/", 1)
        yield from ui.files_goto(parent)
        yield ui.click("button", "New Folder")
        yield ui.type(name)
        yield ui.key("enter")
        for n in p["texts"]:
            yield from ui.files_goto(f"{HOME}/Downloads")
            yield from ui.select_item(n)
            # drag the file onto the destination folder in the places sidebar is not possible
            # (it is not a place), so cut and paste
            yield ui.click("button", "Cut")
            yield from ui.files_goto(p["dest"])
            yield ui.click("button", "Paste")


class DeleteMissing(TaskFamily):
    """Infeasible: the file to delete does not exist; the right answer is fail()."""

    name = "files.delete_missing"
    apps = ("files",)
    feasible = False
    max_steps = 10

    def sample(self, rng, split):
        names = text_files(rng, split, 3)
        return {"folder": place(rng), "missing": names[0], "others": names[1:]}

    def setup(self, desktop, p):
        for n in p["others"]:
            desktop.vfs.write(f"{p['folder']}/{n}", n)

    def instruction(self, p):
        return f"Delete the file {p['folder']}/{p['missing']}."

    def check(self, desktop, p):
        return desktop.vfs.snapshot() == initial_snapshot(self, p)

    def api_plan(self, p):
        return [f"files.delete({q(p['folder'] + '/' + p['missing'])})"]

    def gui_plan(self, p, ui):
        yield from ui.files_goto(p["folder"])


FAMILIES = (CreateFolder(), RenameFile(), DeleteFile(), MoveFile(), CopyFile(), SortDownloads(),
            DeleteMissing())
HELDOUT = ("files.copy_file",)
