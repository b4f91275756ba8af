"""Task families of the text editor."""

from __future__ import annotations

from env_server.actions import format_value as q
from env_server.sim.vfs import HOME
from env_server.tasks.base import TaskFamily, pick
from env_server.tasks.pools import STEMS, WORDS, place, text_files


class WriteNote(TaskFamily):
    name = "editor.write_note"
    apps = ("editor",)

    def sample(self, rng, split):
        return {"path": f"{place(rng)}/{text_files(rng, split)[0]}", "text": " ".join(rng.sample(WORDS, 3))}

    def instruction(self, p):
        return f"Create a text file {p['path']} containing exactly the text: {p['text']}"

    def check(self, desktop, p):
        fs = desktop.vfs
        return fs.is_file(p["path"]) and fs.read(p["path"]).rstrip("\n") == p["text"]

    def api_plan(self, p):
        return [f"editor.set_text({q(p['text'])})", f"editor.save_as({q(p['path'])})"]

    def gui_plan(self, p, ui):
        yield from ui.open_app("Editor")
        yield ui.click("text area", "Document")
        yield ui.key("ctrl", "a")
        yield ui.type(p["text"])
        yield ui.key("ctrl", "s")
        yield ui.type(p["path"])
        yield ui.key("enter")


class _EditExisting(TaskFamily):
    """Families that edit a file that already exists (lines of words)."""

    def sample(self, rng, split):
        words = rng.sample(WORDS, 6)
        lines = [" ".join(words[i:i + 3]) for i in (0, 3)]
        return {"path": f"{place(rng)}/{text_files(rng, split)[0]}", "lines": lines, "words": words}

    def setup(self, desktop, p):
        desktop.vfs.write(p["path"], "\n".join(p["lines"]) + "\n")

    def open_gui(self, p, ui):
        yield from ui.open_app("Editor")
        yield ui.click("button", "Open")
        yield ui.type(p["path"])
        yield ui.key("enter")


class ReplaceWord(_EditExisting):
    name = "editor.replace_word"
    apps = ("editor", "files")

    def sample(self, rng, split):
        p = super().sample(rng, split)
        p["old"] = rng.choice(p["words"])
        p["new"] = pick(rng, [w for w in STEMS if w not in p["words"]], split)[0]
        return p

    def instruction(self, p):
        return f"In the file {p['path']}, replace the word {p['old']} with {p['new']} and save it."

    def check(self, desktop, p):
        want = ("\n".join(p["lines"]) + "\n").replace(p["old"], p["new"])
        return desktop.vfs.is_file(p["path"]) and desktop.vfs.read(p["path"]) == want

    def api_plan(self, p):
        return [f"editor.open({q(p['path'])})", f"editor.replace({q(p['old'])}, {q(p['new'])})",
                "editor.save()"]

    def gui_plan(self, p, ui):
        folder, name = p["path"].rsplit("/", 1)
        yield from ui.files_goto(folder)  # open it from the file manager this time
        yield ui.double_click("file", name)
        yield ui.click("button", "Replace")
        yield ui.type(p["old"])
        yield ui.key("enter")
        yield ui.type(p["new"])
        yield ui.key("enter")
        yield ui.key("ctrl", "s")


class AppendLine(_EditExisting):
    name = "editor.append_line"
    apps = ("editor",)

    def sample(self, rng, split):
        p = super().sample(rng, split)
        p["line"] = " ".join(rng.sample([w for w in WORDS if w not in p["words"]], 2))
        return p

    def instruction(self, p):
        return f"Add the line '{p['line']}' at the end of {p['path']} and save the file."

    def check(self, desktop, p):
        if not desktop.vfs.is_file(p["path"]):
            return False
        got = desktop.vfs.read(p["path"]).rstrip("\n").split("\n")
        return got == [*p["lines"], p["line"]]

    def api_plan(self, p):
        return [f"editor.open({q(p['path'])})", f"editor.append({q(p['line'])})", "editor.save()"]

    def gui_plan(self, p, ui):
        yield from self.open_gui(p, ui)
        yield ui.click("text area", "Document")
        yield ui.type(p["line"])
        yield ui.key("ctrl", "s")


class OpenMissingFile(TaskFamily):
    """Infeasible: edit a file that does not exist."""

    name = "editor.edit_missing"
    apps = ("editor",)
    feasible = False
    max_steps = 10

    def sample(self, rng, split):
        return {"path": f"{HOME}/Downloads/{text_files(rng, split)[0]}", "word": rng.choice(WORDS)}

    def instruction(self, p):
        return f"Open {p['path']} and replace the word {p['word']} with {p['word'].upper()}."

    def check(self, desktop, p):
        return not desktop.vfs.exists(p["path"])

    def api_plan(self, p):
        return [f"editor.open({q(p['path'])})"]

    def gui_plan(self, p, ui):
        yield from ui.open_app("Editor")
        yield ui.click("button", "Open")
        yield ui.type(p["path"])
        yield ui.key("enter")


FAMILIES = (WriteNote(), ReplaceWord(), AppendLine(), OpenMissingFile())
HELDOUT = ("editor.append_line",)
