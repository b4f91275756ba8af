"""The sandbox: the terminal cannot leave the virtual file system, and no action text runs as code.

While a command or action runs, the host's file functions and ``eval``/``exec``/``compile`` are
replaced by tripwires, so touching the host (or evaluating text) fails the test whatever the
sim's code looks like; the VFS must stay a well-formed tree under ``/``.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from env_server.actions import ActionError, format_value
from env_server.sim import SIM_SCHEMA
from env_server.sim.apps.base import AppError
from env_server.sim.desktop import Desktop
from env_server.sim.vfs import HOME, VFSError

_HOST_FILE_FUNCS = [
    (builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat"), (os, "listdir"),
    (os, "scandir"), (os, "mkdir"), (os, "makedirs"), (os, "remove"), (os, "unlink"),
    (os, "rename"), (os, "replace"), (os, "rmdir"), (os, "symlink"), (os, "link"),
    (os, "chdir"), (os, "readlink"), (os, "walk"), (os, "system"), (os, "popen"),
    (os, "execv"), (os, "fork"), (shutil, "copy"), (shutil, "copyfile"), (shutil, "rmtree"),
    (shutil, "move"),
]
_CODE_FUNCS = [(builtins, "eval"), (builtins, "exec"), (builtins, "compile")]


class Tripped(BaseException):
    """Raised by a tripwire (BaseException so that no ``except Exception`` in the sim hides it)."""


@contextlib.contextmanager
def tripwires():
    """Replace host file access and code evaluation by functions that raise :class:`Tripped`."""
    saved = []
    for module, name in _HOST_FILE_FUNCS + _CODE_FUNCS:
        if hasattr(module, name):
            saved.append((module, name, getattr(module, name)))

            def trip(*args, _name=f"{module.__name__}.{name}", **kwargs):
                raise Tripped(f"{_name} called with {args!r:.200}")

            setattr(module, name, trip)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def test_tripwires_fire():
    with tripwires():
        with pytest.raises(Tripped, match=r"builtins\.open"):
            open("/etc/hostname")  # noqa: SIM115
        with pytest.raises(Tripped, match=r"builtins\.eval"):
            eval("1")
        with pytest.raises(Tripped, match=r"os\.listdir"):
            os.listdir("/")
    assert os.listdir("/")  # restored


def check_tree(desktop: Desktop) -> None:
    """Every VFS path is absolute and normalised; the shell's folder exists."""
    for path, _node in desktop.vfs.walk("/"):
        assert path.startswith("/") and "//" not in path, path
        assert ".." not in path.split("/") and "." not in path.split("/"), path
    terminal = desktop.apps["terminal"]
    assert desktop.vfs.is_dir(terminal.shell.cwd), terminal.shell.cwd


def sh(desktop: Desktop, command: str) -> str | None:
    """Run one command in the terminal; an AppError (a shell error) is returned as its text."""
    with tripwires():
        try:
            return desktop.apps["terminal"].execute(command)
        except AppError as err:
            return f"error: {err}"


# ---------------------------------------------------------------------------- targeted escapes
@pytest.mark.parametrize("command, fragment", [
    ("cd ../../../../../../..", None),
    ("cd ~/../../../../etc", "No such file"),
    ("cat /../../../etc/passwd", "No such file"),
    ("cat ~/../../../etc/shadow", "No such file"),
    ("cat /proc/self/environ", "No such file"),
    ("cat /dev/zero", "No such file"),
    ("ls /proc/self/root", "No such file"),
    ("cp /etc/hostname .", "No such file"),
    ("ln -s /etc/passwd pw", "ln: command not found"),
    ("readlink -f .", "readlink: command not found"),
    ("touch '..\\..\\evil'", "forbidden character"),
    ("touch 'a\\b'", "forbidden character"),
    ("mkdir 'x:y'", "forbidden character"),
    ("echo pwned > /proc/self/root/tmp/owned", None),
    ("cat < /etc/passwd", "No such file"),
    ("cd -", None),
    ("ls ~root", "No such file"),
    ("echo $HOME $(pwd) `pwd`", None),
])
def test_escape_attempts_stay_inside_the_vfs(command, fragment):
    d = Desktop()
    before = d.vfs.snapshot()
    out = sh(d, command)
    if fragment is not None:
        assert out is not None and fragment in out, out
    check_tree(d)
    assert d.apps["terminal"].shell.cwd.startswith("/")
    if command.startswith("cd ../"):
        assert d.apps["terminal"].shell.cwd == "/" and sh(d, "ls") == "home/\ntmp/"
    if "owned" in command:  # a parent that is not in the VFS: refused, nothing written anywhere
        assert out.startswith("error: ") and d.vfs.snapshot() == before


@pytest.mark.parametrize("name", ["...", "....", "~root", "%2e%2e", "\u2024\u2024", ". .", "..;",
                                  "..%2f..", "link@", "\u2025"])
def test_dot_and_link_like_names_are_plain_names_inside_home(name):
    """Names that look like parent folders, links or encoded paths are ordinary names here."""
    d = Desktop()
    quoted = f"'{name}'"
    assert sh(d, f"mkdir -p {quoted}/inner") is None
    assert d.vfs.is_dir(f"{HOME}/{name}/inner")
    assert sh(d, f"cd {quoted}/inner") is None
    assert d.apps["terminal"].shell.cwd == f"{HOME}/{name}/inner"
    assert sh(d, "cd ../..") is None and d.apps["terminal"].shell.cwd == HOME
    assert sh(d, f"rm -r {quoted}") is None and not d.vfs.exists(f"{HOME}/{name}")
    check_tree(d)


def test_nul_and_newline_in_names_are_refused():
    d = Desktop()
    for action in ('terminal.run("touch a\\u0000b")', 'terminal.run("touch a\\nb")',
                   'files.mkdir("/home/user/a\\u0000b")'):
        with tripwires(), contextlib.suppress(ActionError, AppError, VFSError):
            d.apply(SIM_SCHEMA.parse(action))
    assert not any("\0" in p or "\n" in p for p, _ in d.vfs.walk("/"))


# ---------------------------------------------------------------------------- fuzzing
_PATHS = st.sampled_from([
    "..", ".", "/", "~", "~/", "...", "/etc", "/etc/passwd", "/proc/self/root", "/dev/null", "//",
    "../..", "~/../..", "%2e%2e", "\u2024\u2024", "a", "b.txt", "Documents", "*", "?", "/tmp",
    "'a b'", "\\", "..\\..", "x\\ y", "-r", "-n", "1", "$HOME", "~root", "/home/user/../../..",
])
_COMMANDS = st.sampled_from(["ls", "ls -a", "cd", "cat", "mkdir -p", "touch", "echo x >",
                             "echo y >>", "cp", "mv", "rm", "rm -r", "head -n 1", "tail", "wc -l",
                             "grep x", "pwd", "ln -s", "cat <"])
_LINES = st.builds(lambda c, ps, j: f"{c} {j.join(ps)}".strip(), _COMMANDS,
                   st.lists(_PATHS, min_size=0, max_size=4), st.sampled_from([" ", "/", ""]))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINES, min_size=1, max_size=8))
def test_fuzzed_shell_sessions_never_touch_the_host(lines):
    d = Desktop()
    for line in lines:
        out = sh(d, line)  # a tripwire raises Tripped and fails the test
        assert out is None or isinstance(out, str)
        check_tree(d)


_CODEISH = st.sampled_from([
    "__import__('os').system('touch /tmp/pwned')", "open('/etc/passwd').read()", "eval('1+1')",
    "exec('import os')", "lambda: 0", "().__class__.__bases__[0].__subclasses__()",
    "f'{__import__(\"os\")}'", "$(touch /tmp/x)", "`id`", "; rm -rf /", "| cat /etc/passwd",
    "=__import__('os')", "=A1+__builtins__", "${IFS}", "../../../../etc/passwd", "\\x00",
])
_ACTIONS = st.one_of(
    _CODEISH,
    st.builds(lambda c: f"terminal.run({format_value(c)})", _CODEISH | _LINES),
    st.builds(lambda c: f"type({format_value(c)})", _CODEISH),
    st.builds(lambda c: f'sheet.set_formula("A1", {format_value(c)})', _CODEISH),
    st.builds(lambda c: f'sheet.set_cell("B2", {format_value(c)})', _CODEISH),
    st.builds(lambda c: f"editor.open({format_value(c)})", _CODEISH | _PATHS),
    st.builds(lambda a, b: f"files.rename({format_value(a)}, {format_value(b)})", _PATHS, _CODEISH),
    st.builds(lambda c: f"settings.set({format_value(c)}, {format_value(c)})", _CODEISH),
    st.builds(lambda c: f"{c}({format_value('x')})", _CODEISH),
    st.just('hotkey("enter")'), st.just('terminal.run("ls")'),
)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ACTIONS, min_size=1, max_size=6))
def test_action_text_is_never_evaluated_nor_touches_the_host(actions):
    """Code-like action text goes through the parser and the apps with eval/exec/compile and every
    host file function replaced by tripwires: each action either works inside the sim or fails
    with a clear error (ActionError / AppError / VFSError), never anything else."""
    d = Desktop()
    for text in actions:
        with tripwires():
            try:
                d.apply(SIM_SCHEMA.parse(text))
            except (ActionError, AppError, VFSError) as err:
                assert str(err)
        check_tree(d)
