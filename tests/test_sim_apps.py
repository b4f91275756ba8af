"""The sheet, terminal, settings and mail apps: GUI and API twins reach the same state, errors are clear,
the formula parser and the shell are safe, CSV round trips."""

import contextlib
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from env_server.a11y import find_rows, parse_rows
from env_server.actions import format_value
from env_server.sim import SIM_SCHEMA
from env_server.sim.apps import shell as shell_module
from env_server.sim.apps.base import AppError
from env_server.sim.apps.formula import (
    FormulaError,
    cells_from_csv,
    cells_to_csv,
    display,
    evaluate_cells,
    parse_formula,
)
from env_server.sim.apps.settings import DEFAULTS
from env_server.sim.desktop import Desktop
from env_server.sim.render import decode_id_map, render
from env_server.sim.vfs import HOME


def run(desktop: Desktop, *actions: str) -> list[str | None]:
    return [desktop.apply(SIM_SCHEMA.parse(a)) for a in actions]


def rows(desktop: Desktop):
    return parse_rows(desktop.a11y_text())


def ref(desktop: Desktop, role: str, name: str | None = None, contains: str | None = None) -> str:
    hits = find_rows(rows(desktop), role=role, name=name, contains=contains)
    assert hits, (role, name, contains, desktop.a11y_text())
    return f"#{hits[0].id}"


def cell(desktop: Desktop, name: str) -> str:
    hits = [r for r in rows(desktop) if r.role == "cell" and r.name.split(":")[0] == name]
    assert hits, name
    return f"#{hits[0].id}"


def values(raw: dict[str, str]) -> dict[str, str]:
    return {k: display(v) for k, v in evaluate_cells(raw).items()}


def assert_rows_hit_their_widgets(desktop: Desktop) -> None:
    frame = desktop.frame()
    ids = decode_id_map(render(frame, id_map=True))
    visible = desktop.visible_widgets()
    for row in rows(desktop):
        widget = visible[row.id]
        hit = frame[ids[row.cy, row.cx]]
        assert hit is widget or (widget.contains(hit.x, hit.y)
                                 and widget.contains(hit.x + hit.w - 1, hit.y + hit.h - 1)), (row, hit)


# ------------------------------------------------------------------------------------ formulas
def test_formula_values_and_precedence():
    raw = {"A1": "2", "A2": "3", "A3": "apple", "A4": "5.5",
           "B1": "=A1+A2*4", "B2": "=(A1+A2)*4", "B3": "=10/4", "B4": "=2^3", "B5": "=-A1+1",
           "C1": "=SUM(A1:A4)", "C2": "=AVERAGE(A1:A2)", "C3": "=MIN(A1:A4, 1)", "C4": "=MAX(A1:A4)",
           "C5": "=COUNT(A1:A4)", "C6": "=sum(a1:a2)", "C7": "=A12+1", "C8": "=SUM(B1:B2)"}
    got = values(raw)
    assert got["B1"] == "14" and got["B2"] == "20" and got["B3"] == "2.5" and got["B4"] == "8"
    assert got["B5"] == "-1"
    assert got["C1"] == "10.5"  # text is skipped by SUM
    assert got["C2"] == "2.5" and got["C3"] == "1" and got["C4"] == "5.5" and got["C5"] == "3"
    assert got["C6"] == "5"  # function names and references are case-insensitive
    assert got["C7"] == "1"  # an empty cell counts as 0
    assert got["C8"] == "34"  # formulas over formulas
    assert got["A3"] == "apple"


def test_formula_error_values():
    raw = {"A1": "1", "A2": "text", "B1": "=A1/0", "B2": "=G1", "B3": "=SUM(A1:Z9)", "B4": "=A2+1",
           "B5": "=B6", "B6": "=B5", "B7": "=B1+1", "B8": "=AVERAGE(C1:C3)", "B9": "=A13",
           "C9": "=SUM(", "D1": "=(-8)^0.5"}
    got = values(raw)
    assert got["B1"] == "#DIV/0!" and got["B2"] == "#REF!" and got["B3"] == "#REF!"
    assert got["B4"] == "#VALUE!" and got["B5"] == got["B6"] == "#CYCLE!"
    assert got["B7"] == "#DIV/0!"  # errors propagate
    assert got["B8"] == "#DIV/0!" and got["B9"] == "#REF!"
    assert got["C9"] == "#ERROR!"  # a stored formula that does not parse (e.g. loaded from CSV)
    assert got["D1"] == "#VALUE!"


@pytest.mark.parametrize("text, fragment", [
    ("=SUM(A1:", "ends too early"),
    ("=1+", "ends too early"),
    ("=FOO(1)", "unknown function 'FOO'"),
    ("=A1:B2", "only allowed inside a function"),
    ("=1 $ 2", "unexpected character '$'"),
    ("=apple+1", "not a cell reference"),
    ("=", "empty formula"),
    ("=1 2", "unexpected '2'"),
    ("=" + "(" * 3000 + "1" + ")" * 3000, "nested too deeply"),
])
def test_bad_formulas_are_rejected_clearly(text, fragment):
    with pytest.raises(FormulaError) as err:
        parse_formula(text)
    assert fragment in str(err.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="AB12=+-*/^():,. SUMaxvg$e", max_size=30))
def test_any_formula_text_parses_or_fails_cleanly(text):
    with contextlib.suppress(FormulaError):
        parse_formula(text)
    got = evaluate_cells({"A1": "=" + text.lstrip("="), "A2": "4"})  # never raises
    assert "A2" in got


def test_csv_round_trip():
    cells = {"A1": "name, with comma", "B1": 'say "hi"', "A2": "3", "B2": "=SUM(A2:A3)", "A3": "4.5",
             "F12": "last"}
    text = cells_to_csv(cells)
    assert cells_from_csv(text) == cells
    assert cells_to_csv({}) == ""
    with pytest.raises(ValueError, match="line 1 has 7 columns"):
        cells_from_csv("1,2,3,4,5,6,7\n", where="x.csv")
    with pytest.raises(ValueError, match="13 rows"):
        cells_from_csv("1\n" * 13)


# ------------------------------------------------------------------------------------ sheet
def test_sheet_gui_and_api_reach_the_same_state():
    path = f"{HOME}/Documents/t.csv"
    gui, api_ = Desktop(), Desktop()
    run(gui, f"click({ref(gui, 'button', 'Sheet')})")
    run(gui, f"click({cell(gui, 'B2')})", 'type("5")', 'hotkey("enter")', 'type("7")', 'hotkey("enter")',
        'type("=SUM(B2:B3)*2")', 'hotkey("enter")', f"click({cell(gui, 'A1')})", 'type("total")',
        'hotkey("tab")', 'type("x")', 'hotkey("escape")')  # escape drops the edit of B1
    run(gui, 'hotkey("ctrl", "s")', f'type("{path}")', 'hotkey("enter")')
    run(api_, 'sheet.set_cell("B2", 5)', 'sheet.set_cell("b3", 7)', 'sheet.set_formula("B4", "SUM(B2:B3)*2")',
        'sheet.set_cell("A1", "total")', f'sheet.save_as("{path}")')
    assert gui.state()["sheet"] == api_.state()["sheet"]
    assert gui.vfs.snapshot() == api_.vfs.snapshot()
    assert gui.state()["sheet"]["values"]["B4"] == "24"
    assert find_rows(rows(gui), role="cell", name="B4: 24")
    # a change recomputes dependent formulas, in the GUI too
    run(gui, f"click({cell(gui, 'B2')})", 'type("10")', 'hotkey("enter")')
    assert find_rows(rows(gui), role="cell", name="B4: 34")
    # reopening the saved file in a fresh desktop gives the same cells
    fresh = Desktop(vfs=api_.vfs)
    run(fresh, f'sheet.open("{path}")')
    assert fresh.state()["sheet"] == api_.state()["sheet"]
    # clearing a cell: select it, delete, enter  ==  sheet.clear_cell
    run(fresh, f"click({ref(fresh, 'button', 'Sheet')})")
    run(fresh, f"click({cell(fresh, 'A1')})", 'hotkey("delete")', 'hotkey("enter")')
    run(api_, 'sheet.clear_cell("A1")')
    assert fresh.state()["sheet"] == api_.state()["sheet"] and "A1" not in api_.state()["sheet"]["cells"]


def test_sheet_errors_are_clear():
    d = Desktop()
    with pytest.raises(AppError, match="no cell 'Z99'; cells go from A1 to F12"):
        run(d, 'sheet.set_cell("Z99", 1)')
    with pytest.raises(AppError, match=r"use sheet\.set_formula"):
        run(d, 'sheet.set_cell("A1", "=1+1")')
    with pytest.raises(AppError, match="has no file yet"):
        run(d, "sheet.save()")
    with pytest.raises(AppError, match="bad formula for C1: unknown function 'SUMM'"):
        run(d, 'sheet.set_formula("C1", "=SUMM(A1:A2)")')
    with pytest.raises(Exception, match="no such file"):
        run(d, 'sheet.open("/home/user/nope.csv")')
    d.vfs.write(f"{HOME}/wide.csv", "1,2,3,4,5,6,7,8\n")
    with pytest.raises(AppError, match=r"wide\.csv line 1 has 8 columns"):
        run(d, f'sheet.open("{HOME}/wide.csv")')
    # a bad formula typed in the GUI is refused and leaves the cell as it was
    run(d, 'sheet.set_cell("A1", 3)', f"click({cell(d, 'A1')})", 'type("=1+")')
    with pytest.raises(AppError, match="bad formula for A1"):
        run(d, 'hotkey("enter")')
    assert d.state()["sheet"]["cells"] == {"A1": "3"}


def test_files_app_opens_csv_in_the_sheet():
    d = Desktop()
    d.vfs.write(f"{HOME}/Documents/b.csv", "x,1\ny,2\n")
    run(d, f'files.open("{HOME}/Documents")')
    run(d, f"double_click({ref(d, 'file', 'b.csv')})")
    assert find_rows(rows(d), role="window")[0].name == "Sheet"
    assert find_rows(rows(d), role="cell", name="B2: 2")


# ------------------------------------------------------------------------------------ terminal
def test_terminal_commands():
    d = Desktop()
    t = d.apps["terminal"]

    def sh(command):
        return t.execute(command)

    assert sh("pwd") == HOME
    assert sh("echo \"a  b\" 'c d' e\\ f") == "a  b c d e f"
    sh("mkdir -p ~/p/src ~/p/docs")
    sh("cd ~/p")
    assert sh("pwd") == f"{HOME}/p"
    sh("echo one > a.log")
    sh("echo two >> a.log")
    sh("echo three > b.txt")
    assert d.vfs.read(f"{HOME}/p/a.log") == "one\ntwo\n"
    assert sh("ls") == "a.log\nb.txt\ndocs/\nsrc/"
    assert sh("wc -l a.log") == "2 a.log"
    assert sh("wc -l < a.log") == "2"
    assert sh("grep -i -n TWO a.log") == "2:two"
    assert sh("head -n 1 a.log") == "one" and sh("tail -1 a.log") == "two"
    sh("cp a.log src")
    sh("mv b.txt docs/c.txt")
    assert d.vfs.read(f"{HOME}/p/docs/c.txt") == "three\n"
    sh("cp a.log docs/c.txt")  # cp overwrites files
    assert d.vfs.read(f"{HOME}/p/docs/c.txt") == "one\ntwo\n"
    sh("rm *.log")
    assert not d.vfs.exists(f"{HOME}/p/a.log") and d.vfs.is_file(f"{HOME}/p/src/a.log")
    with pytest.raises(AppError, match="Is a directory"):
        sh("rm src")
    sh("cd src")
    sh("rm -r ~/p")
    assert t.shell.cwd == HOME  # the current folder was removed: back to the nearest existing one
    assert t.state() == {"cwd": HOME, "history": t.history}


@pytest.mark.parametrize("command, fragment", [
    ("ls | wc -l", "'|' is not supported"),
    ("cd ~; ls", "';' is not supported"),
    ("echo $(ls)", "is not supported"),
    ("frobnicate", "frobnicate: command not found"),
    ("ls -z", "ls: unknown option -z (supported: -a, -l)"),
    ("cat missing.txt", "cat: missing.txt: No such file or directory"),
    ("echo 'open", "unterminated ' quote"),
    ("echo hi >", "expected a file name after >"),
    ("cp onlyone", "cp: missing operand"),
    ("head -n x f", "invalid number of lines"),
    ("cd a b", "too many arguments"),
    ("mkdir Documents", "already exists"),
    ("rm -rf /", "refusing to delete /"),
])
def test_terminal_errors_are_clear(command, fragment):
    d = Desktop()
    with pytest.raises(AppError) as err:
        run(d, f"terminal.run({format_value(command)})")
    assert fragment in str(err.value)
    # the error is also shown in the scrollback (long lines are wrapped)
    assert fragment in "".join(r.name for r in find_rows(rows(d), role="terminal line"))


def test_terminal_cannot_escape_the_vfs():
    d = Desktop()
    t = d.apps["terminal"]
    t.execute("cd ../../../../../..")
    assert t.shell.cwd == "/"
    assert t.execute("ls") == "home/\ntmp/"
    with pytest.raises(AppError, match="No such file"):
        t.execute("cat /../../../etc/passwd")
    name = f"sim_escape_{uuid.uuid4().hex}"
    t.execute(f"echo pwned > ../../tmp/{name}")
    t.execute("mkdir -p /../../etc")
    t.execute(f"echo x > /../etc/{name}")
    assert d.vfs.read(f"/tmp/{name}") == "pwned\n" and d.vfs.is_file(f"/etc/{name}")
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/etc/{name}")
    # the shell has no way to reach the host: no os/subprocess/shutil in its namespace
    assert not {"os", "subprocess", "shutil", "pathlib", "open"} & set(vars(shell_module))


def test_terminal_gui_equals_api_and_shows_output():
    gui, api_ = Desktop(), Desktop()
    commands = ["mkdir -p ~/x/y", "echo hello > ~/x/y/h.txt", "cd ~/x", "ls y"]
    run(gui, f"click({ref(gui, 'button', 'Terminal')})")
    run(gui, f"click({ref(gui, 'text field', contains='Command:')})")
    for c in commands:
        run(gui, f"type({format_value(c)})", 'hotkey("enter")')
        run(api_, f"terminal.run({format_value(c)})")
    assert gui.state()["terminal"] == api_.state()["terminal"]
    assert gui.vfs.snapshot() == api_.vfs.snapshot()
    lines = [r.name for r in find_rows(rows(gui), role="terminal line")]
    assert lines[-2:] == ["user@sim:~/x$ ls y", "h.txt"]
    run(gui, 'hotkey("up")')  # history recall
    assert find_rows(rows(gui), role="text field", name="Command: ls y")
    assert_rows_hit_their_widgets(gui)


# ------------------------------------------------------------------------------------ settings
def test_settings_gui_and_api_reach_the_same_state():
    gui, api_ = Desktop(), Desktop()
    run(gui, f"click({ref(gui, 'button', 'Settings')})")
    run(gui, f"click({ref(gui, 'radio button', 'Dark')})")
    run(gui, f"click({ref(gui, 'text field', contains='Font size:')})", 'hotkey("ctrl", "a")', 'type("20")',
        'hotkey("enter")')
    run(gui, f"click({ref(gui, 'checkbox', 'Wi-Fi')})")
    run(gui, f"click({ref(gui, 'combo box', contains='Time zone:')})")
    assert_rows_hit_their_widgets(gui)  # the open list pushes rows down instead of covering them
    run(gui, f"click({ref(gui, 'list item', 'Asia/Tokyo')})")
    run(gui, f"click({ref(gui, 'text field', contains='Device name:')})", 'hotkey("ctrl", "a")',
        'type("lab-7")', 'hotkey("enter")')
    run(api_, 'settings.set("theme", "dark")', 'settings.set("font_size", 20)', 'settings.set("wifi", false)',
        'settings.set("timezone", "asia/tokyo")', 'settings.set("device_name", "lab-7")')
    assert gui.state()["settings"] == api_.state()["settings"] != DEFAULTS
    assert find_rows(rows(gui), role="text field", name="Font size: 20")
    assert not find_rows(rows(gui), role="checkbox", name="Wi-Fi", state="checked")


@pytest.mark.parametrize("action, fragment", [
    ('settings.set("font_size", 48)', "font_size 48 is out of range: it must be from 8 to 32"),
    ('settings.set("font_size", "big")', "it must be a whole number from 8 to 32"),
    ('settings.set("wifi", 3)', "it must be true or false"),
    ('settings.set("theme", "blue")', "it must be one of light, dark"),
    ('settings.set("language", "Klingon")', "one of English, German"),
    ('settings.set("device_name", "bad name!")', "1-24 letters"),
    ('settings.set("fontsize", 12)', "no setting 'fontsize'; did you mean font_size?"),
])
def test_settings_errors_are_clear(action, fragment):
    d = Desktop()
    with pytest.raises(AppError) as err:
        run(d, action)
    assert fragment in str(err.value)
    assert d.state()["settings"] == DEFAULTS


def test_settings_gui_invalid_value_is_refused():
    d = Desktop()
    run(d, f"click({ref(d, 'button', 'Settings')})")
    run(d, f"click({ref(d, 'text field', contains='Volume:')})", 'hotkey("ctrl", "a")', 'type("150")')
    with pytest.raises(AppError, match="volume 150 is out of range"):
        run(d, 'hotkey("enter")')
    assert d.state()["settings"]["volume"] == DEFAULTS["volume"]
    run(d, 'hotkey("escape")')  # dropping the edit shows the real value again
    assert find_rows(rows(d), role="text field", name=f"Volume: {DEFAULTS['volume']}")
    run(d, 'settings.set("bluetooth", "on")')
    assert d.state()["settings"]["bluetooth"] is True


# ------------------------------------------------------------------------------------ mail
def seeded() -> Desktop:
    d = Desktop()
    d.vfs.write(f"{HOME}/Documents/r.txt", "report\n")
    d.apps["mail"].deliver("bob@example.com", "Plans", "See the plan.\nBob", (("plan.txt", "step 1\n"),))
    return d


def test_mail_gui_and_api_reach_the_same_state():
    gui, api_ = seeded(), seeded()
    # reply
    run(gui, f"click({ref(gui, 'button', 'Mail')})")
    run(gui, f"click({ref(gui, 'list item', 'bob@example.com: Plans')})")
    assert find_rows(rows(gui), role="text line", name="See the plan.")
    run(gui, f"click({ref(gui, 'button', 'Reply')})", 'type("ok")')
    run(gui, f"click({ref(gui, 'button', 'Send')})")
    run(api_, 'mail.reply("plans", "ok")')
    # compose with an attachment
    run(gui, f"click({ref(gui, 'button', 'Compose')})", 'type("carol@example.com")', 'hotkey("enter")',
        'type("Report")', 'hotkey("enter")', 'type("attached\\nbye")')
    run(gui, f"click({ref(gui, 'button', 'Attach')})")
    assert_rows_hit_their_widgets(gui)  # the dialog covers no other row
    run(gui, f'type("{HOME}/Documents/r.txt")', 'hotkey("enter")')
    run(gui, f"click({ref(gui, 'button', 'Send')})")
    run(api_, f'mail.attach("{HOME}/Documents/r.txt")', 'mail.send("carol@example.com", "Report", "attached\\nbye")')
    # save an attachment
    run(gui, f"click({ref(gui, 'list item', 'bob@example.com: Plans')})")
    run(gui, f"click({ref(gui, 'button', 'Save plan.txt')})")
    run(gui, f'type("{HOME}/Documents/plan.txt")', 'hotkey("enter")')
    run(api_, f'mail.save_attachment("Plans", "{HOME}/Documents")')
    assert gui.state()["mail"] == api_.state()["mail"]
    assert gui.vfs.snapshot() == api_.vfs.snapshot()
    sent = api_.state()["mail"]["sent"]
    assert [m["subject"] for m in sent] == ["Re: Plans", "Report"]
    assert sent[1]["attachments"] == {"r.txt": "report\n"}
    # delete
    run(gui, f"click({ref(gui, 'list item', 'bob@example.com: Plans')})")
    run(gui, f"click({ref(gui, 'button', 'Delete')})")
    run(api_, 'mail.delete("Plans")')
    assert gui.state()["mail"] == api_.state()["mail"]


@pytest.mark.parametrize("action, fragment", [
    ('mail.send("bob", "s", "b")', "'bob' is not an email address"),
    ('mail.send("bob@example.com", " ", "b")', "has no subject"),
    ('mail.reply("Nope", "b")', "no email with subject 'Nope' in the inbox (subjects: 'Welcome to Mail'"),
    ('mail.attach("/home/user/Documents")', "is a folder"),
    ('mail.attach("/home/user/ghost.txt")', "no such file"),
    ('mail.save_attachment("Welcome to Mail", "/home/user")', "has no attachment"),
])
def test_mail_errors_are_clear(action, fragment):
    d = Desktop()
    with pytest.raises(Exception) as err:
        run(d, action)
    assert fragment in str(err.value)
    assert d.state()["mail"]["sent"] == []


def test_desktop_state_covers_every_app():
    state = Desktop().state()
    assert set(state) == {"files", "editor", "sheet", "terminal", "settings", "mail"}
    assert state["settings"] == DEFAULTS
    names = [r.name for r in find_rows(rows(Desktop()), role="button")]
    assert names == ["Files", "Editor", "Sheet", "Terminal", "Settings", "Mail"]
