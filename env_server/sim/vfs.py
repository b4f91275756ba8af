"""An in-memory virtual file system: the only storage the simulated apps (and the terminal) can touch.

Paths are POSIX-style and always resolved inside this tree; there is no way to reach the host's files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

HOME = "/home/user"
MAX_NAME = 64
MAX_FILE_CHARS = 100_000
_BAD_NAME_CHARS = set('/\\\0<>:"|?*\n\t')


class VFSError(Exception):
    """A file operation that cannot be done; the message is shown to the agent."""


@dataclass
class Node:
    name: str
    is_dir: bool
    content: str = ""
    children: dict[str, Node] = field(default_factory=dict)

    def copy(self) -> Node:
        if not self.is_dir:
            return Node(self.name, False, self.content)
        return Node(self.name, True, "", {k: v.copy() for k, v in self.children.items()})


def check_name(name: str) -> str:
    """Validate one path component (a file or folder name)."""
    if not name or name in (".", ".."):
        raise VFSError(f"invalid name {name!r}")
    if len(name) > MAX_NAME:
        raise VFSError(f"name too long ({len(name)} > {MAX_NAME} characters)")
    bad = sorted(set(name) & _BAD_NAME_CHARS)
    if bad:
        raise VFSError(f"name {name!r} contains a forbidden character {bad[0]!r}")
    if name != name.strip():
        raise VFSError(f"name {name!r} starts or ends with a space")
    return name


def normalize(path: str, cwd: str = HOME) -> str:
    """Absolute, normalised path (``~`` = home; ``..`` never climbs above ``/``)."""
    if not isinstance(path, str) or not path.strip():
        raise VFSError("empty path")
    path = path.strip()
    if path == "~" or path.startswith("~/"):
        path = HOME + path[1:]
    if not path.startswith("/"):
        path = f"{cwd.rstrip('/')}/{path}"
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def split(path: str) -> tuple[str, str]:
    """(parent, name) of a normalised path."""
    if path == "/":
        raise VFSError("the root folder has no parent")
    parent, _, name = path.rpartition("/")
    return parent or "/", name


class VFS:
    """The virtual file system tree."""

    def __init__(self) -> None:
        self.root = Node("", True)

    # ------------------------------------------------------------------ lookups
    def _walk(self, path: str) -> Node | None:
        node = self.root
        if path == "/":
            return node
        for part in path[1:].split("/"):
            if not node.is_dir:
                return None
            nxt = node.children.get(part)
            if nxt is None:
                return None
            node = nxt
        return node

    def get(self, path: str) -> Node:
        node = self._walk(normalize(path))
        if node is None:
            raise VFSError(f"no such file or folder: {normalize(path)}")
        return node

    def exists(self, path: str) -> bool:
        try:
            return self._walk(normalize(path)) is not None
        except VFSError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            node = self._walk(normalize(path))
        except VFSError:
            return False
        return node is not None and node.is_dir

    def is_file(self, path: str) -> bool:
        try:
            node = self._walk(normalize(path))
        except VFSError:
            return False
        return node is not None and not node.is_dir

    def listdir(self, path: str) -> list[Node]:
        """Children of a folder: folders first, then files, each sorted by name."""
        node = self.get(path)
        if not node.is_dir:
            raise VFSError(f"not a folder: {normalize(path)}")
        return sorted(node.children.values(), key=lambda n: (not n.is_dir, n.name.lower(), n.name))

    def read(self, path: str) -> str:
        node = self.get(path)
        if node.is_dir:
            raise VFSError(f"is a folder, not a file: {normalize(path)}")
        return node.content

    def walk(self, path: str = "/") -> Iterator[tuple[str, Node]]:
        """Every (path, node) under ``path``, depth first, sorted."""
        start = normalize(path)
        stack = [(start, self.get(start))]
        while stack:
            p, node = stack.pop()
            yield p, node
            if node.is_dir:
                for name in sorted(node.children, reverse=True):
                    stack.append((f"{p.rstrip('/')}/{name}", node.children[name]))

    # ------------------------------------------------------------------ mutations
    def _parent_dir(self, path: str) -> tuple[Node, str]:
        parent, name = split(path)
        node = self._walk(parent)
        if node is None:
            raise VFSError(f"folder does not exist: {parent}")
        if not node.is_dir:
            raise VFSError(f"not a folder: {parent}")
        return node, check_name(name)

    def mkdir(self, path: str, parents: bool = False) -> str:
        path = normalize(path)
        if parents:
            parent, _ = split(path)
            if parent != "/" and not self.exists(parent):
                self.mkdir(parent, parents=True)
        node, name = self._parent_dir(path)
        if name in node.children:
            if parents and node.children[name].is_dir:
                return path
            raise VFSError(f"already exists: {path}")
        node.children[name] = Node(name, True)
        return path

    def write(self, path: str, content: str, create: bool = True) -> str:
        path = normalize(path)
        if len(content) > MAX_FILE_CHARS:
            raise VFSError(f"file too large ({len(content)} > {MAX_FILE_CHARS} characters)")
        node, name = self._parent_dir(path)
        existing = node.children.get(name)
        if existing is not None and existing.is_dir:
            raise VFSError(f"is a folder, not a file: {path}")
        if existing is None:
            if not create:
                raise VFSError(f"no such file: {path}")
            node.children[name] = Node(name, False, content)
        else:
            existing.content = content
        return path

    def touch(self, path: str) -> str:
        path = normalize(path)
        if self.exists(path):
            if self.is_dir(path):
                raise VFSError(f"is a folder, not a file: {path}")
            return path
        return self.write(path, "")

    def delete(self, path: str) -> str:
        path = normalize(path)
        if path == "/" or path == HOME:
            raise VFSError(f"refusing to delete {path}")
        node, name = self._parent_dir(path)
        if name not in node.children:
            raise VFSError(f"no such file or folder: {path}")
        del node.children[name]
        return path

    def move(self, src: str, dst: str) -> str:
        """Move/rename ``src`` to ``dst``; if ``dst`` is an existing folder, move into it."""
        src, dst = normalize(src), normalize(dst)
        if self.is_dir(dst):
            dst = f"{dst.rstrip('/')}/{split(src)[1]}"
        if src == dst:
            return dst
        if dst.startswith(src.rstrip("/") + "/"):
            raise VFSError(f"cannot move a folder into itself: {src} -> {dst}")
        if src in ("/", HOME):
            raise VFSError(f"refusing to move {src}")
        s_parent, s_name = self._parent_dir(src)
        if s_name not in s_parent.children:
            raise VFSError(f"no such file or folder: {src}")
        d_parent, d_name = self._parent_dir(dst)
        if d_name in d_parent.children:
            raise VFSError(f"already exists: {dst}")
        node = s_parent.children.pop(s_name)
        node.name = d_name
        d_parent.children[d_name] = node
        return dst

    def copy(self, src: str, dst: str) -> str:
        src, dst = normalize(src), normalize(dst)
        if self.is_dir(dst):
            dst = f"{dst.rstrip('/')}/{split(src)[1]}"
        node = self.get(src)
        if dst.startswith(src.rstrip("/") + "/"):
            raise VFSError(f"cannot copy a folder into itself: {src} -> {dst}")
        d_parent, d_name = self._parent_dir(dst)
        if d_name in d_parent.children:
            raise VFSError(f"already exists: {dst}")
        clone = node.copy()
        clone.name = d_name
        d_parent.children[d_name] = clone
        return dst

    def snapshot(self) -> dict[str, str | None]:
        """Path -> content (None for folders): the full state, for verifiers and equality checks."""
        return {p: (None if n.is_dir else n.content) for p, n in self.walk("/")}


def default_tree() -> VFS:
    """The home folder every task starts from (tasks add their own files on top)."""
    fs = VFS()
    for d in ("/home", HOME, f"{HOME}/Documents", f"{HOME}/Downloads", f"{HOME}/Pictures",
              f"{HOME}/Music", f"{HOME}/Desktop", "/tmp"):
        fs.mkdir(d)
    fs.write(f"{HOME}/Documents/readme.txt", "Welcome to the simulated desktop.\n")
    return fs
