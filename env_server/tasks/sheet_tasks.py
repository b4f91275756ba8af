"""Task families of the spreadsheet."""

from __future__ import annotations

import random

from env_server.actions import format_value as q
from env_server.sim.apps.formula import (
    cells_from_csv,
    csv_of_columns,
    evaluate_cells,
    format_number,
)
from env_server.sim.vfs import HOME
from env_server.tasks import app_gui
from env_server.tasks.base import TaskFamily, pick
from env_server.tasks.pools import STEMS, WORDS, place

FUNCTIONS = {"AVERAGE": "average", "MIN": "smallest value", "MAX": "largest value"}


def load_sheet(desktop, path: str) -> tuple[dict[str, str], dict] | None:
    """(raw cells, values) of a CSV file, or None if it is missing or not a sheet."""
    if not desktop.vfs.is_file(path):
        return None
    try:
        cells = cells_from_csv(desktop.vfs.read(path))
    except ValueError:
        return None
    return cells, evaluate_cells(cells)


def ledger(rng: random.Random, split: str) -> dict:
    """A small two-column sheet: items in column A, amounts in column B."""
    n = rng.randint(3, 6)
    return {"path": f"{place(rng)}/{pick(rng, STEMS, split)[0]}.csv", "items": rng.sample(WORDS, n),
            "amounts": [rng.randint(2, 400) for _ in range(n)]}


def write_ledger(desktop, p: dict) -> None:
    desktop.vfs.write(p["path"], csv_of_columns({"A": p["items"], "B": p["amounts"]}))


def ledger_cells(p: dict) -> dict[str, str]:
    return cells_from_csv(csv_of_columns({"A": p["items"], "B": p["amounts"]}))


def formula_cell_ok(desktop, p: dict, target: str, want: float) -> bool:
    """The ledger file is intact and ``target`` holds a formula whose value is ``want``."""
    loaded = load_sheet(desktop, p["path"])
    if loaded is None:
        return False
    cells, values = loaded
    rest = {k: v for k, v in cells.items() if k != target}
    value = values.get(target)
    return (rest == ledger_cells(p) and cells.get(target, "").startswith("=")
            and isinstance(value, float) and abs(value - want) < 1e-9)


class FillColumn(TaskFamily):
    name = "sheet.fill_column"
    apps = ("sheet",)
    max_steps = 20

    def sample(self, rng, split):
        n = rng.randint(3, 4)
        return {"path": f"{place(rng)}/{pick(rng, STEMS, split)[0]}.csv", "col": rng.choice("ABC"),
                "values": [rng.randint(1, 99) for _ in range(n)]}

    def instruction(self, p):
        n = len(p["values"])
        return (f"Create a spreadsheet {p['path']} with the numbers {', '.join(map(str, p['values']))} "
                f"in cells {p['col']}1 to {p['col']}{n}, and save it.")

    def check(self, desktop, p):
        loaded = load_sheet(desktop, p["path"])
        if loaded is None:
            return False
        want = {f"{p['col']}{i}": float(v) for i, v in enumerate(p["values"], 1)}
        return loaded[1] == want

    def api_plan(self, p):
        return [f"sheet.set_cell({q(p['col'] + str(i))}, {v})" for i, v in enumerate(p["values"], 1)] + [
            f"sheet.save_as({q(p['path'])})"]

    def gui_plan(self, p, ui):
        yield from ui.open_app("Sheet")
        yield from app_gui.sheet_fill(ui, f"{p['col']}1", [str(v) for v in p["values"]])
        yield from app_gui.save_new(ui, p["path"])


class SumFormula(TaskFamily):
    name = "sheet.sum_formula"
    apps = ("sheet",)

    def sample(self, rng, split):
        return ledger(rng, split)

    def setup(self, desktop, p):
        write_ledger(desktop, p)

    def target(self, p) -> str:
        return f"B{len(p['amounts']) + 1}"

    def formula(self, p) -> str:
        return f"=SUM(B1:B{len(p['amounts'])})"

    def instruction(self, p):
        n = len(p["amounts"])
        return f"In {p['path']}, put a formula in {self.target(p)} that adds up B1 to B{n}, then save the file."

    def check(self, desktop, p):
        return formula_cell_ok(desktop, p, self.target(p), float(sum(p["amounts"])))

    def api_plan(self, p):
        return [f"sheet.open({q(p['path'])})", f"sheet.set_formula({q(self.target(p))}, {q(self.formula(p))})",
                "sheet.save()"]

    def gui_plan(self, p, ui):
        yield from app_gui.sheet_open(ui, p["path"])
        yield from app_gui.sheet_fill(ui, self.target(p), [self.formula(p)])
        yield ui.key("ctrl", "s")


class AggregateFormula(SumFormula):
    """Held out: AVERAGE / MIN / MAX instead of SUM, into D1."""

    name = "sheet.aggregate_formula"

    def sample(self, rng, split):
        p = ledger(rng, split)
        p["fn"] = rng.choice(sorted(FUNCTIONS))
        return p

    def target(self, p):
        return "D1"

    def formula(self, p):
        return f"={p['fn']}(B1:B{len(p['amounts'])})"

    def instruction(self, p):
        n = len(p["amounts"])
        return (f"In {p['path']}, put the {FUNCTIONS[p['fn']]} of B1:B{n} into cell D1 using a formula, "
                "then save the file.")

    def check(self, desktop, p):
        a = p["amounts"]
        want = {"AVERAGE": sum(a) / len(a), "MIN": min(a), "MAX": max(a)}[p["fn"]]
        return formula_cell_ok(desktop, p, "D1", float(want))


class FixValue(TaskFamily):
    name = "sheet.fix_value"
    apps = ("sheet",)

    def sample(self, rng, split):
        p = ledger(rng, split)
        p["row"] = rng.randint(1, len(p["amounts"]))
        old = p["amounts"][p["row"] - 1]
        p["new"] = rng.choice([v for v in range(2, 400) if v != old])
        return p

    def setup(self, desktop, p):
        write_ledger(desktop, p)

    def instruction(self, p):
        old = p["amounts"][p["row"] - 1]
        return f"In {p['path']}, change cell B{p['row']} from {old} to {p['new']} and save the file."

    def check(self, desktop, p):
        loaded = load_sheet(desktop, p["path"])
        if loaded is None:
            return False
        want = ledger_cells(p)
        want[f"B{p['row']}"] = format_number(p["new"])
        return loaded[0] == want

    def api_plan(self, p):
        return [f"sheet.open({q(p['path'])})", f"sheet.set_cell({q('B' + str(p['row']))}, {p['new']})",
                "sheet.save()"]

    def gui_plan(self, p, ui):
        yield from app_gui.sheet_open(ui, p["path"])
        yield from app_gui.sheet_fill(ui, f"B{p['row']}", [str(p["new"])])
        yield ui.key("ctrl", "s")


class SumMissingSheet(TaskFamily):
    """Infeasible: the spreadsheet to sum does not exist."""

    name = "sheet.sum_missing"
    apps = ("sheet",)
    feasible = False
    max_steps = 10

    def sample(self, rng, split):
        return {"path": f"{HOME}/Documents/{pick(rng, STEMS, split)[0]}.csv", "row": rng.randint(5, 12)}

    def instruction(self, p):
        return f"Open the spreadsheet {p['path']} and put the total of column B into B{p['row']}."

    def check(self, desktop, p):
        return not desktop.vfs.exists(p["path"])

    def api_plan(self, p):
        return [f"sheet.open({q(p['path'])})"]

    def gui_plan(self, p, ui):
        yield from app_gui.sheet_open(ui, p["path"])


FAMILIES = (FillColumn(), SumFormula(), FixValue(), AggregateFormula(), SumMissingSheet())
HELDOUT = ("sheet.aggregate_formula",)
