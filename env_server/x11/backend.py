"""The ``x11`` backend: one real desktop (Xvfb + openbox + pcmanfm, mousepad, xterm) per env.

GUI actions are XTEST input events; screenshots are read from Xvfb's framebuffer; the accessibility rows
come from the window manager's window list plus AT-SPI (see :mod:`env_server.x11.rows`). API actions are
real file operations inside the env's home folder, or calls into the running editor through AT-SPI
(text and menu actions), never a shell command built from action text.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from env_server.a11y import Row, format_rows
from env_server.actions import Action, ActionError, Ref
from env_server.backend import Backend, register_backend
from env_server.tasks.base import Task
from env_server.types import Observation, TaskRef
from env_server.x11 import X11_SCHEMA
from env_server.x11.agent_client import AgentClient, AgentDied, AgentError
from env_server.x11.rows import build_rows, terminal_text
from env_server.x11.sandbox import Sandbox, SandboxError, acting_as
from env_server.x11.session import AppSpec, X11Unavailable, XSession, missing_requirements
from env_server.x11.tasks import FAMILIES, X11Family, make_task

log = logging.getLogger(__name__)

BUTTONS = {"click": (1, 1), "double_click": (1, 2), "right_click": (3, 1)}
EDITOR_SUFFIX = " - Mousepad"


class X11Error(RuntimeError):
    """The desktop could not be (re)started or did not come up in time."""


@dataclass
class Snapshot:
    rows: list[Row]
    text: str
    windows: list[dict]
    nodes: list[dict]


def app_specs(terminal_log: str) -> dict[str, AppSpec]:
    return {
        "files": AppSpec("files", ("pcmanfm",), "Pcmanfm"),
        "editor": AppSpec("editor", ("mousepad",), "Mousepad"),
        "terminal": AppSpec("terminal", ("xterm", "-fa", "Monospace", "-fs", "10", "-l", "-lf", terminal_log),
                            "XTerm"),
    }


def tiles(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """Client-area positions per WM_CLASS: files on the left, editor top right, terminal bottom right."""
    half, title = width // 2, 21
    top_h = int(height * 0.58)
    return {"Pcmanfm": (0, 0, half - 2, height - title - 2),
            "Mousepad": (half, 0, width - half - 2, top_h - title - 2),
            "XTerm": (half, top_h, width - half - 2, height - top_h - title - 2)}


class X11Backend(Backend):
    name = "x11"
    schema = X11_SCHEMA

    def __init__(self, width: int = 1280, height: int = 720, max_rows: int = 200,
                 max_steps: int | None = None, user: str | None = "auto", base_dir: str | None = None,
                 settle_min_s: float = 0.12, settle_poll_s: float = 0.08, settle_max_s: float = 3.0,
                 ready_timeout_s: float = 30.0, a11y: bool = True):
        missing = missing_requirements(("pcmanfm", "mousepad", "xterm"))
        if missing:
            raise X11Unavailable(f"the x11 backend needs {', '.join(missing)}; install them with .ci/x11_setup")
        self.width, self.height = width, height
        self.screen_shape = (height, width)
        self.max_rows, self.max_steps_override = max_rows, max_steps
        self.user, self.base_dir = user, base_dir
        self.settle = (settle_min_s, settle_poll_s, settle_max_s)
        self.ready_timeout_s = ready_timeout_s
        self.use_a11y = a11y
        self.session: XSession | None = None
        self.agent: AgentClient | None = None
        self.box: Sandbox | None = None
        self.task: Task | None = None
        self.family: X11Family | None = None
        self.steps = 0
        self.over = False
        self.reward = 0.0
        self.rows: list[Row] = []
        self.editor_path: str | None = None  # the file the editor was opened on (user path)
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def _ensure_session(self) -> None:
        if self.session is not None and self.session.alive() and self.agent is not None \
                and self.agent.proc.poll() is None:
            return
        self._close_session()
        t0 = time.perf_counter()
        self.session = XSession(self.width, self.height, user=self.user, base_dir=self.base_dir,
                                layout=tiles(self.width, self.height))
        self.specs = app_specs(str(self.session.dir / "run" / "terminal.log"))
        self.box = Sandbox(self.session.home, self.session.uid, self.session.gid)
        self._write_app_config()
        self.agent = AgentClient(self.session)
        self._wait_wm()
        self.timings["session_start_s"] = time.perf_counter() - t0

    def _write_app_config(self) -> None:
        cfg = self.session.dir / "xdg" / "config"
        with acting_as(self.session.uid, self.session.gid):
            (cfg / "pcmanfm" / "default").mkdir(parents=True, exist_ok=True)
            (cfg / "pcmanfm" / "default" / "pcmanfm.conf").write_text(
                "[ui]\nview_mode=list\nshow_hidden=0\nalways_show_tabs=0\n")
            (cfg / "libfm").mkdir(exist_ok=True)
            (cfg / "libfm" / "libfm.conf").write_text(
                "[config]\nsingle_click=0\nuse_trash=0\nconfirm_del=1\n[ui]\nshow_thumbnail=0\n")

    def _wait_wm(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.agent.call("wm")["running"]:
                return
            time.sleep(0.05)
        raise X11Error(f"the window manager did not start within {self.ready_timeout_s:g}s")

    def close(self) -> None:
        self._close_session()

    def _close_session(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if self.session is not None:
            self.session.close()
            self.session = None

    # ------------------------------------------------------------------ episodes
    @property
    def max_steps(self) -> int:
        assert self.task is not None
        return self.max_steps_override or self.task.max_steps

    def reset(self, task: TaskRef | Task, *, screenshot: bool = False) -> Observation:
        t0 = time.perf_counter()
        self.task = task if isinstance(task, Task) else make_task(task)
        if self.task.family not in FAMILIES:
            raise ValueError(f"task family {self.task.family!r} is not an x11 family")
        self.family = FAMILIES[self.task.family]
        try:
            self._ensure_session()
            self.session.stop_apps()
            self.box.reset()
            self.family.setup(self.box, self.task.params)
            self._launch(self.family.launch(self.task.params))
        except (AgentDied, AgentError) as err:
            self._close_session()
            raise X11Error(f"the desktop did not come up: {err}") from err
        self.steps, self.over, self.reward = 0, False, 0.0
        obs = self._observe("", {}, screenshot)
        self.timings["reset_s"] = time.perf_counter() - t0
        return obs

    def _launch(self, apps: dict[str, tuple[str, ...]]) -> None:
        log_file = self.session.dir / "run" / "terminal.log"
        if log_file.exists():
            log_file.unlink()
        for name, args in apps.items():
            self._start_app(name, args, wait=False)
        self._wait_apps(list(apps))

    def _start_app(self, name: str, args: tuple[str, ...], wait: bool = True) -> None:
        real = [str(self.box.resolve(a)) if a.startswith(("~", "/")) else a for a in args]
        if name == "editor":
            self.editor_path = args[0] if args else None
        self.session.start_app(self.specs[name], *real)
        if wait:
            self._wait_apps([name])

    def _wait_apps(self, names: list[str]) -> None:
        """Until every app has a mapped window and (GTK apps) an AT-SPI frame."""
        deadline = time.monotonic() + self.ready_timeout_s
        want = {self.specs[n].wm_class: n for n in names}
        gtk_pids = {self.session.app_pid(n) for n in names if n != "terminal"} - {None}
        while True:
            windows = self.agent.call("windows")["windows"]
            have = {w["cls"] for w in windows}
            missing = [n for c, n in want.items() if c not in have]
            pids_seen: set[int] = set()
            if not missing and gtk_pids and self.use_a11y and self.agent.info.get("atspi"):
                pids_seen = {n["pid"] for n in self.agent.call("a11y")["nodes"] if n["top"]}
            if not missing and (not self.use_a11y or not self.agent.info.get("atspi") or gtk_pids <= pids_seen):
                return
            for n in names:
                if self.session.app_pid(n) is None:
                    raise X11Error(f"the {n} app ({self.specs[n].argv[0]}) exited at start-up; see "
                                   f"{self.session.dir / 'logs'}")
            if time.monotonic() > deadline:
                raise X11Error(f"apps did not show up within {self.ready_timeout_s:g}s: "
                               f"{', '.join(missing) or 'accessibility tree'}")
            time.sleep(0.05)

    def step(self, action: str, *, screenshot: bool = False) -> Observation:
        if self.task is None or self.session is None:
            return Observation("", "", error="no task is running; reset first", terminated=True)
        if self.over:
            obs = self._observe("the episode is over; reset to start a new one", {}, screenshot, settle=False)
            obs.terminated = True
            return obs
        self.steps += 1
        error, info = "", {}
        lost = False
        try:
            parsed = X11_SCHEMA.parse(action)
            info["action"] = parsed.to_text()
            result = self._apply(parsed)
            if result:
                info["result"] = result
        except (ActionError, SandboxError, AgentError, X11Error) as err:
            error = str(err)
        except AgentDied as err:
            error = f"the desktop stopped responding ({err}); the episode ends"
            lost = True
        except Exception as err:  # a bug must not take the worker down
            log.exception("x11 backend error on action %r", action)
            error = f"internal x11 backend error: {type(err).__name__}: {err}"
        terminated = self.box.declared is not None
        truncated = lost or (not terminated and self.steps >= self.max_steps)
        if terminated or truncated:
            self.over = True
            self.reward = self.evaluate()
        if lost:
            self._close_session()
            obs = Observation(self.task.instruction, "", error=error, step=self.steps, task_id=self.task.task_id,
                              screenshot=np.zeros((self.height, self.width, 3), np.uint8) if screenshot else None,
                              info=info)
        else:
            obs = self._observe(error, info, screenshot, settle=parsed_is_effectful(action))
        obs.terminated, obs.truncated = terminated, truncated
        obs.reward = self.reward if self.over else 0.0
        return obs

    def evaluate(self) -> float:
        if self.task is None or self.box is None or self.family is None:
            return 0.0
        try:
            return float(self.family.verify(self.box, self.task.params))
        except (SandboxError, OSError):
            return 0.0

    # ------------------------------------------------------------------ actions
    def _apply(self, a: Action) -> str | None:
        if a.kind == "meta":
            self.box.declared = a.name
            return None
        if a.kind == "api":
            return self._api(a)
        args = a.args
        if a.name in BUTTONS:
            x, y = self._point(args)
            button, count = BUTTONS[a.name]
            self.agent.call("click", x=x, y=y, button=button, count=count)
        elif a.name == "type":
            self.agent.call("type", text=args[0], timeout_s=10 + len(args[0]) * 0.05)
        elif a.name == "hotkey":
            self.agent.call("keys", keys=list(args))
        elif a.name == "scroll":
            if isinstance(args[0], Ref):
                x, y = self._point(args[:1])
                self.agent.call("scroll", amount=args[1], x=x, y=y)
            else:
                self.agent.call("scroll", amount=args[0])
        elif a.name == "drag":
            if isinstance(args[0], Ref):
                (x1, y1), (x2, y2) = self._point(args[:1]), self._point(args[1:])
            else:
                x1, y1, x2, y2 = args
            self.agent.call("drag", x1=x1, y1=y1, x2=x2, y2=y2)
        else:  # pragma: no cover - the schema has no other GUI actions
            raise ActionError(f"{a.name} is not supported on x11")
        return None

    def _point(self, args: tuple) -> tuple[int, int]:
        if isinstance(args[0], Ref):
            i = args[0].id
            if not 0 <= i < len(self.rows):
                raise ActionError(f"no row #{i} in the last observation (it has {len(self.rows)} rows)")
            return self.rows[i].cx, self.rows[i].cy
        x, y = args[0], args[1]
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise ActionError(f"point ({x}, {y}) is off the {self.width}x{self.height} screen")
        return x, y

    def _api(self, a: Action) -> str | None:
        box, args, m = self.box, a.args, a.name
        simple = {"files.mkdir": box.mkdir, "files.touch": box.touch, "files.rename": box.rename,
                  "files.move": box.move, "files.delete": box.delete}
        if m in simple:
            return simple[m](*args)
        if m == "files.copy":
            return box.move(args[0], args[1], copy=True)
        if m == "files.open":
            real = box.resolve(args[0])
            if box.is_dir(args[0]):
                self._start_app("files", (args[0],))
                return f"showing {box.display(real)}"
            return self._editor_open(args[0])
        if m == "editor.open":
            return self._editor_open(args[0])
        if m in ("editor.set_text", "editor.append", "editor.replace"):
            i, text = self._editor_buffer()
            if m == "editor.set_text":
                new = args[0]
            elif m == "editor.append":
                new = text + args[0]
            else:
                if not args[0]:
                    raise ActionError("editor.replace: the text to replace is empty")
                if args[0] not in text:
                    raise ActionError(f"editor.replace: {args[0]!r} does not occur in the document")
                new = text.replace(args[0], args[1])
            self.agent.call("set_text", i=i, text=new)
            return None
        if m == "editor.save":
            return self._editor_save()
        if m == "editor.save_as":
            _, text = self._editor_buffer()
            box.write(args[0], text)
            self._start_app("editor", (args[0],))
            return f"saved {args[0]}"
        raise ActionError(f"{m} is not available on the x11 desktop")

    def _editor_open(self, path: str) -> str:
        if not self.box.is_file(path):
            raise SandboxError(f"no such file: {path}")
        self._start_app("editor", (path,))
        return f"opened {path}"

    def _editor_window(self) -> dict:
        pid = self.session.app_pid("editor")
        if pid is None:
            raise ActionError("the editor is not running; use editor.open(path)")
        for w in self.agent.call("windows")["windows"]:
            if w["pid"] == pid and not w["dialog"]:
                return w
        raise ActionError("the editor has no window")

    def _editor_buffer(self) -> tuple[int, str]:
        """The AT-SPI node index of the editor's text area and its whole text."""
        pid = self.session.app_pid("editor")
        if pid is None:
            raise ActionError("the editor is not running; use editor.open(path)")
        nodes = [n for n in self.agent.call("a11y")["nodes"]
                 if n["pid"] == pid and n["role"] == "text" and "editable" in n["states"]]
        if not nodes:
            raise ActionError("the editor's text area is not reachable through accessibility")
        node = max(nodes, key=lambda n: n["box"][2] * n["box"][3])
        return node["i"], self.agent.call("get_text", i=node["i"])["text"]

    def _editor_file(self) -> str | None:
        title = self._editor_window()["title"].lstrip("*")
        if title.endswith(EDITOR_SUFFIX):
            title = title[: -len(EDITOR_SUFFIX)]
        return title if title.startswith(("~/", "/")) else None

    def _editor_save(self) -> str:
        path = self._editor_file() or self.editor_path
        if path is None:
            raise ActionError("the document has no file yet; use editor.save_as(path)")
        _, text = self._editor_buffer()
        pid = self.session.app_pid("editor")
        i = self.agent.call("find_menu_item", pid=pid, path=["File", "Save"])["i"]
        self.agent.call("do_action", i=i)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                if self.box.read(path) == text:
                    return f"saved {path}"
            except SandboxError:
                pass
            time.sleep(0.05)
        raise X11Error(f"the editor did not save {path} within 5s")

    # ------------------------------------------------------------------ observations
    def _snapshot(self) -> Snapshot:
        windows = self.agent.call("windows")["windows"]
        nodes = self.agent.call("a11y")["nodes"] if self.use_a11y else []
        raw = ""
        log_file = self.session.dir / "run" / "terminal.log"
        try:
            with open(log_file, "rb") as f:
                f.seek(max(0, log_file.stat().st_size - 4096))
                raw = f.read().decode("utf-8", "replace")
        except OSError:
            pass
        rows = build_rows(windows, nodes, terminal_text(raw), self.width, self.height)
        return Snapshot(rows, format_rows(rows, self.max_rows), windows, nodes)

    def _settled(self) -> Snapshot:
        """Wait until two consecutive snapshots agree (bounded), so the observation shows the result."""
        lo, poll, hi = self.settle
        t0 = time.monotonic()
        time.sleep(lo)
        prev = self._snapshot()
        while time.monotonic() - t0 < hi:
            time.sleep(poll)
            cur = self._snapshot()
            if cur.text == prev.text:
                return cur
            prev = cur
        return prev

    def _observe(self, error: str, info: dict, screenshot: bool, settle: bool = True) -> Observation:
        snap = self._settled() if settle else self._snapshot()
        self.rows = snap.rows[: self.max_rows]
        return Observation(
            instruction=self.task.instruction, a11y=snap.text, error=error, step=self.steps,
            task_id=self.task.task_id, screenshot=self.session.screenshot() if screenshot else None,
            info=info)

    def screenshot(self) -> np.ndarray:
        if self.session is None:
            raise X11Error("no desktop is running; reset first")
        return self.session.screenshot()


def parsed_is_effectful(action: str) -> bool:
    """Whether to wait for the screen to settle after ``action`` (not after done()/fail())."""
    head = action.strip().split("(", 1)[0].strip()
    return head not in ("done", "fail")


register_backend("x11", X11Backend)
