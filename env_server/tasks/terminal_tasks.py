"""Task families of the terminal."""

from __future__ import annotations

import random

from env_server.actions import format_value as q
from env_server.tasks import app_gui
from env_server.tasks.base import TaskFamily, pick
from env_server.tasks.pools import FOLDERS, STEMS, WORDS, place, text_files

SUBFOLDERS = ("src", "docs", "tests", "data", "assets", "build", "images", "notes", "drafts", "final")
JUNK_EXTS = (".log", ".tmp", ".bak")


def word_lines(rng: random.Random, n: int, exclude: tuple[str, ...] = ()) -> list[str]:
    pool = [w for w in WORDS if w not in exclude]
    return [" ".join(rng.sample(pool, 3)) for _ in range(n)]


class _Command(TaskFamily):
    """Families solved by shell commands; the API plan and the GUI plan run the same lines."""

    apps = ("terminal",)

    def commands(self, p) -> list[str]:
        raise NotImplementedError

    def api_plan(self, p):
        return [f"terminal.run({q(c)})" for c in self.commands(p)]

    def gui_plan(self, p, ui):
        for command in self.commands(p):
            yield from app_gui.terminal_run(ui, command)


class _TextFile(_Command):
    """Families that start from a text file of a few lines of words."""

    max_steps = 12

    def sample(self, rng, split):
        folder = place(rng)
        return {"path": f"{folder}/{text_files(rng, split)[0]}", "folder": folder,
                "lines": word_lines(rng, rng.randint(3, 12))}

    def setup(self, desktop, p):
        desktop.vfs.write(p["path"], "\n".join(p["lines"]) + "\n")

    def output_lines(self, desktop, p) -> list[str] | None:
        if not desktop.vfs.is_file(p["out"]):
            return None
        return desktop.vfs.read(p["out"]).rstrip("\n").split("\n")


class MakeTree(_Command):
    name = "terminal.make_tree"
    max_steps = 10

    def sample(self, rng, split):
        return {"base": f"{place(rng)}/{pick(rng, FOLDERS, split)[0]}",
                "subs": rng.sample(SUBFOLDERS, rng.randint(2, 3))}

    def instruction(self, p):
        return f"In the terminal, create the folder {p['base']} with the subfolders {', '.join(p['subs'])}."

    def check(self, desktop, p):
        return all(desktop.vfs.is_dir(f"{p['base']}/{s}") for s in p["subs"])

    def commands(self, p):
        return ["mkdir -p " + " ".join(f"{p['base']}/{s}" for s in p["subs"])]


class CountLines(_TextFile):
    name = "terminal.count_lines"

    def sample(self, rng, split):
        p = super().sample(rng, split)
        p["out"] = f"{p['folder']}/line_count.txt"
        return p

    def instruction(self, p):
        return f"Count the lines of {p['path']} and write just the number into {p['out']}."

    def check(self, desktop, p):
        return self.output_lines(desktop, p) == [str(len(p["lines"]))]

    def commands(self, p):
        return [f"wc -l < {p['path']} > {p['out']}"]


class GrepToFile(_TextFile):
    name = "terminal.grep_to_file"

    def sample(self, rng, split):
        p = super().sample(rng, split)
        word = pick(rng, WORDS, split)[0]
        lines = word_lines(rng, rng.randint(4, 8), exclude=(word,))
        for i in rng.sample(range(len(lines)), rng.randint(1, 3)):
            words = lines[i].split()
            words.insert(rng.randint(0, 3), word)
            lines[i] = " ".join(words)
        p.update(lines=lines, word=word, out=f"{p['folder']}/{word}_lines.txt")
        return p

    def instruction(self, p):
        return f"Save every line of {p['path']} that contains '{p['word']}' into {p['out']}."

    def check(self, desktop, p):
        return self.output_lines(desktop, p) == [ln for ln in p["lines"] if p["word"] in ln]

    def commands(self, p):
        return [f"grep {p['word']} {p['path']} > {p['out']}"]


class HeadToFile(_TextFile):
    """Held out."""

    name = "terminal.head_to_file"

    def sample(self, rng, split):
        p = super().sample(rng, split)
        p["k"] = rng.randint(2, len(p["lines"]) - 1)
        p["out"] = f"{p['folder']}/{pick(rng, STEMS, split)[0]}_top.txt"
        return p

    def instruction(self, p):
        return f"Save the first {p['k']} lines of {p['path']} as {p['out']}."

    def check(self, desktop, p):
        return self.output_lines(desktop, p) == p["lines"][:p["k"]]

    def commands(self, p):
        return [f"head -n {p['k']} {p['path']} > {p['out']}"]


class RemoveByExtension(_Command):
    name = "terminal.remove_by_ext"
    max_steps = 10

    def sample(self, rng, split):
        stems = pick(rng, STEMS, split, 4)
        ext = rng.choice(JUNK_EXTS)
        n = rng.randint(2, 3)
        return {"folder": f"{place(rng)}/{pick(rng, FOLDERS, split)[0]}", "ext": ext, "junk": [s + ext for s in stems[:n]],
                "keep": [s + ".txt" for s in stems[n:]] + [f"{stems[0]}.md"]}

    def setup(self, desktop, p):
        desktop.vfs.mkdir(p["folder"])
        for name in p["junk"] + p["keep"]:
            desktop.vfs.write(f"{p['folder']}/{name}", f"content of {name}\n")

    def instruction(self, p):
        return f"Using the terminal, delete every {p['ext']} file in {p['folder']} and keep the other files."

    def check(self, desktop, p):
        fs = desktop.vfs
        return (not any(fs.exists(f"{p['folder']}/{n}") for n in p["junk"])
                and all(fs.is_file(f"{p['folder']}/{n}") for n in p["keep"]))

    def commands(self, p):
        return [f"rm {p['folder']}/*{p['ext']}"]


class CopyMissing(_Command):
    """Infeasible: the file to copy does not exist."""

    name = "terminal.copy_missing"
    feasible = False
    max_steps = 8

    def sample(self, rng, split):
        names = text_files(rng, split, 2)
        folder = place(rng)
        return {"src": f"{folder}/{names[0]}", "dst": f"{folder}/{names[1]}"}

    def setup(self, desktop, p):
        desktop.vfs.write(p["dst"] + ".old", "old\n")  # a near miss, to make the folder non-empty

    def instruction(self, p):
        return f"In the terminal, copy {p['src']} to {p['dst']}."

    def check(self, desktop, p):
        return not desktop.vfs.exists(p["dst"]) and desktop.vfs.is_file(p["dst"] + ".old")

    def commands(self, p):
        return [f"cp {p['src']} {p['dst']}"]


FAMILIES = (MakeTree(), CountLines(), GrepToFile(), RemoveByExtension(), HeadToFile(), CopyMissing())
HELDOUT = ("terminal.head_to_file",)
