"""Real-desktop task families for the ``x11`` backend, verified over the real files of the env's home.

They share :class:`~env_server.tasks.base.TaskFamily`, the value pools and the train / held-out split rule
with the simulated tasks, so the same :class:`~env_server.tasks.expert.Expert` drives them (API style for
every family; GUI style through the real terminal, file manager and editor). ``setup`` and ``check``
receive the env's :class:`~env_server.x11.sandbox.Sandbox` instead of a simulated desktop; ``launch``
says which folder/file each app starts on.
"""

from __future__ import annotations

import random
import shlex
from typing import Any

from env_server.actions import format_value as q
from env_server.tasks.base import SPLITS, Task, TaskFamily, pick
from env_server.tasks.pools import FOLDERS, PLACES, STEMS, WORDS, text_files
from env_server.types import TaskRef
from env_server.x11.sandbox import Sandbox


def place(rng: random.Random) -> str:
    return f"~/{rng.choice(PLACES)}"


def sh(*argv: str) -> str:
    """A terminal command line the GUI expert types (quoted, with ``~`` left for the shell to expand)."""
    def arg(a: str) -> str:
        return "~/" + shlex.quote(a[2:]) if a.startswith("~/") else shlex.quote(a)
    return " ".join(arg(a) for a in argv) + "\n"


class X11Family(TaskFamily):
    """A task on the real desktop. Paths are written ``~/...``."""

    def setup(self, box: Sandbox, p: dict[str, Any]) -> None:  # type: ignore[override]
        """Create the initial files (the home folder already holds the standard folders)."""

    def launch(self, p: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        """Apps to start and their arguments (user paths)."""
        return {"files": ("~",), "editor": (), "terminal": ()}

    def run_in_terminal(self, ui, command: str):
        yield ui.click("terminal")
        yield ui.type(command)


class CreateFolder(X11Family):
    name = "x11.files.create_folder"
    apps = ("files", "terminal")

    def sample(self, rng, split):
        return {"parent": place(rng), "name": pick(rng, FOLDERS, split)[0]}

    def instruction(self, p):
        return f"Create a folder named {p['name']} in {p['parent']}."

    def launch(self, p):
        return {"files": (p["parent"],), "editor": (), "terminal": ()}

    def check(self, box, p):
        return box.is_dir(f"{p['parent']}/{p['name']}")

    def api_plan(self, p):
        return [f"files.mkdir({q(p['parent'] + '/' + p['name'])})"]

    def gui_plan(self, p, ui):
        yield from self.run_in_terminal(ui, sh("mkdir", f"{p['parent']}/{p['name']}"))


class _WithFiles(X11Family):
    """Starts with a few text files in one folder: a target plus distractors."""

    def sample(self, rng, split):
        names = text_files(rng, split, 4)
        return {"folder": place(rng), "target": names[0], "others": names[1:],
                "content": " ".join(rng.sample(WORDS, 3)) + "\n"}

    def setup(self, box, p):
        for name in [p["target"], *p["others"]]:
            box.write(f"{p['folder']}/{name}", p["content"] if name == p["target"] else name + "\n")

    def launch(self, p):
        return {"files": (p["folder"],), "editor": (), "terminal": ()}

    def path(self, p) -> str:
        return f"{p['folder']}/{p['target']}"

    def others_intact(self, box, p) -> bool:
        return all(box.is_file(f"{p['folder']}/{n}") and box.read(f"{p['folder']}/{n}") == n + "\n"
                   for n in p["others"])


class RenameFile(_WithFiles):
    """GUI style uses the real file manager: select the file, F2, type the new name."""

    name = "x11.files.rename_file"
    apps = ("files",)

    def sample(self, rng, split):
        p = super().sample(rng, split)
        taken = {n.rsplit(".", 1)[0] for n in [p["target"], *p["others"]]}
        stem = pick(rng, [s for s in STEMS if s not in taken], split)[0]
        p["new_name"] = stem + "." + p["target"].rsplit(".", 1)[1]
        return p

    def instruction(self, p):
        return f"Rename the file {self.path(p)} to {p['new_name']}."

    def check(self, box, p):
        new = f"{p['folder']}/{p['new_name']}"
        return (not box.exists(self.path(p)) and box.is_file(new) and box.read(new) == p["content"]
                and self.others_intact(box, p))

    def api_plan(self, p):
        return [f"files.rename({q(self.path(p))}, {q(p['new_name'])})"]

    def gui_plan(self, p, ui):
        yield ui.click("table cell", name=p["target"])
        yield ui.key("f2")
        yield ui.key("ctrl", "a")
        yield ui.type(p["new_name"])
        yield ui.key("enter")


class MoveFile(_WithFiles):
    name = "x11.files.move_file"
    apps = ("files", "terminal")

    def sample(self, rng, split):
        p = super().sample(rng, split)
        p["dest"] = f"~/Documents/{pick(rng, FOLDERS, split)[0]}"
        return p

    def setup(self, box, p):
        super().setup(box, p)
        box.mkdir(p["dest"])

    def instruction(self, p):
        return f"Move the file {self.path(p)} into the folder {p['dest']}."

    def check(self, box, p):
        moved = f"{p['dest']}/{p['target']}"
        return (not box.exists(self.path(p)) and box.is_file(moved) and box.read(moved) == p["content"]
                and self.others_intact(box, p))

    def api_plan(self, p):
        return [f"files.move({q(self.path(p))}, {q(p['dest'])})"]

    def gui_plan(self, p, ui):
        yield from self.run_in_terminal(ui, sh("mv", self.path(p), p["dest"] + "/"))


class CopyFile(MoveFile):
    name = "x11.files.copy_file"

    def instruction(self, p):
        return f"Copy the file {self.path(p)} into the folder {p['dest']}, keeping the original."

    def check(self, box, p):
        copy = f"{p['dest']}/{p['target']}"
        return (box.is_file(self.path(p)) and box.is_file(copy) and box.read(copy) == p["content"]
                and self.others_intact(box, p))

    def api_plan(self, p):
        return [f"files.copy({q(self.path(p))}, {q(p['dest'])})"]

    def gui_plan(self, p, ui):
        yield from self.run_in_terminal(ui, sh("cp", self.path(p), p["dest"] + "/"))


class DeleteFile(_WithFiles):
    name = "x11.files.delete_file"
    apps = ("files", "terminal")

    def instruction(self, p):
        return f"Delete the file {self.path(p)}."

    def check(self, box, p):
        return not box.exists(self.path(p)) and self.others_intact(box, p)

    def api_plan(self, p):
        return [f"files.delete({q(self.path(p))})"]

    def gui_plan(self, p, ui):
        yield from self.run_in_terminal(ui, sh("rm", self.path(p)))


class DeleteMissing(X11Family):
    """Infeasible: the file does not exist; the right answer is fail() with nothing changed."""

    name = "x11.files.delete_missing"
    apps = ("files",)
    feasible = False
    max_steps = 10

    def sample(self, rng, split):
        names = text_files(rng, split, 3)
        return {"folder": place(rng), "missing": names[0], "others": names[1:]}

    def setup(self, box, p):
        for n in p["others"]:
            box.write(f"{p['folder']}/{n}", n + "\n")

    def launch(self, p):
        return {"files": (p["folder"],), "editor": (), "terminal": ()}

    def instruction(self, p):
        return f"Delete the file {p['folder']}/{p['missing']}."

    def check(self, box, p):
        snap = box.snapshot()
        want = {f"{p['folder']}/{n}": n + "\n" for n in p["others"]}
        return all(snap.get(k) == v for k, v in want.items()) and \
            sum(v is not None for v in snap.values()) == len(want)

    def api_plan(self, p):
        return [f"files.delete({q(p['folder'] + '/' + p['missing'])})"]

    def gui_plan(self, p, ui):
        return iter(())


class _EditFile(X11Family):
    """Starts with a two-line text file open in the editor."""

    max_steps = 15

    def sample(self, rng, split):
        words = rng.sample(WORDS, 6)
        return {"path": f"{place(rng)}/{text_files(rng, split)[0]}", "words": words,
                "lines": [" ".join(words[:3]), " ".join(words[3:])]}

    def original(self, p) -> str:
        return "\n".join(p["lines"]) + "\n"

    def setup(self, box, p):
        box.write(p["path"], self.original(p))

    def launch(self, p):
        return {"files": (p["path"].rsplit("/", 1)[0],), "editor": (p["path"],), "terminal": ()}

    def editor_text(self, ui, p):
        return ui.find("text", contains=p["lines"][0])


class AppendLine(_EditFile):
    """GUI style types into the real editor and saves with ctrl+s."""

    name = "x11.editor.append_line"
    apps = ("editor",)

    def sample(self, rng, split):
        p = super().sample(rng, split)
        p["line"] = " ".join(rng.sample([w for w in WORDS if w not in p["words"]], 2))
        return p

    def instruction(self, p):
        return f"Add the line '{p['line']}' at the end of {p['path']} and save the file."

    def check(self, box, p):
        return box.is_file(p["path"]) and box.read(p["path"]).rstrip("\n") == \
            self.original(p) + p["line"]

    def api_plan(self, p):
        return [f"editor.open({q(p['path'])})", f"editor.append({q(p['line'] + chr(10))})", "editor.save()"]

    def gui_plan(self, p, ui):
        yield f"click(#{self.editor_text(ui, p).id})"
        yield ui.key("ctrl", "end")
        yield ui.type(p["line"] + "\n")
        yield ui.key("ctrl", "s")


class ReplaceWord(_EditFile):
    name = "x11.editor.replace_word"
    apps = ("editor",)

    def sample(self, rng, split):
        p = super().sample(rng, split)
        p["old"] = rng.choice(p["words"])
        p["new"] = pick(rng, [s for s in STEMS if s not in p["words"]], split)[0]
        return p

    def instruction(self, p):
        return f"In the file {p['path']}, replace the word {p['old']} with {p['new']} and save it."

    def expected(self, p) -> str:
        return self.original(p).replace(p["old"], p["new"])

    def check(self, box, p):
        return box.is_file(p["path"]) and box.read(p["path"]) == self.expected(p)

    def api_plan(self, p):
        return [f"editor.open({q(p['path'])})", f"editor.replace({q(p['old'])}, {q(p['new'])})",
                "editor.save()"]

    def gui_plan(self, p, ui):
        yield f"click(#{self.editor_text(ui, p).id})"
        yield ui.key("ctrl", "a")
        yield ui.type(self.expected(p))
        yield ui.key("ctrl", "s")


class WriteNote(X11Family):
    name = "x11.editor.write_note"
    apps = ("editor",)

    def sample(self, rng, split):
        return {"path": f"{place(rng)}/{text_files(rng, split)[0]}", "text": " ".join(rng.sample(WORDS, 3))}

    def instruction(self, p):
        return f"Create a text file {p['path']} containing exactly the text: {p['text']}"

    def check(self, box, p):
        return box.is_file(p["path"]) and box.read(p["path"]).rstrip("\n") == p["text"]

    def api_plan(self, p):
        return [f"editor.set_text({q(p['text'])})", f"editor.save_as({q(p['path'])})"]

    def gui_plan(self, p, ui):
        yield from self.run_in_terminal(ui, f"printf '%s\\n' {shlex.quote(p['text'])} > "
                                            + sh(p["path"]))


FAMILIES: dict[str, X11Family] = {f.name: f for f in (
    CreateFolder(), RenameFile(), MoveFile(), CopyFile(), DeleteFile(), DeleteMissing(), AppendLine(),
    ReplaceWord(), WriteNote())}
HELDOUT_FAMILIES = frozenset({"x11.files.copy_file"})
# families whose GUI-style expert goes through the file manager / editor widgets (others use the terminal)
WIDGET_GUI_FAMILIES = ("x11.files.rename_file", "x11.editor.append_line", "x11.editor.replace_word")


def families(split: str) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    return [n for n in FAMILIES if split == "heldout" or n not in HELDOUT_FAMILIES]


def make_task(ref: TaskRef) -> Task:
    """The x11 task a ``TaskRef`` names (an empty family samples one of the split's families)."""
    if ref.split not in SPLITS:
        raise ValueError(f"unknown split {ref.split!r}; use one of {SPLITS}")
    name = ref.family or random.Random(f"x11family:{ref.split}:{ref.seed}").choice(families(ref.split))
    if name not in FAMILIES:
        raise ValueError(f"unknown x11 task family {name!r}; known: {', '.join(FAMILIES)}")
    if ref.split != "heldout" and name in HELDOUT_FAMILIES:
        raise ValueError(f"family {name!r} is held out; it only exists in the 'heldout' split")
    return FAMILIES[name].make(ref.seed, ref.split)
