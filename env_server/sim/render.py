"""Screenshots of the simulated desktop, drawn with PIL from the same widget list as the a11y rows.

``render(widgets, id_map=True)`` paints every widget's box in a colour that encodes its index instead;
tests use it to check that each row's center lands on that widget (or on a child inside it).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from env_server.sim.widgets import SCREEN_H, SCREEN_W, Widget

FONT_SIZE = 14

BG = (38, 110, 120)
PANEL = (240, 240, 242)
BORDER = (120, 124, 130)
TEXT = (20, 20, 24)
WHITE = (255, 255, 255)
ACCENT = (52, 120, 220)
SELECT = (198, 220, 250)
DARK = (32, 36, 44)

# role -> (fill, outline, text colour, text alignment)
_STYLE: dict[str, tuple] = {
    "desktop": (BG, None, WHITE, None),
    "window": (PANEL, BORDER, TEXT, None),
    "title bar": (DARK, None, WHITE, "left"),
    "taskbar": (DARK, None, WHITE, None),
    "button": ((226, 228, 232), BORDER, TEXT, "center"),
    "text field": (WHITE, BORDER, TEXT, "left"),
    "text area": (WHITE, BORDER, TEXT, None),
    "text line": (None, None, TEXT, "left"),
    "list": (WHITE, BORDER, TEXT, None),
    "dialog": ((250, 250, 252), DARK, TEXT, None),
    "menu": (WHITE, DARK, TEXT, None),
    "menu item": (None, None, TEXT, "left"),
    "cell": (WHITE, (200, 202, 206), TEXT, "left"),
    "column header": ((230, 232, 236), (200, 202, 206), TEXT, "center"),
    "row header": ((230, 232, 236), (200, 202, 206), TEXT, "center"),
    "combo box": (WHITE, BORDER, TEXT, "left"),
    "list item": (None, None, TEXT, "left"),
    "attachment": ((250, 244, 220), BORDER, TEXT, "left"),
    "terminal": ((24, 26, 32), BORDER, WHITE, None),
    "terminal line": (None, None, (225, 228, 232), "left"),
}
_DEFAULT = (None, None, TEXT, "left")


@lru_cache(maxsize=4)
def _font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _id_colour(index: int) -> tuple[int, int, int]:
    i = index + 1
    return (i & 255, (i >> 8) & 255, (i >> 16) & 255)


def decode_id_map(image: np.ndarray) -> np.ndarray:
    """Per-pixel widget index (-1 = none) of an ``id_map`` render."""
    img = image.astype(np.int64)
    return (img[..., 0] | (img[..., 1] << 8) | (img[..., 2] << 16)) - 1


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _draw_widget(draw: ImageDraw.ImageDraw, w: Widget, font) -> None:
    fill, outline, colour, align = _STYLE.get(w.role, _DEFAULT)
    states = w.states
    box = (w.x, w.y, w.x + w.w - 1, w.y + w.h - 1)
    if "selected" in states or ("active" in states and w.role == "button"):
        fill = SELECT if w.role != "button" else (170, 200, 245)
    if w.role in ("folder", "file"):
        fill = SELECT if "selected" in states else None
    if fill is not None or outline is not None:
        draw.rectangle(box, fill=fill, outline=outline, width=2 if "focused" in states else 1)
    if "focused" in states:
        draw.rectangle(box, outline=ACCENT, width=2)
    text = w.text or w.name
    x0 = w.x + 6
    if w.role in ("folder", "file"):
        icon = (230, 190, 70) if w.role == "folder" else (250, 250, 250)
        draw.rectangle((w.x + 4, w.y + 5, w.x + 20, w.y + w.h - 6), fill=icon, outline=BORDER)
        x0 = w.x + 28
    elif w.role == "checkbox":
        draw.rectangle((w.x + 2, w.y + 4, w.x + 18, w.y + 20), fill=WHITE, outline=BORDER)
        if "checked" in states:
            draw.line((w.x + 5, w.y + 12, w.x + 9, w.y + 17, w.x + 16, w.y + 6), fill=ACCENT, width=3)
        x0 = w.x + 26
    elif w.role == "radio button":
        draw.ellipse((w.x + 2, w.y + 4, w.x + 18, w.y + 20), fill=WHITE, outline=BORDER)
        if "checked" in states:
            draw.ellipse((w.x + 6, w.y + 8, w.x + 14, w.y + 16), fill=ACCENT)
        x0 = w.x + 26
    if align is None or not text:
        return
    text = _fit(draw, text.replace("\n", " "), max(0, w.x + w.w - x0 - 4), font)
    ty = w.y + (w.h - FONT_SIZE) // 2 - 2
    if align == "center":
        tx = w.x + (w.w - draw.textlength(text, font=font)) / 2
    else:
        tx = x0
    draw.text((tx, ty), text, fill=colour, font=font)


def render(widgets: list[Widget], id_map: bool = False,
           size: tuple[int, int] = (SCREEN_W, SCREEN_H)) -> np.ndarray:
    """An RGB screenshot (H, W, 3) uint8 of the widgets, drawn in order."""
    image = Image.new("RGB", size, (0, 0, 0) if id_map else BG)
    draw = ImageDraw.Draw(image)
    font = _font()
    for i, w in enumerate(widgets):
        if id_map:
            draw.rectangle((w.x, w.y, w.x + w.w - 1, w.y + w.h - 1), fill=_id_colour(i))
        else:
            _draw_widget(draw, w, font)
    return np.asarray(image)
