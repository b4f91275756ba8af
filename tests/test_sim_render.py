"""Screenshots and a11y rows come from the same widgets: every row's center lands on its widget."""

import numpy as np
import pytest

from env_server.a11y import parse_rows
from env_server.sim.backend import SimBackend
from env_server.sim.render import decode_id_map, render
from env_server.sim.widgets import SCREEN_H, SCREEN_W
from env_server.tasks.expert import Expert
from env_server.tasks.registry import FAMILIES, HELDOUT_FAMILIES, make_task
from env_server.types import TaskRef


def frames_along_expert_runs(n_families: int | None = None):
    """Yield desktops at every step of GUI expert runs over the families."""
    backend = SimBackend()
    for name in list(FAMILIES)[:n_families]:
        split = "heldout" if name in HELDOUT_FAMILIES else "train"
        task = make_task(TaskRef(name, 1, split))
        obs = backend.reset(task)
        expert = Expert(task, "gui")
        yield backend.desktop
        while not obs.last:
            obs = backend.step(expert.act(obs))
            yield backend.desktop


def test_row_centers_hit_their_widget():
    checked = 0
    for desktop in frames_along_expert_runs():
        frame = desktop.frame()
        ids = decode_id_map(render(frame, id_map=True))
        visible = desktop.visible_widgets()
        rows = parse_rows(desktop.a11y_text())
        for row in rows:
            widget = visible[row.id]
            assert (row.cx, row.cy) == widget.center and (row.w, row.h) == (widget.w, widget.h)
            hit = frame[ids[row.cy, row.cx]]
            # the pixel belongs to the widget itself, or to a child drawn inside it
            assert hit is widget or (widget.contains(hit.x, hit.y)
                                     and widget.contains(hit.x + hit.w - 1, hit.y + hit.h - 1)), (
                row, hit)
            checked += 1
    assert checked > 500


def test_interactive_rows_are_hit_exactly():
    """For leaf widgets that react to input, the pixel at the center is the widget itself."""
    for desktop in frames_along_expert_runs(6):
        frame = desktop.frame()
        ids = decode_id_map(render(frame, id_map=True))
        for widget in desktop.visible_widgets():
            if widget.role in ("button", "file", "folder", "link", "menu item", "text field", "cell",
                               "checkbox", "radio button"):
                cx, cy = widget.center
                assert frame[ids[cy, cx]] is widget, widget


def test_screenshot_shape_and_content():
    backend = SimBackend()
    obs = backend.reset(TaskRef("files.rename_file", 0, "train"), screenshot=True)
    img = obs.screenshot
    assert img.shape == (SCREEN_H, SCREEN_W, 3) and img.dtype == np.uint8
    obs = backend.step('files.open("/home/user")', screenshot=True)
    img2 = obs.screenshot
    assert not np.array_equal(img, img2)
    # a button is drawn: its box differs from the desktop background colour
    row = next(r for r in parse_rows(obs.a11y) if r.role == "button" and r.name == "New Folder")
    patch = img2[row.cy - row.h // 2: row.cy + row.h // 2, row.cx - row.w // 2: row.cx + row.w // 2]
    assert patch.std() > 5  # border and label text, not a flat fill


@pytest.mark.parametrize("seed", [0, 1])
def test_rendering_is_deterministic(seed):
    a, b = SimBackend(), SimBackend()
    oa = a.reset(TaskRef("", seed, "train"), screenshot=True)
    ob = b.reset(TaskRef("", seed, "train"), screenshot=True)
    assert oa.a11y == ob.a11y and np.array_equal(oa.screenshot, ob.screenshot)
