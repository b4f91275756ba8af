"""Real file operations confined to one env's home directory.

Paths in actions and tasks are written as the user sees them: ``~/Documents/a.txt``, or
``/home/user/Documents/a.txt`` (the simulated desktop's home, accepted as an alias), or the real absolute
path under the sandbox. Every path is resolved without following a final symlink and must stay inside
the sandbox; nothing is ever handed to a shell.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SIM_HOME = "/home/user"
STANDARD_FOLDERS = ("Desktop", "Documents", "Downloads", "Music", "Pictures")
MAX_FILE_BYTES = 1 << 20


class SandboxError(ValueError):
    """An impossible or forbidden file operation; the message is meant for the agent."""


_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def acting_as(uid: int | None, gid: int | None) -> Iterator[None]:
    """Check file access as ``uid``/``gid`` (Linux filesystem ids of this thread), then switch back.

    A root server thus touches the sandbox with the desktop user's rights: a symlink planted by the
    agent cannot make an API call write outside what that user may write anyway.
    """
    if uid is None:
        yield
        return
    old_gid = _libc.setfsgid(gid)
    old_uid = _libc.setfsuid(uid)
    if _libc.setfsuid(uid) != uid:
        _libc.setfsgid(old_gid)
        raise PermissionError(f"could not switch file access to uid {uid}")
    try:
        yield
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)


def _as_owner(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self: Sandbox, *args, **kwargs):
        with acting_as(self.uid, self.gid):
            return fn(self, *args, **kwargs)
    return wrapper


class Sandbox:
    """The env's home folder with checked file operations (run with the desktop user's file rights)."""

    def __init__(self, root: Path, uid: int | None = None, gid: int | None = None):
        self.root = Path(root)
        self.uid, self.gid = uid, gid
        self.declared: str | None = None  # "done" / "fail" once the agent ends the episode

    # ------------------------------------------------------------------ paths
    def resolve(self, path: str) -> Path:
        """The real path of a user path; raises :class:`SandboxError` if it leaves the sandbox."""
        if not isinstance(path, str) or not path.strip():
            raise SandboxError("a path must be a non-empty string")
        if "\0" in path:
            raise SandboxError("a path cannot contain NUL characters")
        p = path.strip()
        if p == "~" or p.startswith("~/"):
            rel = p[2:]
        elif p == SIM_HOME or p.startswith(SIM_HOME + "/"):
            rel = p[len(SIM_HOME) + 1:]
        elif p.startswith(str(self.root) + "/") or p == str(self.root):
            rel = p[len(str(self.root)) + 1:]
        elif p.startswith("/"):
            raise SandboxError(f"{path}: outside the home folder (use ~/... paths)")
        else:
            rel = p  # relative to home
        parts = [s for s in rel.split("/") if s not in ("", ".")]
        if ".." in parts:
            raise SandboxError(f"{path}: '..' is not allowed in paths")
        if not parts:
            return self.root
        real = self.root.joinpath(*parts)
        # the parent chain must not escape through a symlink
        parent = real.parent.resolve()
        root = self.root.resolve()
        if parent != root and root not in parent.parents:
            raise SandboxError(f"{path}: resolves outside the home folder")
        return real

    def display(self, real: Path) -> str:
        """The ``~/...`` form of a real path inside the sandbox."""
        rel = real.relative_to(self.root).as_posix()
        return "~" if rel == "." else f"~/{rel}"

    # ------------------------------------------------------------------ queries (verifiers)
    @_as_owner
    def exists(self, path: str) -> bool:
        return os.path.lexists(self.resolve(path))

    @_as_owner
    def is_file(self, path: str) -> bool:
        p = self.resolve(path)
        return p.is_file() and not p.is_symlink()

    @_as_owner
    def is_dir(self, path: str) -> bool:
        p = self.resolve(path)
        return p.is_dir() and not p.is_symlink()

    @_as_owner
    def read(self, path: str) -> str:
        p = self.resolve(path)
        if not p.is_file() or p.is_symlink():
            raise SandboxError(f"{path}: no such file")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise SandboxError(f"{path}: file is too large to read")
        return p.read_text(errors="replace")

    @_as_owner
    def snapshot(self) -> dict[str, str | None]:
        """``{~/relative path: content or None for folders}`` of every non-hidden entry."""
        out: dict[str, str | None] = {}
        for dirpath, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            base = Path(dirpath)
            for d in dirs:
                out[self.display(base / d)] = None
            for f in sorted(files):
                if not f.startswith("."):
                    p = base / f
                    out[self.display(p)] = p.read_text(errors="replace") if p.stat().st_size <= MAX_FILE_BYTES else "<large>"
        return out

    # ------------------------------------------------------------------ operations (API actions)
    @_as_owner
    def reset(self) -> None:
        """Empty the home folder and recreate the standard folders."""
        self.declared = None
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        for name in STANDARD_FOLDERS:
            (self.root / name).mkdir()

    @_as_owner
    def write(self, path: str, text: str) -> str:
        p = self.resolve(path)
        if p.is_dir() or p.is_symlink():
            raise SandboxError(f"{path}: is a folder or a link")
        if not p.parent.is_dir():
            raise SandboxError(f"{path}: folder {self.display(p.parent)} does not exist")
        p.write_text(text)
        return f"wrote {self.display(p)}"

    @_as_owner
    def mkdir(self, path: str, parents: bool = False) -> str:
        p = self.resolve(path)
        if os.path.lexists(p):
            raise SandboxError(f"{path}: already exists")
        if not parents and not p.parent.is_dir():
            raise SandboxError(f"{path}: parent folder does not exist")
        p.mkdir(parents=parents)
        return f"created folder {self.display(p)}"

    @_as_owner
    def touch(self, path: str) -> str:
        p = self.resolve(path)
        if os.path.lexists(p):
            raise SandboxError(f"{path}: already exists")
        return self.write(path, "")

    @_as_owner
    def rename(self, path: str, new_name: str) -> str:
        src = self._existing(path)
        if not new_name or "/" in new_name or new_name in (".", ".."):
            raise SandboxError(f"new name {new_name!r} must be a plain file name (no '/')")
        dst = src.parent / new_name
        if os.path.lexists(dst):
            raise SandboxError(f"{self.display(dst)}: already exists")
        src.rename(dst)
        return f"renamed to {self.display(dst)}"

    @_as_owner
    def move(self, src: str, dst: str, copy: bool = False) -> str:
        s = self._existing(src)
        d = self.resolve(dst)
        if d.is_dir() and not d.is_symlink():
            d = d / s.name
        elif not d.parent.is_dir():
            raise SandboxError(f"{dst}: folder {self.display(d.parent)} does not exist")
        if os.path.lexists(d):
            raise SandboxError(f"{self.display(d)}: already exists")
        if s.is_dir() and (d == s or s in d.parents):
            raise SandboxError(f"cannot put {src} inside itself")
        if copy:
            if s.is_dir():
                shutil.copytree(s, d, symlinks=True)
            else:
                shutil.copy2(s, d, follow_symlinks=False)
        else:
            s.rename(d)
        return f"{'copied' if copy else 'moved'} to {self.display(d)}"

    @_as_owner
    def delete(self, path: str) -> str:
        p = self._existing(path)
        if p == self.root:
            raise SandboxError("cannot delete the home folder")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        return f"deleted {path}"

    def _existing(self, path: str) -> Path:
        p = self.resolve(path)
        if not os.path.lexists(p):
            raise SandboxError(f"no such file or folder: {path}")
        return p
