"""A tiny shell over the virtual file system, for the terminal app.

Supported: ``ls cd pwd mkdir touch cat echo cp mv rm wc grep head tail help clear``, quoting
(``'...'``, ``"..."``, backslash), ``~``, ``*``/``?`` wildcards in the last path component, and the
redirections ``> file``, ``>> file`` and ``< file``. Pipes, ``;``, ``&``, subshells and variables are not
supported and say so. There is no host access of any kind: every path goes through
:func:`env_server.sim.vfs.normalize`, which keeps ``..`` inside the virtual root.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from env_server.sim.vfs import HOME, VFS, VFSError, normalize, split

MAX_OUTPUT_CHARS = 20_000
_UNSUPPORTED = frozenset("|;&`()")


class ShellError(Exception):
    """A command that cannot run at all (syntax, unknown command or option)."""


@dataclass
class Word:
    text: str
    glob: bool = False  # contains an unquoted * or ?


# ------------------------------------------------------------------------------------ parsing
def tokenize(line: str) -> list[Word | str]:
    """Split a command line into words and the operators ``>``, ``>>``, ``<``."""
    tokens: list[Word | str] = []
    cur: list[str] | None = None
    glob = False
    i, n = 0, len(line)

    def end_word() -> None:
        nonlocal cur, glob
        if cur is not None:
            tokens.append(Word("".join(cur), glob))
        cur, glob = None, False

    while i < n:
        ch = line[i]
        if ch in " \t":
            end_word()
        elif ch == "'":
            close = line.find("'", i + 1)
            if close < 0:
                raise ShellError("syntax error: unterminated ' quote")
            cur = (cur or []) + [line[i + 1:close]]
            i = close
        elif ch == '"':
            cur = cur or []
            i += 1
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n and line[i + 1] in '"\\$`':
                    i += 1
                cur.append(line[i])
                i += 1
            if i >= n:
                raise ShellError('syntax error: unterminated " quote')
        elif ch == "\\":
            if i + 1 >= n:
                raise ShellError("syntax error: a backslash at the end of the line")
            cur = (cur or []) + [line[i + 1]]
            i += 1
        elif ch in "<>":
            end_word()
            if ch == ">" and i + 1 < n and line[i + 1] == ">":
                tokens.append(">>")
                i += 1
            else:
                tokens.append(ch)
        elif ch in _UNSUPPORTED:
            raise ShellError(f"'{ch}' is not supported here (no pipes, ;, & or subshells); run one "
                             "command at a time (redirection with >, >> and < works)")
        elif ch == "~" and cur is None and (i + 1 == n or line[i + 1] in "/ \t"):
            cur = [HOME]
        else:
            if ch in "*?":
                glob = True
            cur = (cur or []) + [ch]
        i += 1
    end_word()
    return tokens


def parse(tokens: list[Word | str]) -> tuple[list[Word], tuple[str, bool] | None, str | None]:
    """(argv words, stdout redirect (path, append) or None, stdin path or None)."""
    argv: list[Word] = []
    out: tuple[str, bool] | None = None
    inp: str | None = None
    it = iter(tokens)
    for tok in it:
        if isinstance(tok, Word):
            argv.append(tok)
            continue
        target = next(it, None)
        if not isinstance(target, Word) or not target.text:
            raise ShellError(f"syntax error: expected a file name after {tok}")
        if tok == "<":
            inp = target.text
        else:
            out = (target.text, tok == ">>")
    if not argv and (out or inp):
        raise ShellError("syntax error: a redirection needs a command")
    return argv, out, inp


def parse_options(cmd: str, args: list[str], flags: str, valued: str = "") -> tuple[set[str], dict, list]:
    """Split ``-abc`` style flags (and ``-n 5`` / ``-n5`` valued options) from operands."""
    found: set[str] = set()
    values: dict[str, str] = {}
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands.extend(args[i + 1:])
            break
        if arg.startswith("-") and len(arg) > 1 and not operands:
            j = 1
            while j < len(arg):
                ch = arg[j]
                if ch in valued:
                    value = arg[j + 1:]
                    if not value:
                        i += 1
                        if i >= len(args):
                            raise ShellError(f"{cmd}: option -{ch} needs a value")
                        value = args[i]
                    values[ch] = value
                    break
                if ch not in flags:
                    allowed = ", ".join(f"-{c}" for c in flags + valued) or "none"
                    raise ShellError(f"{cmd}: unknown option -{ch} (supported: {allowed})")
                found.add(ch)
                j += 1
        else:
            operands.append(arg)
        i += 1
    return found, values, operands


# ------------------------------------------------------------------------------------ the shell
class Shell:
    """Runs one command line at a time against a VFS; keeps the current directory."""

    def __init__(self, vfs: VFS, cwd: str = HOME):
        self.vfs = vfs
        self.cwd = cwd
        self.clear_requested = False
        self._out: list[str] = []
        self._err: list[str] = []

    # ---------------------------------------------------------------- helpers
    def path(self, operand: str) -> str:
        return normalize(operand, self.cwd)

    def out(self, text: str) -> None:
        self._out.append(text)

    def err(self, text: str) -> None:
        self._err.append(text.rstrip("\n") + "\n")

    def _expand(self, word: Word) -> list[str]:
        if not word.glob:
            return [word.text]
        head, sep, pattern = word.text.rpartition("/")
        if "*" in head or "?" in head:
            return [word.text]
        folder = self.path(head or "/") if sep else self.cwd
        if not self.vfs.is_dir(folder):
            return [word.text]
        names = sorted(n.name for n in self.vfs.listdir(folder)
                       if fnmatch.fnmatchcase(n.name, pattern)
                       and (pattern.startswith(".") or not n.name.startswith(".")))
        return [f"{head}{sep}{n}" for n in names] or [word.text]

    def _read(self, cmd: str, operand: str) -> str | None:
        try:
            if self.vfs.is_dir(self.path(operand)):
                self.err(f"{cmd}: {operand}: Is a directory")
                return None
            return self.vfs.read(self.path(operand))
        except VFSError:
            self.err(f"{cmd}: {operand}: No such file or directory")
            return None

    def _inputs(self, cmd: str, operands: list[str], stdin: str | None) -> list[tuple[str | None, str]]:
        if not operands:
            if stdin is None:
                raise ShellError(f"{cmd}: missing file operand (there is no keyboard input here)")
            return [(None, stdin)]
        out = []
        for op in operands:
            text = self._read(cmd, op)
            if text is not None:
                out.append((op, text))
        return out

    # ---------------------------------------------------------------- entry point
    def run(self, line: str) -> tuple[str, str]:
        """Run one command line; returns (output, error text). Raises ShellError if it cannot run."""
        self._out, self._err = [], []
        words, redirect, stdin_path = parse(tokenize(line))
        if not words:
            return "", ""
        argv = [a for w in words for a in self._expand(w)]
        name, args = argv[0], argv[1:]
        command = COMMANDS.get(name)
        if command is None:
            raise ShellError(f"{name}: command not found; available: {', '.join(COMMANDS)}")
        stdin = None
        if stdin_path is not None:
            stdin = self._read(name, stdin_path)
            if stdin is None:
                return "", "".join(self._err)
        command[0](self, args, stdin)
        output = "".join(self._out)
        if len(output) > MAX_OUTPUT_CHARS:
            output = output[:MAX_OUTPUT_CHARS] + "\n[output truncated]\n"
        if redirect is not None:
            target, append = redirect
            try:
                path = self.path(target)
                if append and self.vfs.is_file(path):
                    output = self.vfs.read(path) + output
                self.vfs.write(path, output)
            except VFSError as err:
                self.err(f"{name}: cannot write {target}: {err}")
            output = ""
        return output, "".join(self._err)


# ------------------------------------------------------------------------------------ commands
def _ls(sh: Shell, args: list[str], stdin: str | None) -> None:
    flags, _, operands = parse_options("ls", args, "al")
    operands = operands or ["."]
    for k, op in enumerate(operands):
        path = sh.path(op)
        if not sh.vfs.exists(path):
            sh.err(f"ls: cannot access '{op}': No such file or directory")
            continue
        nodes = sh.vfs.listdir(path) if sh.vfs.is_dir(path) else [sh.vfs.get(path)]
        if len(operands) > 1 and sh.vfs.is_dir(path):
            sh.out(("\n" if k else "") + f"{op}:\n")
        for node in sorted(nodes, key=lambda nd: nd.name):
            if node.name.startswith(".") and "a" not in flags:
                continue
            name = (node.name + "/" if node.is_dir else node.name) if sh.vfs.is_dir(path) else op
            if "l" in flags:
                size = len(node.children) if node.is_dir else len(node.content)
                sh.out(f"{'d' if node.is_dir else '-'} {size:>7} {name}\n")
            else:
                sh.out(name + "\n")


def _cd(sh: Shell, args: list[str], stdin: str | None) -> None:
    if len(args) > 1:
        raise ShellError("cd: too many arguments")
    target = sh.path(args[0]) if args else HOME
    if not sh.vfs.exists(target):
        sh.err(f"cd: {args[0]}: No such file or directory")
    elif not sh.vfs.is_dir(target):
        sh.err(f"cd: {args[0]}: Not a directory")
    else:
        sh.cwd = target


def _pwd(sh: Shell, args: list[str], stdin: str | None) -> None:
    sh.out(sh.cwd + "\n")


def _need(cmd: str, operands: list[str], n: int = 1) -> None:
    if len(operands) < n:
        raise ShellError(f"{cmd}: missing operand; usage: {COMMANDS[cmd][1]}")


def _mkdir(sh: Shell, args: list[str], stdin: str | None) -> None:
    flags, _, operands = parse_options("mkdir", args, "p")
    _need("mkdir", operands)
    for op in operands:
        try:
            sh.vfs.mkdir(sh.path(op), parents="p" in flags)
        except VFSError as err:
            sh.err(f"mkdir: cannot create directory '{op}': {err}")


def _touch(sh: Shell, args: list[str], stdin: str | None) -> None:
    _, _, operands = parse_options("touch", args, "")
    _need("touch", operands)
    for op in operands:
        try:
            sh.vfs.touch(sh.path(op))
        except VFSError as err:
            sh.err(f"touch: cannot touch '{op}': {err}")


def _cat(sh: Shell, args: list[str], stdin: str | None) -> None:
    _, _, operands = parse_options("cat", args, "")
    for _, text in sh._inputs("cat", operands, stdin):
        sh.out(text)


def _echo(sh: Shell, args: list[str], stdin: str | None) -> None:
    newline = not (args and args[0] == "-n")
    words = args[1:] if not newline else args
    sh.out(" ".join(words) + ("\n" if newline else ""))


def _transfer(sh: Shell, args: list[str], cmd: str) -> None:
    flags, _, operands = parse_options(cmd, args, "rR" if cmd == "cp" else "f")
    _need(cmd, operands, 2)
    *sources, target = operands
    dst = sh.path(target)
    if len(sources) > 1 and not sh.vfs.is_dir(dst):
        raise ShellError(f"{cmd}: target '{target}' is not a directory")
    for op in sources:
        src = sh.path(op)
        try:
            if not sh.vfs.exists(src):
                sh.err(f"{cmd}: cannot stat '{op}': No such file or directory")
                continue
            if cmd == "cp" and sh.vfs.is_dir(src) and not flags & {"r", "R"}:
                sh.err(f"cp: -r not specified; omitting directory '{op}'")
                continue
            final = f"{dst.rstrip('/')}/{split(src)[1]}" if sh.vfs.is_dir(dst) else dst
            if sh.vfs.is_file(final) and sh.vfs.is_file(src) and final != src:
                sh.vfs.delete(final)  # files are overwritten, as cp and mv do
            if cmd == "cp":
                sh.vfs.copy(src, final)
            else:
                sh.vfs.move(src, final)
        except VFSError as err:
            sh.err(f"{cmd}: cannot {'copy' if cmd == 'cp' else 'move'} '{op}': {err}")
    _fix_cwd(sh)


def _cp(sh: Shell, args: list[str], stdin: str | None) -> None:
    _transfer(sh, args, "cp")


def _mv(sh: Shell, args: list[str], stdin: str | None) -> None:
    _transfer(sh, args, "mv")


def _fix_cwd(sh: Shell) -> None:
    while not sh.vfs.is_dir(sh.cwd):  # the current folder was removed or moved away
        sh.cwd = split(sh.cwd)[0]


def _rm(sh: Shell, args: list[str], stdin: str | None) -> None:
    flags, _, operands = parse_options("rm", args, "rRf")
    if not operands and "f" not in flags:
        _need("rm", operands)
    for op in operands:
        path = sh.path(op)
        if not sh.vfs.exists(path):
            if "f" not in flags:
                sh.err(f"rm: cannot remove '{op}': No such file or directory")
            continue
        if sh.vfs.is_dir(path) and not flags & {"r", "R"}:
            sh.err(f"rm: cannot remove '{op}': Is a directory (use rm -r)")
            continue
        try:
            sh.vfs.delete(path)
        except VFSError as err:
            sh.err(f"rm: cannot remove '{op}': {err}")
    _fix_cwd(sh)


def _wc(sh: Shell, args: list[str], stdin: str | None) -> None:
    flags, _, operands = parse_options("wc", args, "lwc")
    chosen = [f for f in "lwc" if f in flags] or ["l", "w", "c"]
    totals = dict.fromkeys("lwc", 0)
    inputs = sh._inputs("wc", operands, stdin)
    for name, text in inputs:
        counts = {"l": text.count("\n"), "w": len(text.split()), "c": len(text)}
        for k in totals:
            totals[k] += counts[k]
        sh.out(" ".join(str(counts[f]) for f in chosen) + (f" {name}" if name else "") + "\n")
    if len(inputs) > 1:
        sh.out(" ".join(str(totals[f]) for f in chosen) + " total\n")


def _grep(sh: Shell, args: list[str], stdin: str | None) -> None:
    flags, _, operands = parse_options("grep", args, "ivnc")
    _need("grep", operands)
    pattern, files = operands[0], operands[1:]
    inputs = sh._inputs("grep", files, stdin)
    needle = pattern.lower() if "i" in flags else pattern
    for name, text in inputs:
        prefix = f"{name}:" if len(inputs) > 1 else ""
        count = 0
        for n, line in enumerate(text.splitlines(), 1):
            hay = line.lower() if "i" in flags else line
            if (needle in hay) != ("v" in flags):
                count += 1
                if "c" not in flags:
                    sh.out(f"{prefix}{f'{n}:' if 'n' in flags else ''}{line}\n")
        if "c" in flags:
            sh.out(f"{prefix}{count}\n")


def _head_tail(sh: Shell, args: list[str], stdin: str | None, cmd: str) -> None:
    if args and args[0][1:].isdigit() and args[0].startswith("-"):
        args = ["-n", args[0][1:], *args[1:]]
    _, values, operands = parse_options(cmd, args, "", "n")
    count = values.get("n", "10")
    if not count.isdigit():
        raise ShellError(f"{cmd}: invalid number of lines: {count!r}")
    k = int(count)
    inputs = sh._inputs(cmd, operands, stdin)
    for i, (name, text) in enumerate(inputs):
        if len(inputs) > 1:
            sh.out(("\n" if i else "") + f"==> {name} <==\n")
        lines = text.splitlines(keepends=True)
        part = lines[:k] if cmd == "head" else lines[max(0, len(lines) - k):] if k else []
        sh.out("".join(part))


def _head(sh: Shell, args: list[str], stdin: str | None) -> None:
    _head_tail(sh, args, stdin, "head")


def _tail(sh: Shell, args: list[str], stdin: str | None) -> None:
    _head_tail(sh, args, stdin, "tail")


def _help(sh: Shell, args: list[str], stdin: str | None) -> None:
    for usage in (u for _, u in COMMANDS.values()):
        sh.out(usage + "\n")
    sh.out("redirection: > FILE, >> FILE, < FILE; wildcards: * and ?\n")


def _clear(sh: Shell, args: list[str], stdin: str | None) -> None:
    sh.clear_requested = True


Command = Callable[[Shell, list[str], "str | None"], None]
COMMANDS: dict[str, tuple[Command, str]] = {
    "ls": (_ls, "ls [-a] [-l] [PATH...]"),
    "cd": (_cd, "cd [DIR]"),
    "pwd": (_pwd, "pwd"),
    "mkdir": (_mkdir, "mkdir [-p] DIR..."),
    "touch": (_touch, "touch FILE..."),
    "cat": (_cat, "cat FILE..."),
    "echo": (_echo, "echo [-n] TEXT..."),
    "cp": (_cp, "cp [-r] SRC... DST"),
    "mv": (_mv, "mv SRC... DST"),
    "rm": (_rm, "rm [-r] [-f] PATH..."),
    "wc": (_wc, "wc [-l] [-w] [-c] FILE..."),
    "grep": (_grep, "grep [-i] [-v] [-n] [-c] TEXT FILE... (TEXT is plain text, not a regex)"),
    "head": (_head, "head [-n N] FILE..."),
    "tail": (_tail, "tail [-n N] FILE..."),
    "help": (_help, "help"),
    "clear": (_clear, "clear"),
}
