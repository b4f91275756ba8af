"""The ``x11`` backend: real Xvfb desktops, real apps, real files.

Tests that start X are marked slow and skipped (with the reason) only when Xvfb or the apps are missing;
``.ci/x11_setup`` installs them. Sandbox, row and task-sampling tests run everywhere.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import psutil
import pytest

from env_server.a11y import find_rows, parse_rows
from env_server.actions import format_value
from env_server.tasks.expert import Expert
from env_server.types import TaskRef
from env_server.x11 import X11_SCHEMA
from env_server.x11.rows import build_rows, terminal_text
from env_server.x11.sandbox import Sandbox, SandboxError
from env_server.x11.session import missing_requirements
from env_server.x11.tasks import FAMILIES, HELDOUT_FAMILIES, make_task

MISSING = missing_requirements(("pcmanfm", "mousepad", "xterm"))
needs_x = pytest.mark.skipif(bool(MISSING), reason=f"x11 backend needs {', '.join(MISSING)} (run .ci/x11_setup)")


# ---------------------------------------------------------------------------------------------- no X needed
def test_sandbox_keeps_paths_inside(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    box = Sandbox(home)
    box.reset()
    assert box.resolve("~/Documents") == home / "Documents"
    assert box.resolve("/home/user/Documents/a.txt") == home / "Documents" / "a.txt"
    assert box.resolve(str(home / "Music")) == home / "Music"
    for bad in ("/etc/passwd", "~/../outside", "~/Documents/../../x", "", "a\0b"):
        with pytest.raises(SandboxError):
            box.resolve(bad)
    os.symlink(outside, home / "link")
    with pytest.raises(SandboxError, match="outside"):
        box.touch("~/link/evil.txt")
    with pytest.raises(SandboxError):
        box.write("~/link", "x")  # never write through a symlink
    assert list(outside.iterdir()) == []
    box.delete("~/link")  # removes the link only
    assert outside.is_dir()


def test_sandbox_file_operations(tmp_path):
    box = Sandbox(tmp_path)
    box.reset()
    box.write("~/Documents/a.txt", "hello\n")
    box.mkdir("~/Documents/Sub")
    assert box.rename("~/Documents/a.txt", "b.txt") == "renamed to ~/Documents/b.txt"
    box.move("~/Documents/b.txt", "~/Documents/Sub")
    box.move("~/Documents/Sub/b.txt", "~/Music", copy=True)
    assert box.read("~/Documents/Sub/b.txt") == box.read("~/Music/b.txt") == "hello\n"
    with pytest.raises(SandboxError, match="already exists"):
        box.mkdir("~/Documents/Sub")
    with pytest.raises(SandboxError, match="plain file name"):
        box.rename("~/Music/b.txt", "../x")
    with pytest.raises(SandboxError, match="inside itself"):
        box.move("~/Documents", "~/Documents/Sub")
    with pytest.raises(SandboxError, match="no such"):
        box.delete("~/nothing")
    box.delete("~/Documents")
    snap = box.snapshot()
    assert "~/Documents" not in snap and snap["~/Music/b.txt"] == "hello\n"


def test_rows_from_windows_and_nodes():
    windows = [
        {"id": 2, "title": "notes.txt - Mousepad", "pid": 10, "cls": "Mousepad", "x": 641, "y": 20, "w": 638,
         "h": 400, "frame": [640, 0, 640, 421], "title_h": 20, "active": True, "dialog": False},
        {"id": 3, "title": "xterm", "pid": 11, "cls": "XTerm", "x": 641, "y": 450, "w": 638, "h": 250,
         "frame": [640, 430, 640, 271], "title_h": 20, "active": False, "dialog": False},
    ]
    nodes = [
        {"i": 0, "role": "frame", "name": "notes.txt - Mousepad", "box": [640, 0, 640, 421], "states": [],
         "pid": 10, "top": True, "depth": 0},
        {"i": 1, "role": "push button", "name": 'Say "hi"', "box": [700, 30, 60, 20], "states": ["focused"],
         "pid": 10, "top": False, "depth": 3},
        {"i": 2, "role": "text", "name": "off screen", "box": [5000, 30, 60, 20], "states": [],
         "pid": 10, "top": False, "depth": 3},
    ]
    rows = build_rows(windows, nodes, "$ ls\n$ ", 1280, 720)
    again = parse_rows("\n".join(r.format() for r in rows))
    assert again == rows
    assert [r.role for r in rows] == ["window", "title bar", "push button", "window", "title bar", "terminal"]
    assert rows[0].states == ("active",) and rows[2].name == 'Say "hi"' and (rows[2].cx, rows[2].cy) == (730, 40)
    assert rows[5].name == "$ ls\n$ " and [r.id for r in rows] == list(range(6))


def test_terminal_text_strips_control_sequences():
    assert terminal_text("\x1b[01;32m$\x1b[0m ls\r\nab\bc\x1b]0;title\x07") == "$ ls\nac"


def test_x11_task_sampling_and_splits():
    assert FAMILIES.keys() >= HELDOUT_FAMILIES
    for name in FAMILIES:
        for split in ("train", "heldout"):
            if split == "train" and name in HELDOUT_FAMILIES:
                with pytest.raises(ValueError, match="held out"):
                    make_task(TaskRef(name, 0, split))
                continue
            task = make_task(TaskRef(name, 3, split))
            assert task == make_task(TaskRef(name, 3, split))  # deterministic
            for line in FAMILIES[name].api_plan(task.params):
                X11_SCHEMA.parse(line)  # every expert action is valid on this backend
    seen = {make_task(TaskRef(seed=s)).family for s in range(60)}
    assert seen == set(FAMILIES) - HELDOUT_FAMILIES


# ---------------------------------------------------------------------------------------------- real X
def _lock_files() -> set[str]:
    """Display claims: lock files and listening sockets of X servers."""
    return {p.name for p in Path("/tmp").glob(".X*-lock")} | \
        {p.name for p in Path("/tmp/.X11-unix").glob("X*")}


def _dead(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.mark.slow
@needs_x
def test_sessions_get_distinct_displays_and_leave_nothing_behind():
    from env_server.x11.session import XSession

    before = _lock_files()
    a, b = XSession(), XSession()
    try:
        assert a.display != b.display
        assert {f"X{s.display[1:]}" for s in (a, b)} <= _lock_files()
        pids = a.pids + b.pids
        assert len(pids) >= 6  # Xvfb, dbus-daemon, openbox per session
        shot = a.screenshot()
        assert shot.shape == (720, 1280, 3) and shot.dtype == np.uint8
    finally:
        a.close()
        b.close()
    assert _dead(pids), [p for p in pids if psutil.pid_exists(p)]
    assert _lock_files() <= before
    assert not a.dir.exists() and not b.dir.exists()


def _run(backend, task, style: str, coords: bool = False, screenshot: bool = False):
    expert = Expert(task, style=style, coords=coords)
    obs = backend.reset(task, screenshot=screenshot)
    n = 0
    while not obs.last:
        obs = backend.step(expert.act(obs), screenshot=screenshot)
        n += 1
        assert n <= task.max_steps
    return obs


@pytest.fixture(scope="module")
def backend():
    if MISSING:
        pytest.skip(f"x11 backend needs {', '.join(MISSING)} (run .ci/x11_setup)")
    from env_server.x11.backend import X11Backend

    b = X11Backend()
    yield b
    pids = b.session.pids if b.session is not None else []
    b.close()
    assert _dead(pids)


@pytest.mark.slow
@needs_x
@pytest.mark.parametrize(("family", "style"), [
    ("x11.files.create_folder", "gui"),       # the real terminal
    ("x11.files.rename_file", "gui"),         # the real file manager: select, F2, type, enter
    ("x11.editor.append_line", "gui"),        # the real editor: type, ctrl+s
    ("x11.files.move_file", "api"),
    ("x11.editor.replace_word", "api"),       # AT-SPI text edit + the editor's own File > Save
    ("x11.files.delete_missing", "api"),      # infeasible: fail() is right
])
def test_expert_solves_real_desktop_tasks(backend, family, style):
    task = make_task(TaskRef(family, seed=random.Random(family).randrange(1000)))
    obs = _run(backend, task, style)
    assert obs.reward == 1.0, (task.instruction, obs.error, obs.a11y)
    assert backend.evaluate() == 1.0


@pytest.mark.slow
@needs_x
def test_gui_by_coordinates_and_screenshot(backend):
    task = make_task(TaskRef("x11.files.rename_file", seed=5))
    obs = _run(backend, task, "gui", coords=True, screenshot=True)
    assert obs.reward == 1.0
    shot = obs.screenshot
    assert shot.shape == (720, 1280, 3) and shot.std() > 10  # a real, non-blank desktop
    rows = parse_rows(obs.a11y)
    # the renamed file is listed by the file manager, where the screenshot shows text (dark pixels)
    cell = find_rows(rows, role="table cell", name=task.params["new_name"])[0]
    patch = shot[cell.cy - cell.h // 2: cell.cy + cell.h // 2, cell.cx - cell.w // 2: cell.cx + cell.w // 2]
    assert patch.min() < 100


@pytest.mark.slow
@needs_x
def test_unsolved_bad_and_escaping_actions(backend):
    task = make_task(TaskRef("x11.files.create_folder", seed=8))
    obs = backend.reset(task)
    assert obs.a11y and find_rows(parse_rows(obs.a11y), role="terminal")
    for bad, needle in [("click(#9999)", "no row #9999"), ("files.mkdir('/etc/evil')", "outside"),
                        ("files.delete('~/../../etc')", "not allowed"), ("rm -rf /", "unexpected"),
                        ("editor.save_as('~/Documents')", "folder")]:
        obs = backend.step(bad)
        assert needle in obs.error, (bad, obs.error)
        assert not obs.last
    assert obs.step == 5 and not os.path.exists("/etc/evil")
    obs = backend.step("done()")
    assert obs.terminated and obs.reward == 0.0  # nothing was created


@pytest.mark.slow
@needs_x
def test_helper_crash_ends_episode_and_reset_recovers(backend):
    task = make_task(TaskRef("x11.files.delete_file", seed=2))
    backend.reset(task)
    old = backend.session.pids
    backend.agent.proc.kill()
    obs = backend.step("click(10, 10)")
    assert obs.truncated and "stopped responding" in obs.error
    assert _dead(old)
    assert _run(backend, task, "api").reward == 1.0


@pytest.mark.slow
@needs_x
def test_served_over_grpc_with_the_batched_client():
    from env_server.client import BatchedClient, check
    from env_server.server import ServerConfig, ServerThread

    before = _lock_files()
    refs = [TaskRef("x11.files.move_file", seed=1), TaskRef("x11.editor.append_line", seed=2)]
    with ServerThread(ServerConfig(backend="x11", workers=1, port=0, grace_s=2.0)) as st, \
            BatchedClient(st.address, timeout=120) as client:
        ids = client.create(len(refs))
        results = check(client.reset(ids, refs, screenshot="png"))
        assert all(r.observation.screenshot.shape == (720, 1280, 3) for r in results)
        experts = {i: Expert(make_task(r), "api") for i, r in zip(ids, refs, strict=True)}
        done: dict[int, float] = {}
        for _ in range(10):
            live = [r for r in results if r.env_id not in done]
            if not live:
                break
            actions = [experts[r.env_id].act(r.observation) for r in live]
            results = check(client.step([r.env_id for r in live], actions))
            done.update({r.env_id: r.reward for r in results if r.done})
        assert done == dict.fromkeys(ids, 1.0)
        check(client.close(ids))
    assert _lock_files() <= before


_ORPHAN = """
import sys, time
from env_server.x11.session import XSession
s = XSession()
print(s.dir, *s.pids, flush=True)
time.sleep(120)
"""


@pytest.mark.slow
@needs_x
def test_killed_owner_takes_its_desktop_along():
    import subprocess
    import sys
    import time

    from env_server.x11.session import sweep_stale

    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True)
    try:
        directory, *pids = proc.stdout.readline().split()
        assert pids
    finally:
        proc.kill()  # SIGKILL: no close(), no finalizers
        proc.wait()
    deadline = time.monotonic() + 10
    while not _dead([int(p) for p in pids]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _dead([int(p) for p in pids])  # parent-death signal
    assert directory in sweep_stale()  # and the next session removes the files
    assert not Path(directory).exists()


@pytest.mark.slow
@needs_x
def test_typing_any_text_and_context_menu(backend):
    obs = backend.reset(make_task(TaskRef("x11.editor.append_line", seed=4)))
    # the editor's text view (keyboard focus may still be settling on a loaded machine: clicking gives it)
    rows = parse_rows(obs.a11y)
    texts = find_rows(rows, role="text", state="focused") or find_rows(rows, role="text", state="editable")
    assert texts, obs.a11y
    backend.step(f"click(#{texts[0].id})")
    backend.step('hotkey("ctrl", "home")')
    typed = 'Grüße ☃ 日本 ~!@#$%^&*()_+{}|:<>? "q"'
    obs = backend.step(f"type({format_value(typed)})")
    assert obs.error == ""
    assert find_rows(parse_rows(obs.a11y), role="text", contains=typed)
    obs = backend.step("right_click(300, 400)")  # the file manager's context menu is listed first
    first = parse_rows(obs.a11y)[0]
    assert first.role == "menu" and find_rows(parse_rows(obs.a11y), role="menu item", name="Select All")


def test_family_selection_for_the_x11_backend():
    from jaxrl_desktop.trainer import select_families

    assert select_families("x11.files.create_folder", "train", "x11") == ["x11.files.create_folder"]
    editor = select_families("editor", "train", "x11")
    assert editor and all(f.startswith("x11.editor.") for f in editor)
    assert "x11.files.copy_file" in select_families("files", "heldout", "x11")
    assert "x11.files.copy_file" not in select_families("files", "train", "x11")
    with pytest.raises(ValueError, match=r"unknown family or app.*x11 backend"):
        select_families("sheet", "train", "x11")


@pytest.mark.slow
@needs_x
def test_desktop_eval_runs_the_x11_suite(tmp_path):
    """The same evaluation CLI, expert and random baselines on real-desktop tasks."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "eval.desktop", "--backend=x11", "--workers=1", "--seeds=1",
                          "--policies=random,expert", "--gallery=2", "--split=heldout",
                          "--families=x11.files.create_folder,x11.files.copy_file,x11.files.delete_missing",
                          f"--out={tmp_path}"], cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())["results"]
    assert res["expert"]["overall"]["success"] == 1.0 and res["expert"]["overall"]["episodes"] == 3
    assert res["random"]["overall"]["success"] < 1.0
    assert res["expert"]["by_family"]["x11.files.copy_file"]["heldout_family"] is True
    assert (tmp_path / "gallery.html").stat().st_size > 1000
