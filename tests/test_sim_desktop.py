"""The simulated desktop: window manager, files and editor apps, GUI/API equivalence, errors."""

import pytest

from env_server.a11y import find_rows, parse_rows
from env_server.backend import make_backend
from env_server.sim import SIM_SCHEMA
from env_server.sim.desktop import Desktop
from env_server.sim.vfs import HOME
from env_server.types import TaskRef


def run(desktop: Desktop, *actions: str) -> list[str | None]:
    return [desktop.apply(SIM_SCHEMA.parse(a)) for a in actions]


def rows(desktop: Desktop):
    return parse_rows(desktop.a11y_text())


def ref(desktop: Desktop, role: str, name: str | None = None, contains: str | None = None) -> str:
    hits = find_rows(rows(desktop), role=role, name=name, contains=contains)
    assert hits, (role, name, contains, desktop.a11y_text())
    return f"#{hits[0].id}"


def test_taskbar_opens_and_switches_windows():
    d = Desktop()
    assert not find_rows(rows(d), role="window")
    run(d, f"click({ref(d, 'button', 'Files')})")
    assert find_rows(rows(d), role="window")[0].name == "Files"
    run(d, f"click({ref(d, 'button', 'Editor')})")
    assert find_rows(rows(d), role="window")[0].name == "Editor"
    run(d, f"click({ref(d, 'button', 'Close')})")
    assert find_rows(rows(d), role="window")[0].name == "Files"


def test_gui_mkdir_equals_api_mkdir():
    gui, api_ = Desktop(), Desktop()
    run(gui, f"click({ref(gui, 'button', 'Files')})")
    run(gui, f"click({ref(gui, 'link', 'Documents')})")
    run(gui, f"click({ref(gui, 'button', 'New Folder')})", 'type("Taxes")', 'hotkey("enter")')
    run(api_, f'files.mkdir("{HOME}/Documents/Taxes")')
    assert gui.vfs.snapshot() == api_.vfs.snapshot()
    assert gui.vfs.is_dir(f"{HOME}/Documents/Taxes")


def test_click_by_coordinates_matches_click_by_ref():
    d = Desktop()
    files = find_rows(rows(d), role="button", name="Files")[0]
    run(d, f"click({files.cx}, {files.cy})")
    assert find_rows(rows(d), role="window")[0].name == "Files"


def test_rename_via_context_menu_and_drag_and_drop():
    d = Desktop()
    d.vfs.write(f"{HOME}/Documents/a.txt", "A")
    run(d, f'files.open("{HOME}/Documents")')
    run(d, f"right_click({ref(d, 'file', 'a.txt')})")
    assert find_rows(rows(d), role="menu")
    run(d, f"click({ref(d, 'menu item', 'Rename')})", 'type("b.txt")', 'hotkey("enter")')
    assert d.vfs.read(f"{HOME}/Documents/b.txt") == "A"
    # drag the file onto a place in the sidebar moves it there
    run(d, f"drag({ref(d, 'file', 'b.txt')}, {ref(d, 'link', 'Downloads')})")
    assert d.vfs.is_file(f"{HOME}/Downloads/b.txt")


def test_modal_dialog_blocks_the_window_but_not_the_taskbar():
    d = Desktop()
    run(d, "files.open(\"/home/user\")")
    run(d, f"click({ref(d, 'button', 'New Folder')})")
    with pytest.raises(Exception, match="dialog 'New Folder' is open"):
        run(d, f"click({ref(d, 'button', 'Delete')})")
    run(d, f"click({ref(d, 'button', 'Editor')})")  # taskbar still works
    assert find_rows(rows(d), role="window")[0].name == "Editor"
    run(d, f"click({ref(d, 'button', 'Files')})", 'hotkey("escape")')
    assert not find_rows(rows(d), role="dialog")


def test_editor_type_save_and_replace():
    d = Desktop()
    run(d, f"click({ref(d, 'button', 'Editor')})")
    run(d, f"click({ref(d, 'text area')})", 'type("one two\\nthree two")', 'hotkey("ctrl", "s")')
    assert find_rows(rows(d), role="dialog", name="Save As")
    run(d, f'type("{HOME}/t.txt")', 'hotkey("enter")')
    assert d.vfs.read(f"{HOME}/t.txt") == "one two\nthree two"
    run(d, 'editor.replace("two", "2")', "editor.save()")
    assert d.vfs.read(f"{HOME}/t.txt") == "one 2\nthree 2"
    assert [r.name for r in find_rows(rows(d), role="text line")] == ["one 2", "three 2"]


def test_typing_needs_focus_and_errors_are_clear():
    d = Desktop()
    with pytest.raises(Exception, match="no text field has focus"):
        run(d, 'type("x")')
    with pytest.raises(Exception, match="no element #999"):
        run(d, "click(#999)")
    with pytest.raises(Exception, match="off the 1280x720 screen"):
        run(d, "click(5000, 10)")
    with pytest.raises(Exception, match="no such file"):
        run(d, 'files.delete("/home/user/ghost.txt")')


def test_list_scrolls_to_reveal_items():
    d = Desktop()
    for i in range(40):
        d.vfs.write(f"{HOME}/Documents/f{i:02d}.txt", "")
    run(d, f'files.open("{HOME}/Documents")')
    assert not find_rows(rows(d), role="file", name="f39.txt")
    run(d, "scroll(30)")
    assert find_rows(rows(d), role="file", name="f39.txt")
    run(d, "scroll(-100)")
    assert find_rows(rows(d), role="file", name="f00.txt")


def test_backend_bad_actions_cost_a_step_and_never_raise():
    b = make_backend("sim")
    obs = b.reset(TaskRef("files.create_folder", 0, "train"))
    for step, text in enumerate(["", "click(", "rm -rf /", "files.delete(\"/\")", "click(#500)"], 1):
        obs = b.step(text)
        assert obs.error and obs.step == step and not obs.last
    assert b.evaluate() == 0.0


def test_episode_ends_on_done_and_truncation():
    b = make_backend("sim", max_steps=3)
    b.reset(TaskRef("files.create_folder", 0, "train"))
    obs = b.step("scroll(1)")
    obs = b.step("scroll(1)")
    obs = b.step("scroll(1)")
    assert obs.truncated and not obs.terminated and obs.reward == 0.0
    obs = b.step("done()")
    assert obs.terminated and "episode is over" in obs.error
    obs = b.reset(TaskRef("files.create_folder", 0, "train"))
    obs = b.step("done()")
    assert obs.terminated and obs.reward == 0.0  # declared done without doing the task
