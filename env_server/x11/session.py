"""One headless X session: Xvfb on a free display, a private D-Bus session bus, openbox, and the apps.

Display numbers are picked by Xvfb itself (``-displayfd``): it tries numbers upwards and claims the first
one whose listening sockets (``/tmp/.X11-unix/X<n>`` and its abstract twin) it can bind, an atomic test
that stands in for ``/tmp/.X<n>-lock`` files (which Xvfb skips in this mode), so concurrent sessions, and
X servers started by hand, never collide. Access to the display needs a fresh MIT-MAGIC-COOKIE (an
``-auth`` file), so other local users cannot connect.

Every process runs in its own process group; :meth:`XSession.close` terminates the groups and every
descendant (D-Bus-activated services included), then removes the session directory. When the server
runs as root, the desktop (bus, window manager, apps, helper) runs as an unprivileged user
(``nobody`` by default) so that a terminal inside the env is not a root shell.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

log = logging.getLogger(__name__)

REQUIRED_PROGRAMS = ("Xvfb", "openbox", "dbus-daemon")
SYSTEM_PYTHON = "/usr/bin/python3"
_PR_SET_PDEATHSIG = 1


class X11Unavailable(RuntimeError):
    """Something the x11 backend needs is missing on this machine (see .ci/x11_setup)."""


def missing_requirements(apps: tuple[str, ...] = ()) -> list[str]:
    """Programs/modules the backend needs that are not installed (empty when all are there)."""
    missing = [p for p in (*REQUIRED_PROGRAMS, *apps) if shutil.which(p) is None]
    if not Path(SYSTEM_PYTHON).exists():
        missing.append(SYSTEM_PYTHON)
    else:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", "import Xlib.ext.xtest"], capture_output=True)
        if probe.returncode != 0:
            missing.append("python3-xlib (for /usr/bin/python3)")
    return missing


def _xauth_entry(family: int, address: bytes, number: bytes, cookie: bytes) -> bytes:
    name = b"MIT-MAGIC-COOKIE-1"
    return b"".join(struct.pack(">H", len(f)) + f if i else struct.pack(">H", f)
                    for i, f in enumerate((family, address, number, name, cookie)))


def _pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class AppSpec:
    """How to start one application of the desktop."""

    name: str  # the app's name in the action grammar ("files", "editor", "terminal")
    argv: tuple[str, ...]
    wm_class: str  # WM_CLASS class, used by the window-manager layout


class XSession:
    """Xvfb + D-Bus + openbox for one env. Apps are started and stopped per episode."""

    def __init__(self, width: int = 1280, height: int = 720, user: str | None = "auto",
                 base_dir: str | None = None, layout: dict[str, tuple[int, int, int, int]] | None = None,
                 start_timeout_s: float = 20.0):
        self.width, self.height = width, height
        self.start_timeout_s = start_timeout_s
        sweep_stale(base_dir)
        self.dir = Path(tempfile.mkdtemp(prefix="x11env-", dir=base_dir))
        self.dir.chmod(0o755)
        (self.dir / "owner.pid").write_text(f"{os.getpid()} {_start_time(os.getpid())}")
        self.home = self.dir / "home"
        self._procs: list[subprocess.Popen] = []
        self._apps: dict[str, subprocess.Popen] = {}
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._procs, str(self.dir), self._apps)
        self.uid, self.gid = None, None
        if user == "auto":
            user = "nobody" if os.geteuid() == 0 else None
        if user is not None:
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                self.close()
                raise X11Unavailable(f"user {user!r} (the desktop's user) does not exist; create it or "
                                     "pass user=None to run the desktop as the server's user") from None
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.display = ""
        self.env: dict[str, str] = {}
        self._fb: np.ndarray | None = None
        try:
            self._start(layout or {})
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ start-up
    def _popen(self, argv: list[str], *, as_user: bool = True, log_name: str = "", **kw) -> subprocess.Popen:
        extra = {}
        if as_user and self.uid is not None:
            extra = {"user": self.uid, "group": self.gid, "extra_groups": []}
        logf = open(self.dir / "logs" / f"{log_name or Path(argv[0]).name}.log", "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                argv, env=kw.pop("env", self.env), cwd=kw.pop("cwd", self.home), stdin=kw.pop("stdin", subprocess.DEVNULL),
                stdout=kw.pop("stdout", logf), stderr=logf, start_new_session=True,
                preexec_fn=_pdeathsig if threading.current_thread() is threading.main_thread() else None,
                **extra, **kw)
        finally:
            logf.close()
        self._procs.append(proc)
        return proc

    def _mkdir(self, path: Path, mode: int = 0o755) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)
        return path

    def _start(self, layout: dict[str, tuple[int, int, int, int]]) -> None:
        missing = missing_requirements()
        if missing:
            raise X11Unavailable(f"the x11 backend needs {', '.join(missing)}; run .ci/x11_setup")
        (self.dir / "logs").mkdir()
        self._mkdir(self.home)
        for sub in ("config", "cache", "data"):
            self._mkdir(self.dir / "xdg" / sub)
        runtime = self._mkdir(self.dir / "run", 0o700)
        cookie = os.urandom(16)
        server_auth = self.dir / "server.xauth"
        server_auth.write_bytes(_xauth_entry(0xFFFF, b"", b"", cookie))
        server_auth.chmod(0o600)
        # 1. Xvfb picks a free display and writes its number to our pipe once it accepts clients
        (self.dir / "fb").mkdir()
        r, w = os.pipe()
        try:
            xvfb = self._popen(["Xvfb", "-displayfd", str(w), "-screen", "0", f"{self.width}x{self.height}x24",
                                "-fbdir", str(self.dir / "fb"), "-nolisten", "tcp", "-auth", str(server_auth),
                                "-noreset"],
                               as_user=False, pass_fds=(w,), env=dict(os.environ))
        finally:
            os.close(w)
        number = _read_line(r, self.start_timeout_s, "Xvfb did not report a display number",
                            self.dir / "logs" / "Xvfb.log")
        if not number.isdigit():
            raise X11Unavailable(f"Xvfb wrote an unexpected display number {number!r}")
        self.display = f":{number}"
        self.xvfb = xvfb
        client_auth = self.dir / "xauth"
        host = socket.gethostname().encode()
        client_auth.write_bytes(_xauth_entry(256, host, number.encode(), cookie)
                                + _xauth_entry(0xFFFF, b"", b"", cookie))
        client_auth.chmod(0o600)
        if self.uid is not None:
            os.chown(client_auth, self.uid, self.gid)
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "DISPLAY": self.display,
            "XAUTHORITY": str(client_auth), "HOME": str(self.home), "USER": "user", "SHELL": "/bin/sh",
            "XDG_CONFIG_HOME": str(self.dir / "xdg" / "config"), "XDG_CACHE_HOME": str(self.dir / "xdg" / "cache"),
            "XDG_DATA_HOME": str(self.dir / "xdg" / "data"), "XDG_RUNTIME_DIR": str(runtime),
            "GTK_MODULES": "gail:atk-bridge", "NO_AT_BRIDGE": "0", "GTK_OVERLAY_SCROLLING": "0",
            "GDK_BACKEND": "x11", "GSETTINGS_BACKEND": "memory", "GIO_USE_VFS": "local",
            "TERM": "xterm",
        }
        # 2. a private session bus (AT-SPI's own bus is launched on it on demand)
        r, w = os.pipe()
        try:
            self._popen(["dbus-daemon", "--session", "--nofork", "--nopidfile", "--nosyslog",
                         f"--address=unix:path={runtime}/bus", f"--print-address={w}"], pass_fds=(w,))
        finally:
            os.close(w)
        self.env["DBUS_SESSION_BUS_ADDRESS"] = _read_line(r, self.start_timeout_s, "dbus-daemon did not start",
                                                          self.dir / "logs" / "dbus-daemon.log")
        # 3. the window manager
        rc = self.dir / "openbox-rc.xml"
        rc.write_text(openbox_config(layout))
        rc.chmod(0o644)
        self._popen(["openbox", "--config-file", str(rc)])

    def screenshot(self) -> np.ndarray:
        """The screen as (H, W, 3) uint8 RGB, read from Xvfb's memory-mapped framebuffer (XWD layout)."""
        if self._fb is None:
            self._fb = _map_xwd(self.dir / "fb" / "Xvfb_screen0", self.width, self.height)
        return self._fb[:, :, 2::-1].copy()

    # ------------------------------------------------------------------ apps
    def start_app(self, spec: AppSpec, *args: str) -> subprocess.Popen:
        """Start ``spec`` with extra arguments (an argument list, never a shell)."""
        self.stop_app(spec.name)
        proc = self._popen([*spec.argv, *args], log_name=spec.name)
        self._apps[spec.name] = proc
        return proc

    def app_pid(self, name: str) -> int | None:
        proc = self._apps.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop_app(self, name: str) -> None:
        self._stop([name])

    def stop_apps(self) -> None:
        self._stop(list(self._apps))

    def _stop(self, names: list[str]) -> None:
        """Kill apps outright (their state is the files, which are already on disk) and reap them."""
        procs = [p for p in (self._apps.pop(n, None) for n in names) if p is not None]
        _terminate(procs, sig=signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(ValueError):
                self._procs.remove(proc)

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        """Start a helper process inside the session (as the session's user)."""
        return self._popen(argv, **kw)

    def chown_tree(self, path: Path) -> None:
        """Give files the backend created to the desktop's user."""
        if self.uid is None:
            return
        for root, dirs, files in os.walk(path):
            os.chown(root, self.uid, self.gid)
            for n in dirs + files:
                with contextlib.suppress(OSError):
                    os.chown(os.path.join(root, n), self.uid, self.gid, follow_symlinks=False)

    def alive(self) -> bool:
        return not self._closed and self.xvfb.poll() is None

    @property
    def pids(self) -> list[int]:
        """Every live process of the session: started ones, their descendants, and the services D-Bus
        activated for it (AT-SPI's bus launcher and registry daemonize, so they are found by their
        runtime directory)."""
        return [p.pid for p in _family(self._procs, str(self.dir / "run"))]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fb = None
        self._finalizer()


def _start_time(pid: int) -> str:
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return ""


def sweep_stale(base_dir: str | None = None) -> list[str]:
    """Remove session directories whose owning process is gone (it was killed before ``close``).

    The session's processes themselves die with their parent (parent-death signal); only files remain.
    """
    removed = []
    for d in Path(base_dir or tempfile.gettempdir()).glob("x11env-*"):
        try:
            pid, started = (d / "owner.pid").read_text().split()
        except (OSError, ValueError):
            continue
        if _start_time(int(pid)) != started:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


def _strays(runtime_dir: str) -> list[psutil.Process]:
    """Processes (not ours by parentage) whose XDG_RUNTIME_DIR is the session's."""
    out = []
    me = os.geteuid()
    for ps in psutil.process_iter():
        try:
            if me != 0 and ps.uids().real != me:
                continue
            if ps.environ().get("XDG_RUNTIME_DIR") == runtime_dir:
                out.append(ps)
        except psutil.Error:
            continue
    return out


def _family(procs: list[subprocess.Popen], runtime_dir: str | None = None) -> list[psutil.Process]:
    out: dict[int, psutil.Process] = {}
    if runtime_dir is not None:
        for ps in _strays(runtime_dir):
            out[ps.pid] = ps
            with contextlib.suppress(psutil.Error):
                out.update((c.pid, c) for c in ps.children(recursive=True))
    for p in procs:
        if p.poll() is not None:
            continue
        try:
            ps = psutil.Process(p.pid)
            out[ps.pid] = ps
            for c in ps.children(recursive=True):
                out[c.pid] = c
        except psutil.NoSuchProcess:
            continue
    return list(out.values())


def _terminate(procs: list[subprocess.Popen], timeout_s: float = 3.0, sig: int = signal.SIGTERM,
               runtime_dir: str | None = None) -> None:
    family = _family(procs, runtime_dir)
    for p in procs:  # whole process groups first (each process was started in its own session)
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
    for ps in family:
        with contextlib.suppress(psutil.Error):
            ps.send_signal(sig)
    for p in procs:  # reap our own children
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=timeout_s)
    alive = _wait_gone(family, timeout_s)
    for ps in alive:
        with contextlib.suppress(psutil.Error):
            ps.kill()
    _wait_gone(alive, timeout_s)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=timeout_s)


def _wait_gone(family: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until each process has exited (a zombie left to init counts as exited); return the rest."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for ps in family:
            with contextlib.suppress(psutil.Error):
                if ps.is_running() and ps.status() != psutil.STATUS_ZOMBIE:
                    alive.append(ps)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def _kill_all(procs: list[subprocess.Popen], directory: str, apps: dict) -> None:
    # apps (and the helper) first and hard, then the bus, the window manager and Xvfb politely
    # (Xvfb removes its socket on SIGTERM)
    core = procs[:3]
    _terminate([p for p in procs if p not in core], sig=signal.SIGKILL)
    apps.clear()
    _terminate(list(reversed(core)), runtime_dir=os.path.join(directory, "run"))
    procs.clear()
    shutil.rmtree(directory, ignore_errors=True)


def _map_xwd(path: Path, width: int, height: int) -> np.ndarray:
    """A (H, W, 4) BGRX view of an XWD file written by ``Xvfb -fbdir`` (32 bits per pixel, LSB first)."""
    head = np.fromfile(path, dtype=">u4", count=25)
    header_size, ncolors = int(head[0]), int(head[19])
    w, h, bpp, stride, byte_order = int(head[4]), int(head[5]), int(head[11]), int(head[12]), int(head[7])
    if (w, h) != (width, height) or bpp != 32 or byte_order != 0:
        raise X11Unavailable(f"unexpected framebuffer layout in {path}: {w}x{h}, {bpp} bpp, order {byte_order}")
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=header_size + 12 * ncolors, shape=(h, stride))
    return mm[:, : w * 4].reshape(h, w, 4)


def _read_line(fd: int, timeout_s: float, what: str, logfile: Path) -> str:
    """Read one line from a pipe ``fd`` (then close it), with a deadline."""
    import select

    data = b""
    deadline = time.monotonic() + timeout_s
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise X11Unavailable(f"{what} within {timeout_s:g}s; see {_tail(logfile)}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise X11Unavailable(f"{what}: it exited; {_tail(logfile)}")
            data += chunk
    finally:
        os.close(fd)
    return data.split(b"\n", 1)[0].decode().strip()


def _tail(logfile: Path) -> str:
    try:
        text = logfile.read_text(errors="replace").strip().splitlines()[-3:]
    except OSError:
        return "no log"
    return "log: " + " | ".join(text) if text else "empty log"


# ---------------------------------------------------------------------------------------------- openbox
_MOUSE = """
  <mouse><dragThreshold>1</dragThreshold><doubleClickTime>500</doubleClickTime>
    <context name="Frame"><mousebind button="A-Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind></context>
    <context name="Titlebar"><mousebind button="Left" action="Drag"><action name="Move"/></mousebind>
      <mousebind button="Left" action="DoubleClick"><action name="ToggleMaximize"/></mousebind></context>
    <context name="Titlebar Top Right Bottom Left TLCorner TRCorner BRCorner BLCorner">
      <mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/><action name="Unshade"/></mousebind></context>
    <context name="Client"><mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
      <mousebind button="Middle" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
      <mousebind button="Right" action="Press"><action name="Focus"/><action name="Raise"/></mousebind></context>
    <context name="Close"><mousebind button="Left" action="Press"><action name="Focus"/><action name="Raise"/></mousebind>
      <mousebind button="Left" action="Click"><action name="Close"/></mousebind></context>
  </mouse>"""


def openbox_config(layout: dict[str, tuple[int, int, int, int]]) -> str:
    """An openbox rc.xml: click-to-focus, alt+tab, no menus or launchers, and fixed app positions."""
    apps = "".join(
        f'<application class="{cls}" type="normal"><position force="yes"><x>{x}</x><y>{y}</y></position>'
        f"<size><width>{w}</width><height>{h}</height></size><focus>yes</focus></application>"
        for cls, (x, y, w, h) in layout.items())
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<openbox_config xmlns="http://openbox.org/3.4/rc">
  <resistance><strength>0</strength><screen_edge_strength>0</screen_edge_strength></resistance>
  <focus><focusNew>yes</focusNew><followMouse>no</followMouse><raiseOnFocus>no</raiseOnFocus></focus>
  <placement><policy>Smart</policy><center>yes</center></placement>
  <theme><name>Clearlooks</name><titleLayout>LC</titleLayout><keepBorder>yes</keepBorder><animateIconify>no</animateIconify></theme>
  <desktops><number>1</number></desktops>
  <margins><top>0</top><bottom>0</bottom><left>0</left><right>0</right></margins>
  <keyboard>
    <keybind key="A-Tab"><action name="NextWindow"><finalactions><action name="Focus"/><action name="Raise"/></finalactions></action></keybind>
  </keyboard>{_MOUSE}
  <menu><file>/dev/null</file></menu>
  <applications>{apps}</applications>
</openbox_config>
"""
