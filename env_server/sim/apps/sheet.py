"""Spreadsheet: a grid of cells (A-F x 1-12) holding numbers, text and formulas, a formula bar, and
Open / Save / Save As of CSV files in the virtual file system (formulas are saved as ``=...`` text)."""

from __future__ import annotations

from env_server.actions import api
from env_server.sim.apps.base import App, AppError
from env_server.sim.apps.formula import (
    COLS,
    N_ROWS,
    FormulaError,
    cell_names,
    cells_from_csv,
    cells_to_csv,
    check_ref,
    display,
    evaluate_cells,
    format_number,
    parse_formula,
    parse_number,
    split_ref,
)
from env_server.sim.vfs import normalize
from env_server.sim.widgets import UI, Command

ROW_H = 26
COL_W = 160
HEAD_W = 50
_ORDER = {ref: i for i, ref in enumerate(cell_names())}
_MOVES = {("up",): (0, -1), ("down",): (0, 1), ("left",): (-1, 0), ("right",): (1, 0), ("tab",): (1, 0)}


def _cell(ref: object) -> str:
    try:
        return check_ref(ref)
    except ValueError as err:
        raise AppError(str(err)) from None


class SheetApp(App):
    name = "sheet"
    title = "Sheet"
    API = (
        api("sheet.open", ("path", "str"), doc="open a CSV file as the sheet"),
        api("sheet.set_cell", ("cell", "str"), ("value", "value"), doc="put a number or text in a cell"),
        api("sheet.set_formula", ("cell", "str"), ("formula", "str"), doc="put a formula like =SUM(A1:A3)"),
        api("sheet.clear_cell", ("cell", "str"), doc="empty a cell"),
        api("sheet.save", doc="save the sheet to its CSV file"),
        api("sheet.save_as", ("path", "str"), doc="save the sheet as a new CSV file"),
    )
    OPENS_WINDOW = frozenset({"open"})

    def __init__(self, desktop):
        super().__init__(desktop)
        self.path: str | None = None
        self.cells: dict[str, str] = {}  # raw input per non-empty cell ("12", "apple", "=SUM(A1:A3)")
        self.values: dict[str, float | str] = {}
        self._csv = ""  # CSV text of the cells, kept up to date by _recompute
        self.selected = "A1"
        self.fields["formula"] = ""

    # ----------------------------------------------------------------- model
    def raw(self, ref: str) -> str:
        return self.cells.get(ref, "")

    def value_text(self, ref: str) -> str:
        return display(self.values.get(ref))

    def _recompute(self) -> None:
        self.values = evaluate_cells(self.cells)
        self._csv = cells_to_csv(self.cells)

    def enter(self, ref: str, text: str) -> None:
        """Store what was typed into a cell: empty clears, ``=...`` is a formula, else number or text."""
        text = text.strip()
        if not text:
            self.cells.pop(ref, None)
        elif text.startswith("="):
            try:
                parse_formula(text)
            except FormulaError as err:
                raise AppError(f"bad formula for {ref}: {err}") from None
            self.cells[ref] = "=" + text[1:].strip()
        else:
            number = parse_number(text)
            self.cells[ref] = format_number(number) if number is not None else text
        self.cells = dict(sorted(self.cells.items(), key=lambda kv: _ORDER[kv[0]]))
        self._recompute()

    def load(self, cells: dict[str, str], path: str | None) -> None:
        self.cells = dict(sorted(cells.items(), key=lambda kv: _ORDER[kv[0]]))
        self.path = path
        self._recompute()
        self.selected = "A1"
        self.fields["formula"] = self.raw("A1")

    def dirty(self) -> bool:
        if self.path is None:
            return bool(self.cells)
        return not self.vfs.is_file(self.path) or self.vfs.read(self.path) != self._csv

    # ----------------------------------------------------------------- layout
    def build(self, ui: UI, x: int, y: int, w: int, h: int) -> None:
        if not self.focused("formula"):
            self.fields["formula"] = self.raw(self.selected)
        bx = x + 8
        for label, width, cmd in (("Open", 70, ("dialog", "Open")), ("Save", 70, ("save",)),
                                  ("Save As", 90, ("dialog", "Save As"))):
            ui.button(label, bx, y + 8, width, 30, cmd)
            bx += width + 8
        status = f"File: {self.path or 'Untitled'}" + (" (modified)" if self.dirty() else "")
        ui.label(status, bx + 16, y + 12, x + w - bx - 24, 24, role="status")
        ui.label(f"Cell {self.selected}", x + 8, y + 49, 90, 24)
        ui.field("Formula", self.fields["formula"], x + 104, y + 46, w - 112, 30, "formula",
                 focused=self.focused("formula"))
        top = y + 86
        gx = x + 8 + HEAD_W
        for c, col in enumerate(COLS):
            ui.add("column header", col, gx + c * COL_W, top, COL_W, 24, visible=False)  # drawn only
        for r in range(1, N_ROWS + 1):
            ry = top + 24 + (r - 1) * ROW_H
            ui.add("row header", str(r), x + 8, ry, HEAD_W, ROW_H, visible=False)
            for c, col in enumerate(COLS):
                ref = f"{col}{r}"
                shown = self.value_text(ref)
                ui.add("cell", f"{ref}: {shown}" if shown else ref, gx + c * COL_W, ry, COL_W, ROW_H,
                       click=("cell", ref), states=("selected",) if ref == self.selected else (),
                       text=shown or " ")
        if self.dialog is not None:
            self._build_dialog(ui, x, y, w)

    def _build_dialog(self, ui: UI, x: int, y: int, w: int) -> None:
        dw, dh = 520, 140  # below the grid, so it hides no cell
        dx, dy = x + (w - dw) // 2, y + 86 + 24 + N_ROWS * ROW_H + 16
        ui.add("dialog", self.dialog, dx, dy, dw, dh)
        ui.field("Path", self.fields.get("path", ""), dx + 16, dy + 16, dw - 32, 34, "path",
                 focused=self.focused("path"))
        ok = "Open" if self.dialog == "Open" else "Save"
        ui.button(ok, dx + dw - 236, dy + dh - 50, 120, 34, ("ok",))
        ui.button("Cancel", dx + dw - 108, dy + dh - 50, 92, 34, ("cancel",))

    # ----------------------------------------------------------------- events
    def select(self, ref: str) -> None:
        self.selected = ref
        self.fields["formula"] = self.raw(ref)
        self.focus("formula")
        self.desktop.select_all = True  # typing replaces the cell, as in other spreadsheets

    def _commit_pending(self) -> None:
        if self.focused("formula") and self.fields["formula"].strip() != self.raw(self.selected):
            self.enter(self.selected, self.fields["formula"])

    def _move(self, dc: int, dr: int) -> None:
        col, row = split_ref(self.selected)
        col = min(max(col + dc, 0), len(COLS) - 1)
        row = min(max(row + dr, 1), N_ROWS)
        self.select(f"{COLS[col]}{row}")

    def on_command(self, cmd: Command) -> str | None:
        op = cmd[0]
        if op == "cell":
            self.select(cmd[1])
            return None
        if op == "dialog":
            self._commit_pending()
            self.open_dialog(cmd[1], {"path": self.path if cmd[1] == "Save As" and self.path else ""})
            if self.fields["path"]:
                self.desktop.select_all = True
            return None
        if op == "save":
            return self._save_or_ask()
        if op == "ok":
            return self._confirm()
        if op == "cancel":
            self.close_dialog()
            return None
        return super().on_command(cmd)

    def _save_or_ask(self) -> str | None:
        self._commit_pending()
        if self.path is None:
            self.on_command(("dialog", "Save As"))
            return "choose where to save"
        self.api_save()
        return None

    def _confirm(self) -> str | None:
        path = self.fields.get("path", "")
        if self.dialog == "Open":
            self.api_open(path)
        else:
            self.api_save_as(path)
        self.close_dialog()
        return None

    def on_submit(self, key: str) -> str | None:
        if key == "path" and self.dialog is not None:
            return self._confirm()
        if key == "formula":
            self.enter(self.selected, self.fields["formula"])
            self._move(0, 1)
        return None

    def on_key(self, keys: tuple[str, ...]) -> bool:
        if self.dialog is not None:
            return False
        if keys == ("ctrl", "s"):
            self._save_or_ask()
            return True
        if keys == ("ctrl", "o"):
            self.on_command(("dialog", "Open"))
            return True
        if keys in _MOVES and self.focused("formula"):
            self._commit_pending()
            self._move(*_MOVES[keys])
            return True
        return False

    def on_escape(self) -> bool:
        if self.dialog is None and self.focused("formula"):
            self.fields["formula"] = self.raw(self.selected)  # drop the edit
            self.focus(None)
            return True
        return super().on_escape()

    def state(self) -> dict:
        return {"path": self.path, "cells": dict(self.cells),
                "values": {ref: display(v) for ref, v in self.values.items()}}

    # ----------------------------------------------------------------- API
    def api_open(self, path: str) -> None:
        path = normalize(path)
        if self.vfs.is_dir(path):
            raise AppError(f"is a folder, not a file: {path}")
        text = self.vfs.read(path)
        try:
            cells = cells_from_csv(text, where=path)
        except ValueError as err:
            raise AppError(str(err)) from None
        self.load(cells, path)

    def api_set_cell(self, cell: str, value) -> None:
        ref = _cell(cell)
        if isinstance(value, bool):
            raise AppError("a cell value is a number or text, not true/false")
        if isinstance(value, str):
            if value.strip().startswith("="):
                raise AppError("that is a formula; use sheet.set_formula for formulas")
            self.enter(ref, value)
        else:
            self.enter(ref, format_number(float(value)))

    def api_set_formula(self, cell: str, formula: str) -> None:
        ref = _cell(cell)
        formula = formula.strip()
        if not formula:
            raise AppError("the formula is empty; use sheet.clear_cell to empty a cell")
        self.enter(ref, formula if formula.startswith("=") else "=" + formula)

    def api_clear_cell(self, cell: str) -> None:
        self.enter(_cell(cell), "")

    def api_save(self) -> None:
        if self.path is None:
            raise AppError("the sheet has no file yet; use sheet.save_as")
        self.vfs.write(self.path, self._csv)

    def api_save_as(self, path: str) -> None:
        path = normalize(path)
        self.vfs.write(path, self._csv)
        self.path = path
